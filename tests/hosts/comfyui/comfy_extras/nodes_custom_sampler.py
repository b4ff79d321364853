"""Stand-in for comfy_extras.nodes_custom_sampler: RandomNoise's NOISE object and SamplerCustomAdvanced."""
import torch

import comfy.sample
from comfy import model_management


class Noise_RandomNoise:
    def __init__(self, seed):
        self.seed = seed

    def generate_noise(self, input_latent):
        latent_image = input_latent["samples"]
        batch_inds = input_latent["batch_index"] if "batch_index" in input_latent else None
        return comfy.sample.prepare_noise(latent_image, self.seed, batch_inds)


class SamplerCustomAdvanced:
    RETURN_TYPES = ("LATENT", "LATENT")
    RETURN_NAMES = ("output", "denoised_output")
    FUNCTION = "sample"

    def sample(self, noise, guider, sampler, sigmas, latent_image):
        latent = latent_image.copy()
        latent_image = comfy.sample.fix_empty_latent_channels(guider.model_patcher, latent["samples"])
        latent["samples"] = latent_image
        noise_mask = latent.get("noise_mask")
        samples = guider.sample(noise.generate_noise(latent), latent_image, sampler, sigmas, denoise_mask=noise_mask,
                                callback=None, disable_pbar=True, seed=noise.seed)
        samples = samples.to(model_management.intermediate_device())
        out = latent.copy()
        out["samples"] = samples
        return (out, out)


def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """k-diffusion's Euler (what KSamplerSelect("euler") wraps)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x
