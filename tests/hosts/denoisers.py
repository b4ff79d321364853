"""Host-style denoisers around a diffusers UNet, written from the hosts' published parameterizations.

* :class:`KDiffusionCompVisDenoiser` follows k-diffusion's ``CompVisDenoiser`` (what A1111 and Forge wrap
  around the UNet): ``forward(input, sigma, **kwargs) -> denoised`` with ``c_in = 1/sqrt(sigma^2+1)``,
  ``t = sigma_to_t(sigma)`` (log-sigma interpolation over the model's discrete sigmas),
  ``denoised = input - eps * sigma``; conditioning as ``cond={"c_crossattn": [tensor]}``.
* :class:`ComfyBaseModel` follows ComfyUI's ``BaseModel.apply_model(x, t, c_concat=None,
  c_crossattn=None, ...)`` with ``ModelSamplingDiscrete`` + ``EPS``: ``t`` is sigma,
  ``timestep(sigma)`` = nearest discrete step (argmin over log-sigmas), ``calculate_input = x/sqrt(sigma^2+1)``,
  ``calculate_denoised = x - eps * sigma``, ``noise_scaling(max_denoise=True) = noise*sqrt(1+sigma^2)``
  (else ``noise*sigma``, plus the latent), ``inverse_noise_scaling`` the identity; ``latent_format`` SD 1.x
  (4 channels, 2-D), ``get_dtype()`` the UNet's dtype.

The UNet is called exactly as the diffusers path calls it, so any difference is the adapters' conversion.
"""
from __future__ import annotations

import torch


def discrete_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    ac = alphas_cumprod.detach().to(torch.float32).cpu()
    return ((1 - ac) / ac) ** 0.5


class KDiffusionCompVisDenoiser(torch.nn.Module):
    def __init__(self, unet, alphas_cumprod):
        super().__init__()
        self.inner_model = unet
        self.register_buffer("sigmas", discrete_sigmas(alphas_cumprod))
        self.register_buffer("log_sigmas", self.sigmas.log())
        self.calls = 0

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def sigma_to_t(self, sigma):
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        t = (1 - w) * low_idx + w * high_idx
        return t.view(sigma.shape)

    def forward(self, input, sigma, **kwargs):
        self.calls += 1
        cond = kwargs["cond"]
        context = cond["c_crossattn"][0]
        c_in = (1.0 / (sigma**2 + 1) ** 0.5).view(-1, 1, 1, 1)
        t = self.sigma_to_t(sigma)
        eps = self.inner_model(input * c_in, t, encoder_hidden_states=context, return_dict=False)[0]
        return input - eps * sigma.view(-1, 1, 1, 1)


def reshape_sigma(sigma, noise_dim):
    """comfy.model_sampling.reshape_sigma: a one-element sigma becomes a scalar, else one per batch row."""
    if sigma.nelement() == 1:
        return sigma.view(())
    return sigma.view(sigma.shape[:1] + (1,) * (noise_dim - 1))


class LatentFormatSD15:
    latent_channels = 4
    latent_dimensions = 2
    scale_factor = 0.18215


class ModelSamplingDiscrete(torch.nn.Module):
    def __init__(self, alphas_cumprod):
        super().__init__()
        self.register_buffer("sigmas", discrete_sigmas(alphas_cumprod))
        self.register_buffer("log_sigmas", self.sigmas.log())
        self.sigma_data = 1.0

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    @property
    def sigma_min(self):
        return self.sigmas[0]

    def timestep(self, sigma):
        log_sigma = sigma.log()
        dists = log_sigma.to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep):
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=(len(self.sigmas) - 1))
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp().to(timestep.device)

    def calculate_input(self, sigma, noise):
        sigma = reshape_sigma(sigma, noise.ndim)
        return noise / (sigma**2 + self.sigma_data**2) ** 0.5

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = reshape_sigma(sigma, model_output.ndim)
        return model_input - model_output * sigma

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        sigma = reshape_sigma(sigma, noise.ndim)
        noise = noise * torch.sqrt(1.0 + sigma**2.0) if max_denoise else noise * sigma
        return noise + latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent


class ComfyBaseModel(torch.nn.Module):
    def __init__(self, unet, alphas_cumprod):
        super().__init__()
        self.diffusion_model = unet
        self.model_sampling = ModelSamplingDiscrete(alphas_cumprod)
        self.latent_format = LatentFormatSD15()
        self.calls = 0

    def get_dtype(self):
        return self.diffusion_model.dtype

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        self.calls += 1
        sigma = t
        xc = self.model_sampling.calculate_input(sigma, x)
        timestep = self.model_sampling.timestep(sigma).float()
        out = self.diffusion_model(xc, timestep, encoder_hidden_states=c_crossattn, return_dict=False)[0]
        return self.model_sampling.calculate_denoised(sigma, out, x)

    def process_latent_in(self, latent):
        return latent

    def process_latent_out(self, latent):
        return latent
