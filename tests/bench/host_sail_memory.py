"""Benchmark: peak memory of SAIL inside a host vs the host's plain sampling step, full-size UNets.

    python tests/bench/host_sail_memory.py --arch sd15 --size 256 [--device cpu|cuda] [--dtype fp32|fp16]
                                           [--steps 2] [--json OUT]

The UNet is built from its published config (SD 1.5: 860 M parameters; SDXL base: 2.6 B) with random weights
and loaded the way ComfyUI and Forge hold it: weights made under ``torch.inference_mode()`` and (``--forge``)
Forge's in-place residuals in the transformer blocks. Three phases, each in its own process on the CPU
(peak resident memory is a lifetime figure there) and with reset peak statistics on CUDA:

* ``load``  — the model's weights and text conditioning, nothing run;
* ``plain`` — one CFG evaluation as a host sampling step makes it (cond + uncond batch, inference mode);
* ``sail``  — SAIL as the host adapters run it (``extension.common.run_sail``, the authors' loop:
  reference objective, threshold 0 so every step runs, ``--steps`` Adam steps) through
  ``core.autograd.gradients_through_host_model``.

Printed per phase: peak memory, and SAIL's extra peak over ``plain``; also the weights' size (what copying
them, the alternative to the zero-copy bridge, would add). One JSON line per phase.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32,
)
ARCHS = {"sd15": (SD15_UNET, 768, 77), "sdxl": (SDXL_UNET, 2048, 77)}
SIGMA_MAX = 14.6146  # SD's scaled-linear schedule, sigmas[-1] (k-diffusion units)


def peak_bytes(device: str) -> int:
    import torch

    if device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def run_phases(args, phases) -> list[dict]:
    import torch
    from diffusers import UNet2DConditionModel

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "hosts"))
    from denoisers import forge_transformer_forward  # noqa: E402

    from sailscope.extension import common

    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    config, ctx_dim, tokens = ARCHS[args.arch]
    with torch.device(args.device), torch.inference_mode():  # how ComfyUI and Forge hold their weights
        unet = UNet2DConditionModel(**config).to(dtype).eval()
        ctx = torch.randn(2, tokens, ctx_dim, device=args.device, dtype=dtype)
        added = None
        if args.arch == "sdxl":
            added = {"text_embeds": torch.randn(2, 1280, device=args.device, dtype=dtype),
                     "time_ids": torch.tensor([[args.size, args.size, 0, 0, args.size, args.size]] * 2,
                                              device=args.device, dtype=dtype)}
    if args.forge:
        import types

        from diffusers.models.attention import BasicTransformerBlock

        for block in unet.modules():
            if isinstance(block, BasicTransformerBlock):
                block.forward = types.MethodType(forge_transformer_forward, block)
    weights = sum(p.numel() * p.element_size() for p in unet.parameters())
    n_params = sum(p.numel() for p in unet.parameters())
    side = args.size // 8

    def x0_pair(x_k, sigma_rows):
        """One CFG batch (cond rows, uncond rows) through the UNet, x0 out, as a host's denoiser."""
        x_in = torch.cat([x_k, x_k]).to(dtype)
        sig = torch.cat([sigma_rows, sigma_rows]).to(x_in.device)
        c_in = (1.0 / (sig**2 + 1) ** 0.5).view(-1, 1, 1, 1).to(dtype)
        rows = x_k.shape[0]
        kw = {} if added is None else {"added_cond_kwargs": {k: v[:1].repeat(2 * rows, *[1] * (v.ndim - 1))
                                                             for k, v in added.items()}}
        context = torch.cat([ctx[:1].repeat(rows, 1, 1), ctx[1:].repeat(rows, 1, 1)])
        eps = unet(x_in * c_in, torch.full((2 * rows,), 999.0, device=x_in.device), encoder_hidden_states=context,
                   return_dict=False, **kw)[0]
        x0 = x_in - eps * sig.view(-1, 1, 1, 1).to(dtype)
        return x0[:rows], x0[rows:]

    records = []
    for phase in phases:
        if args.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        base = peak_bytes(args.device)
        noise = torch.randn(1, 4, side, side, device=args.device)
        t0 = time.perf_counter()
        check = None
        if phase == "plain":
            with torch.inference_mode():
                x0_pair(noise * (1 + SIGMA_MAX**2) ** 0.5, torch.full((1,), SIGMA_MAX, device=args.device))
        elif phase == "sail":
            options = common.HostOptions(sail=True, threshold=0.0, max_steps=args.steps, low_memory=args.low_memory)
            with torch.inference_mode():  # the host's context around a node / script hook
                outcome = common.run_sail(lambda i: common.guided_from_x0_pair(x0_pair, SIGMA_MAX), noise, SIGMA_MAX,
                                          "max_denoise", options)
            s = outcome.summary[0]
            check = dict(steps=s["steps"], initial_loss=s["initial_loss"], loss=s["loss"],
                         loss_lowered=bool(s["loss"] < s["initial_loss"]))
        if args.device == "cuda":
            torch.cuda.synchronize()
        records.append(dict(
            arch=args.arch, size=args.size, device=args.device, dtype=args.dtype, forge=args.forge, low_memory=args.low_memory, phase=phase,
            peak_gib=round(peak_bytes(args.device) / 2**30, 3), before_gib=round(base / 2**30, 3),
            host_rss_peak_gib=round(peak_bytes("cpu") / 2**30, 3),  # process lifetime (low memory's CPU copies)
            weights_gib=round(weights / 2**30, 3), params_m=round(n_params / 1e6, 1),
            seconds=round(time.perf_counter() - t0, 2), sail=check))
    return records


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=sorted(ARCHS), default="sd15")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels (latent side = size / 8)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    ap.add_argument("--steps", type=int, default=2, help="SAIL Adam steps")
    ap.add_argument("--forge", action="store_true", help="Forge's in-place residual transformer blocks")
    ap.add_argument("--low-memory", action="store_true", help="the hosts' 'SAIL low memory' option (activations in CPU RAM)")
    ap.add_argument("--phase", choices=("load", "plain", "sail"), help=argparse.SUPPRESS)
    ap.add_argument("--json", help="append the phase records to this JSON-lines file")
    args = ap.parse_args(argv)
    phases = ("load", "plain", "sail")
    if args.phase:
        print(json.dumps(run_phases(args, [args.phase])[0]), flush=True)
        return 0
    if args.device == "cuda":  # one process: the peak statistics are reset per phase
        records = run_phases(args, phases)
        for rec in records:
            print(json.dumps(rec), flush=True)
    else:  # the CPU's peak resident memory is a process-lifetime figure: one process per phase
        records = []
        for phase in phases:
            cmd = [sys.executable, os.path.abspath(__file__), *(argv if argv is not None else sys.argv[1:]), "--phase", phase]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            records.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(records[-1]), flush=True)
    plain, sail = records[1]["peak_gib"], records[2]["peak_gib"]
    summary = dict(arch=args.arch, size=args.size, device=args.device, dtype=args.dtype, forge=args.forge, low_memory=args.low_memory,
                   load_gib=records[0]["peak_gib"], plain_gib=plain, sail_gib=sail,
                   sail_extra_over_plain_gib=round(sail - plain, 3), weights_gib=records[0]["weights_gib"],
                   sail_seconds=records[2]["seconds"], plain_seconds=records[1]["seconds"], sail=records[2]["sail"])
    print(json.dumps(summary), flush=True)
    if args.json:
        with open(args.json, "a") as f:
            for rec in records + [summary]:
                f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
