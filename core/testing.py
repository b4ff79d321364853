"""Seeded tiny Stable Diffusion components for tests and benchmarks (no files, no network).

Modelled on diffusers' ``get_dummy_components``: random weights, real architecture. The tokenizer is a
byte-level CLIP BPE with no merges (every character one token), written to a temporary folder.
"""
from __future__ import annotations

import json
import os
import tempfile
from functools import lru_cache

import torch

from sailscope.core.demo.tokenizer import bytes_to_unicode


@lru_cache(maxsize=1)
def tiny_tokenizer_dir() -> str:
    """A folder with vocab.json/merges.txt of a byte-level CLIP tokenizer without merges (514 tokens)."""
    folder = tempfile.mkdtemp(prefix="sailscope-tiny-tok-")
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({tok: i for i, tok in enumerate(vocab)}, f)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    return folder


def tiny_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer(
        os.path.join(tiny_tokenizer_dir(), "vocab.json"),
        os.path.join(tiny_tokenizer_dir(), "merges.txt"),
        model_max_length=77,
    )


def tiny_components(seed: int = 0, prediction_type: str = "epsilon", sample_size: int = 8) -> dict:
    """UNet/VAE/CLIP text encoder with random weights, SD 1.x schedule; 8×8 latents -> 64×64 images."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=8,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[16, 32, 32, 32],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=sample_size * 8,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=512, eos_token_id=513, pad_token_id=513, hidden_size=32, intermediate_size=37,
        layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=514,
        max_position_embeddings=77,
    ))
    return {
        "unet": unet.eval(),
        "scheduler": scheduler,
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tiny_tokenizer(),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def tiny_pipeline(seed: int = 0, prediction_type: str = "epsilon", sample_size: int = 8):
    """A stock ``StableDiffusionPipeline`` from :func:`tiny_components` on the CPU in fp32."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**tiny_components(seed, prediction_type, sample_size), requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(seed: int = 0, prediction_type: str = "epsilon", sample_size: int = 8,
                       force_zeros_for_empty_prompt: bool = True):
    """A stock ``StableDiffusionXLPipeline`` with random weights and SDXL's real structure: two text encoders (the
    second with a projection: the pooled ``text_embeds``), a ``text_time`` UNet with added time ids, SDXL's schedule."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    base = tiny_components(seed, prediction_type, sample_size)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=sample_size, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64, norm_num_groups=8,
    )
    config = dict(bos_token_id=512, eos_token_id=513, pad_token_id=513, hidden_size=32, intermediate_size=37,
                  layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=514,
                  max_position_embeddings=77, hidden_act="gelu", projection_dim=32)
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(CLIPTextConfig(**config))
    torch.manual_seed(seed + 2)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**config))
    pipe = StableDiffusionXLPipeline(
        vae=base["vae"], text_encoder=text_encoder.eval(), text_encoder_2=text_encoder_2.eval(),
        tokenizer=tiny_tokenizer(), tokenizer_2=tiny_tokenizer(), unet=unet.eval(), scheduler=base["scheduler"],
        force_zeros_for_empty_prompt=force_zeros_for_empty_prompt, add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
