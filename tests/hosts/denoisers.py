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


# ----------------------------------------------------------------------------------------------
# The UNet as the hosts hold it
# ----------------------------------------------------------------------------------------------
def host_loaded_unet(unet, *, forge_blocks: bool = False, inference: bool = True):
    """A copy of ``unet`` loaded the way ComfyUI and Forge load weights: under ``torch.inference_mode()``
    (ComfyUI's ``execution.py`` runs whole prompts, loaders included, in it; Forge decorates
    ``forge_loader``/``forge_model_reload`` with it), so every weight is an inference tensor.

    ``forge_blocks``: the transformer blocks run Forge's ``backend/nn/unet.py`` ``BasicTransformerBlock``
    flow, whose residuals are in-place (``n = norm1(x); ...; x += n``), on the same weights.
    ``inference=False`` loads under ``no_grad`` instead (A1111: weights stay ``requires_grad=True``).
    """
    import types

    from diffusers.models.attention import BasicTransformerBlock

    with torch.inference_mode() if inference else torch.no_grad():
        copy = type(unet).from_config(unet.config)
        copy.load_state_dict(unet.state_dict())
    copy.to(unet.dtype).eval()
    if forge_blocks:
        for block in copy.modules():
            if isinstance(block, BasicTransformerBlock):
                block.forward = types.MethodType(forge_transformer_forward, block)
    return copy


def forge_transformer_forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None,
                              encoder_attention_mask=None, timestep=None, cross_attention_kwargs=None,
                              class_labels=None, added_cond_kwargs=None):
    """Forge's ``BasicTransformerBlock.forward`` (no patches): pre-norm self-attention, cross-attention and
    feed-forward, each residual added in place as Forge does."""
    x = hidden_states
    n = self.attn1(self.norm1(x), attention_mask=attention_mask)
    x += n
    n = self.attn2(self.norm2(x), encoder_hidden_states=encoder_hidden_states, attention_mask=encoder_attention_mask)
    x += n
    x_skip = x
    x = self.ff(self.norm3(x))
    x += x_skip
    return x


def a1111_lora_networks(unet) -> None:
    """A1111's built-in Lora extension as it touches the weights (``extensions-builtin/Lora/networks.py``):
    on the first forward after the active LoRAs change, each layer restores its backed-up weight with
    ``weight.copy_(backup)`` *outside* ``no_grad`` (``network_restore_weights_from_backup``), then merges the
    LoRA delta under ``no_grad``. The delta here is zero, so the values never change.
    :func:`mark_lora_change` flags the change (A1111 activates extra networks before sampling).
    """

    def restore_then_merge(module, args):
        if module.lora_pending:
            module.weight.copy_(module.lora_backup)  # A1111 does this with whatever grad mode is on
            with torch.no_grad():
                module.weight.copy_(module.lora_backup + 0.0)
            module.lora_pending = False

    for module in unet.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            module.lora_backup = module.weight.detach().clone()
            module.lora_pending = False
            module.register_forward_pre_hook(restore_then_merge)


def mark_lora_change(unet) -> None:
    for module in unet.modules():
        if hasattr(module, "lora_pending"):
            module.lora_pending = True
