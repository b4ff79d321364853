"""Benchmark: SAIL Scope on real architectures (random weights from the published configs, no download).

    python tests/bench/real_arch.py --arch sd15 --size 256 [--device cpu|cuda] [--dtype fp32|fp16]
                                    [--steps 4] [--phases stock,tracked,exact,sail,sail_nockpt,arnoldi]
                                    [--json OUT] [--dry-run]

Pipelines: SD 1.5 (UNet 860 M, CLIP ViT-L text encoder), SD 2.1-v (UNet 866 M, OpenCLIP ViT-H text encoder,
v-prediction) and SDXL base (UNet 2.6 B, CLIP ViT-L + OpenCLIP bigG with projection), each with the SD VAE, built
as stock diffusers pipelines from their published configs with random weights. Phases, each in its own process
(CPU peak resident memory is a lifetime figure; on CUDA the peak allocation is reset per phase):

* ``load``        build the pipeline, nothing run (the baseline every other phase's memory is compared with);
* ``stock``       stock ``pipe(...)`` sampling, ``--steps`` steps, guidance 7.5;
* ``tracked``     ``core.sampling.generate``: the same sampling with Wen every step and fd sharpness at step 1;
* ``exact``       the same with exact (JVP) sharpness at step 1;
* ``sail``        one SAIL Adam step (paper objective, threshold 0) with gradient checkpointing (the default);
* ``sail_nockpt`` the same without checkpointing;
* ``arnoldi``     the top-10 eigenvalues of HΔ at step 1 (Arnoldi, exact JVPs, tol 1e-3).

One JSON line per phase: seconds, peak memory, extra peak over ``load``, and the ratio of time to ``stock``.
``--dry-run`` builds tiny versions of the same architectures and runs every phase on the CPU in seconds (checks
the script, measures nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

PHASES = ("load", "stock", "tracked", "exact", "sail", "sail_nockpt", "arnoldi")

SD_VAE = dict(block_out_channels=[128, 256, 512, 512], in_channels=3, out_channels=3, latent_channels=4,
              down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
              layers_per_block=2, norm_num_groups=32, sample_size=512)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
              hidden_act="quick_gelu", projection_dim=768)
OPENCLIP_H = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
                  hidden_act="gelu", projection_dim=1024)
OPENCLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                     hidden_act="gelu", projection_dim=1280)
ARCHS = {
    "sd15": dict(
        unet=dict(sample_size=64, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                  down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                  cross_attention_dim=768, attention_head_dim=8),
        text=[CLIP_L], prediction="epsilon", native=512),
    "sd21v": dict(
        unet=dict(sample_size=96, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                  down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                  cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True),
        text=[OPENCLIP_H], prediction="v_prediction", native=768),
    "sdxl": dict(
        unet=dict(sample_size=128, layers_per_block=2, block_out_channels=(320, 640, 1280),
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                  transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                  use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                  projection_class_embeddings_input_dim=2816),
        text=[CLIP_L, OPENCLIP_BIGG], prediction="epsilon", native=1024),
}


def shrink(cfg: dict) -> dict:
    """The same architecture at toy width/depth (``--dry-run``)."""
    unet = dict(cfg["unet"])
    n = len(unet["block_out_channels"])
    unet.update(block_out_channels=tuple(32 * (i + 1) for i in range(n)), layers_per_block=1, norm_num_groups=8)
    if isinstance(unet.get("attention_head_dim"), tuple):
        unet["attention_head_dim"] = tuple(2 for _ in range(n))
    else:
        unet["attention_head_dim"] = 2
    if "transformer_layers_per_block" in unet:
        unet["transformer_layers_per_block"] = tuple(1 for _ in range(n))
    text = [dict(t, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, projection_dim=32)
            for t in cfg["text"]]
    unet["cross_attention_dim"] = sum(t["hidden_size"] for t in text)
    if unet.get("addition_embed_type"):
        unet.update(addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32)
    return dict(cfg, unet=unet, text=text, vae=dict(SD_VAE, block_out_channels=[16, 32, 32, 32], norm_num_groups=8))


def build_pipeline(arch: str, device: str, dtype_name: str, dry_run: bool):
    import torch
    from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sailscope.core.models import ModelInfo
    from sailscope.core.testing import tiny_tokenizer

    cfg = shrink(ARCHS[arch]) if dry_run else ARCHS[arch]
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, **cfg["unet"]).to(dtype).eval()
        vae = AutoencoderKL(**cfg.get("vae", SD_VAE)).to(dtype).eval()
        common = dict(bos_token_id=512, eos_token_id=513, pad_token_id=513, vocab_size=49408,
                      max_position_embeddings=77, layer_norm_eps=1e-5)
        encoders = []
        for i, t in enumerate(cfg["text"]):
            cls = CLIPTextModelWithProjection if (arch == "sdxl" and i == 1) else CLIPTextModel
            encoders.append(cls(CLIPTextConfig(**common, **t)).to(dtype).eval())
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type=cfg["prediction"])
    if arch == "sdxl":
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[1],
                                         tokenizer=tiny_tokenizer(), tokenizer_2=tiny_tokenizer(), unet=unet,
                                         scheduler=scheduler, add_watermarker=False)
    else:
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=encoders[0], tokenizer=tiny_tokenizer(), unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.sailscope_info = ModelInfo(name=f"random-{arch}", source="bench", path="", device=device, dtype=dtype_name,
                                    prediction_type=cfg["prediction"], family="sdxl" if arch == "sdxl" else "sd")
    n_unet = sum(p.numel() for p in unet.parameters())
    return pipe, n_unet


def peak_bytes(device: str) -> int:
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def run_phase(args) -> dict:
    import torch

    from sailscope.core.mitigation import SailSettings, run_sail
    from sailscope.core.sampling import GenerationSettings, run_generation
    from sailscope.core.spectra import spectrum_at_step

    torch.set_num_threads(args.threads)
    pipe, n_unet = build_pipeline(args.arch, args.device, args.dtype, args.dry_run)
    size = 64 if args.dry_run else args.size
    settings = GenerationSettings(prompt="a photo of a red cube on a table", seed=0, steps=args.steps, guidance=7.5,
                                  width=size, height=size, sharpness_at="none")
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    phase = args.phase
    if phase == "stock":
        pipe("a photo of a red cube on a table", num_inference_steps=args.steps, guidance_scale=7.5, width=size,
             height=size, generator=torch.Generator("cpu").manual_seed(0), output_type="np")
    elif phase in ("tracked", "exact"):
        run_generation(pipe, GenerationSettings(**{**settings.to_dict(), "sharpness_at": "first",
                                                   "hvp": "fd" if phase == "tracked" else "exact"}))
    elif phase in ("sail", "sail_nockpt"):
        run_sail(pipe, settings, SailSettings(objective="paper", threshold=0.0, trigger=None, max_steps=1, rounds=1),
                 checkpointing=phase == "sail")
    elif phase == "arnoldi":
        spectrum_at_step(pipe, settings, 1, which="delta", k=10, method="arnoldi", hvp="exact", tol=1e-3, chunk=2)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return {"arch": args.arch, "phase": phase, "size": size, "device": args.device, "dtype": args.dtype,
            "steps": args.steps, "unet_params": n_unet, "seconds": time.perf_counter() - start,
            "peak_bytes": peak_bytes(args.device), "dry_run": args.dry_run}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=sorted(ARCHS), default="sd15")
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    p.add_argument("--steps", type=int, default=4, help="sampling steps of the stock/tracked phases")
    p.add_argument("--phases", default=",".join(PHASES[1:]))
    p.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    p.add_argument("--json", default=None, help="append one JSON line per phase here")
    p.add_argument("--dry-run", action="store_true", help="tiny versions of the architectures, every phase, seconds")
    p.add_argument("--phase", default=None, help=argparse.SUPPRESS)  # the child process's one phase
    args = p.parse_args(argv)
    if args.phase:
        print(json.dumps(run_phase(args)), flush=True)
        return 0
    rows = []
    for phase in ("load",) + tuple(x for x in args.phases.split(",") if x and x != "load"):
        if phase not in PHASES:
            p.error(f"unknown phase {phase!r}; choose from {', '.join(PHASES)}")
        child = [sys.executable, os.path.abspath(__file__), "--phase", phase, "--arch", args.arch, "--size",
                 str(args.size), "--device", args.device, "--dtype", args.dtype, "--steps", str(args.steps),
                 "--threads", str(args.threads)] + (["--dry-run"] if args.dry_run else [])
        out = subprocess.run(child, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            rows.append({"arch": args.arch, "phase": phase, "error": out.stderr.strip().splitlines()[-1:]})
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = next((r for r in rows if r.get("phase") == "load" and "peak_bytes" in r), None)
    stock = next((r for r in rows if r.get("phase") == "stock" and "seconds" in r), None)
    for r in rows:
        if "peak_bytes" in r and base is not None:
            r["extra_peak_gib"] = (r["peak_bytes"] - base["peak_bytes"]) / 2**30
            r["peak_gib"] = r["peak_bytes"] / 2**30
        if stock is not None and "seconds" in r and r["phase"] != "load":
            r["time_vs_stock"] = r["seconds"] / stock["seconds"]
        print(json.dumps(r), flush=True)
        if args.json:
            with open(args.json, "a", encoding="utf-8") as f:
                f.write(json.dumps(r) + "\n")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
