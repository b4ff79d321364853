"""Model families: the one place that knows how a pipeline family conditions its UNet and decodes its latents.

A family turns a prompt into two :class:`~sailscope.core.score.Conditioning` s (the prompt and the unconditional
or negative prompt), exactly as its stock diffusers pipeline does, and turns final latents into images as that
pipeline does. Sampling, metrics, spectra and SAIL only ever see the conditioning, so a new family is one class
here (and its pipeline class in :data:`FAMILIES`).

* ``sd``: ``StableDiffusionPipeline`` (SD 1.x/2.x, eps and v-prediction): CLIP hidden states; the
  unconditional side is the empty prompt's encoding; decode runs the safety checker when there is one.
* ``sdxl``: ``StableDiffusionXLPipeline`` (SDXL and its fine-tunes: Pony, Illustrious, NoobAI, ...; eps and
  v-prediction): both text encoders' hidden states, plus the pooled embedding (``text_embeds``) and the
  ``time_ids`` (original size, crop corner, target size) as added conditioning. The unconditional side follows
  the model's ``force_zeros_for_empty_prompt``: zeros when there is no negative prompt (SDXL base), else the
  encoding of the empty/negative prompt. Decode upcasts a ``force_upcast`` VAE and applies ``latents_mean/std``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sailscope.core.errors import UserInputError
from sailscope.core.score import Conditioning


def _truncation_warning(tokenizer: Any, prompt: str) -> list[str]:
    n_tokens = len(tokenizer(prompt, truncation=False).input_ids)
    if n_tokens > tokenizer.model_max_length:
        return [f"prompt is {n_tokens} tokens; the text encoder reads only the first {tokenizer.model_max_length} "
                "(truncated)"]
    return []


@dataclass(frozen=True)
class Family:
    """How one pipeline family conditions and decodes (see the module docstring)."""

    name: str
    pipeline_class: str

    def encode(self, pipe: Any, prompt: str, negative_prompt: str, num_images: int, device: torch.device,
               size: tuple[int, int]) -> tuple[Conditioning, Conditioning, list[str]]:
        """``(cond, uncond, warnings)``, one row per image; ``size`` = (height, width) in pixels."""
        raise NotImplementedError

    def decode(self, pipe: Any, latents: Tensor) -> tuple[list, np.ndarray]:
        """Final latents -> (PIL images, float array in [0, 1]), as the stock pipeline does."""
        raise NotImplementedError


class StableDiffusion(Family):
    def encode(self, pipe, prompt, negative_prompt, num_images, device, size):
        cond, uncond = pipe.encode_prompt(prompt, device, num_images, True, negative_prompt or None)
        return Conditioning(cond), Conditioning(uncond), _truncation_warning(pipe.tokenizer, prompt)

    def decode(self, pipe, latents):
        with torch.no_grad():
            image = pipe.vae.decode(latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor, return_dict=False)[0]
            image, nsfw = pipe.run_safety_checker(image, latents.device, latents.dtype)
        denorm = [True] * image.shape[0] if nsfw is None else [not x for x in nsfw]
        array = pipe.image_processor.postprocess(image, output_type="np", do_denormalize=denorm)
        return pipe.image_processor.numpy_to_pil(array), array


class StableDiffusionXL(Family):
    def encode(self, pipe, prompt, negative_prompt, num_images, device, size):
        cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(
            prompt, None, device, num_images, True, negative_prompt or None,
        )
        projection_dim = (int(pooled.shape[-1]) if pipe.text_encoder_2 is None
                          else pipe.text_encoder_2.config.projection_dim)
        time_ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=cond.dtype,
                                          text_encoder_projection_dim=projection_dim)
        time_ids = time_ids.to(device).repeat(num_images, 1)
        tokenizer = pipe.tokenizer if pipe.tokenizer is not None else pipe.tokenizer_2
        return (Conditioning(cond, {"text_embeds": pooled, "time_ids": time_ids}),
                Conditioning(uncond, {"text_embeds": uncond_pooled, "time_ids": time_ids}),
                _truncation_warning(tokenizer, prompt))

    def decode(self, pipe, latents):
        vae = pipe.vae
        with torch.no_grad():
            upcast = vae.dtype == torch.float16 and vae.config.force_upcast
            dtype = torch.float32 if upcast else vae.dtype
            mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
            if mean is not None and std is not None:
                mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
                std = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
                latents = latents * std / vae.config.scaling_factor + mean
            else:
                latents = latents / vae.config.scaling_factor
            if upcast:  # an fp16 SDXL VAE overflows: decode in fp32, then back to fp16 (as the stock pipeline)
                vae.to(torch.float32)
            try:
                image = vae.decode(latents.to(dtype), return_dict=False)[0]
            finally:
                if upcast:
                    vae.to(torch.float16)
            if getattr(pipe, "watermark", None) is not None:
                image = pipe.watermark.apply_watermark(image)
        array = pipe.image_processor.postprocess(image, output_type="np")
        return pipe.image_processor.numpy_to_pil(array), array


FAMILIES: dict[str, Family] = {
    "StableDiffusionPipeline": StableDiffusion("sd", "StableDiffusionPipeline"),
    "StableDiffusionXLPipeline": StableDiffusionXL("sdxl", "StableDiffusionXLPipeline"),
}


def family_of(pipe: Any) -> Family:
    """The family of a loaded pipeline (by its class, subclasses included)."""
    for cls in type(pipe).__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__]
    raise UserInputError(
        f"{type(pipe).__name__} is not supported; SAIL Scope runs {', '.join(FAMILIES)}"
    )
