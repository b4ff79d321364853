"""Stand-in for comfy.sample: prepare_noise and fix_empty_latent_channels as published."""
import numpy as np
import torch


def prepare_noise(latent_image, seed, noise_inds=None):
    """Creates random noise given a latent image and a seed (one generator; with noise_inds, one draw per index
    up to the largest, kept for the indices used)."""
    generator = torch.manual_seed(seed)
    if noise_inds is None:
        return torch.randn(latent_image.size(), dtype=latent_image.dtype, layout=latent_image.layout, generator=generator, device="cpu")
    unique_inds, inverse = np.unique(noise_inds, return_inverse=True)
    noises = []
    for i in range(unique_inds[-1] + 1):
        noise = torch.randn([1] + list(latent_image.size())[1:], dtype=latent_image.dtype, layout=latent_image.layout, generator=generator, device="cpu")
        if i in unique_inds:
            noises.append(noise)
    noises = [noises[i] for i in inverse]
    return torch.cat(noises, axis=0)


def fix_empty_latent_channels(model, latent_image):
    """Resize an empty latent to the model's latent channels (and add the frame dim for 3-D latents)."""
    latent_format = model.get_model_object("latent_format")
    if latent_format.latent_channels != latent_image.shape[1] and torch.count_nonzero(latent_image) == 0:
        reps = [1] * latent_image.ndim
        reps[1] = -(-latent_format.latent_channels // latent_image.shape[1])
        latent_image = latent_image.repeat(*reps).narrow(1, 0, latent_format.latent_channels)
    if latent_format.latent_dimensions == 3 and latent_image.ndim == 4:
        latent_image = latent_image.unsqueeze(2)
    return latent_image
