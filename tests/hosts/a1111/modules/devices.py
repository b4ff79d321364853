import torch

cpu = torch.device("cpu")
device = torch.device("cpu")
dtype_unet = torch.float32
