import torch

cpu = torch.device("cpu")
device = torch.device("cpu")
