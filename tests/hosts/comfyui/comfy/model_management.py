"""Stand-in for comfy.model_management (CPU only)."""
import torch


def get_torch_device():
    return torch.device("cpu")


def intermediate_device():
    return torch.device("cpu")


def load_models_gpu(models, memory_required=0, **kwargs):
    return None
