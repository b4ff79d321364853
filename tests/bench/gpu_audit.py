"""`sailscope audit` throughput on a GPU machine (issue 19 item 5; not CI). One command, no hub access:

    python tests/bench/gpu_audit.py --out runs/gpu_audit                       # SD 1.x-size random weights
    python tests/bench/gpu_audit.py --out runs/gpu_audit --model demo          # the embedded demo model

``--model sd1-random`` builds a Stable Diffusion 1.x-size pipeline with random weights offline (UNet2DConditionModel's
default config = SD 1.x's 860 M UNet, a CLIP ViT-L/14-size text encoder, SD's VAE, DDIM; the demo folder's CLIP
tokenizer) and saves it in fp16 under ``<out>/model``: the cost of a real SD 1.x audit without downloading one.
Random weights do not memorize, so only the timings mean something.

For each process count ``K`` in ``--procs`` it runs the audit over the same prompt list (demo grammar captions)
into ``<out>/k<K>``: ``K = 1`` as ``python -m sailscope audit``, ``K > 1`` under ``accelerate launch
--multi_gpu --num_processes K`` (one GPU per process, NCCL), or with ``--share-gpu`` K processes on GPU 0 (gloo
barrier: NCCL refuses two ranks on one GPU). It records the launch's wall time (model loading included),
prompts/s from the records (``n / max over processes of their summed per-prompt seconds``), and checks that the
merged scores equal the one-process run's (largest relative difference of every detector column). Everything
goes to ``<out>/gpu_audit.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COLUMNS = ("score", "wen", "sharpness", "anisotropy", "anisotropy_norm", "anisotropy_alignment")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/gpu_audit")
    p.add_argument("--model", default="sd1-random", help="sd1-random, demo, or a local diffusers folder")
    p.add_argument("--prompts", type=int, default=256, help="prompts in the list (default 256)")
    p.add_argument("--procs", default=None, help="process counts, e.g. 1,2,4,8 (default: 1 and every power of 2 "
                   "up to the GPU count)")
    p.add_argument("--share-gpu", action="store_true", help="run the K processes on GPU 0 (gloo barrier)")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--hvp", choices=["fd", "exact"], default="fd")
    p.add_argument("--dtype", default="auto")
    return p.parse_args(argv)


def build_random_sd1(folder: Path) -> Path:
    """A Stable Diffusion 1.x-size pipeline with random weights, saved in fp16 (no network)."""
    if (folder / "model_index.json").is_file():
        return folder
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    # SD 1.x's UNet: the default blocks (320/640/1280/1280, 8 heads), cross-attention 768, 64x64 latents (512 px)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                        sample_size=512)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                        num_hidden_layers=12, vocab_size=49408, max_position_embeddings=77,
                                        hidden_act="quick_gelu", projection_dim=768))
    tok = CLIPTokenizer.from_pretrained(str(REPO / "assets" / "models" / "demo" / "tokenizer"))
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tok, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(str(folder), safe_serialization=True)
    return folder


def prompt_list(n: int) -> list[str]:
    import numpy as np

    from sailscope.core.demo import data as demo_data
    from sailscope.core.io.prompts import read_heldout, read_memorized

    demo = REPO / "assets" / "models" / "demo"
    out = list(dict.fromkeys([r["caption"] for r in read_memorized(demo)] + read_heldout(demo)))
    rng = np.random.default_rng(5)
    while len(out) < n:
        text = demo_data.random_caption_spec(rng).text()
        if text not in out:
            out.append(text)
    return out[:n]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_audit(k: int, model: str, prompts: Path, out: Path, args) -> dict:
    audit = ["-m", "sailscope", "audit", "--model", model, "--prompts", str(prompts), "--out", str(out),
             "--seeds", str(args.seeds), "--hvp", args.hvp, "--dtype", args.dtype, "--no-progress"]
    if k == 1:
        cmd = [sys.executable, *audit]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(k), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
        cmd += ["--multi_gpu", *audit] if not args.share_gpu else ["--multi_gpu", *audit, "--device", "cuda:0",
                                                                   "--dist-backend", "gloo"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    (out.parent / f"k{k}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        return {"processes": k, "returncode": proc.returncode, "stderr_tail": proc.stderr[-3000:],
                "command": " ".join(cmd)}
    shards = [records(p) for p in sorted((out / "shards").glob("scores.*.jsonl"))]
    busy = [sum(r["seconds"] for r in s) for s in shards]
    n = sum(map(len, shards))
    per_prompt = sorted(r["seconds"] for s in shards for r in s)
    return {"processes": k, "returncode": 0, "command": " ".join(cmd), "prompts": n, "wall_s": wall,
            "prompts_per_s_wall": n / wall, "prompts_per_s_scoring": n / max(busy),
            "median_prompt_s": per_prompt[len(per_prompt) // 2], "per_process_prompts": [len(s) for s in shards]}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    n_gpu = torch.cuda.device_count()
    procs = ([int(v) for v in args.procs.split(",")] if args.procs else
             [1] + [2 ** i for i in range(1, 4) if 2 ** i <= n_gpu])
    t = time.perf_counter()
    model = str(build_random_sd1(out / "model")) if args.model == "sd1-random" else args.model
    build_s = time.perf_counter() - t
    prompts = out / "prompts.txt"
    prompts.write_text("\n".join(prompt_list(args.prompts)) + "\n", encoding="utf-8")
    result = {"command": "python tests/bench/gpu_audit.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "model": args.model, "gpus": [torch.cuda.get_device_name(i) for i in range(n_gpu)],
              "torch": torch.__version__, "seeds": args.seeds, "hvp": args.hvp, "model_build_s": build_s,
              "share_gpu": args.share_gpu, "runs": []}
    reference = None
    for k in procs:
        run_dir = out / f"k{k}"
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)  # a timing: always from scratch
        row = run_audit(k, model, prompts, run_dir, args)
        if row["returncode"] == 0:
            merged = records(run_dir / "scores.jsonl")
            if reference is None:
                reference = merged
            diffs = [abs(a[c] - b[c]) / max(abs(b[c]), 1e-12) for a, b in zip(merged, reference) for c in COLUMNS
                     if c in a and c in b and a[c] is not None and b[c] is not None]
            row["same_prompts_as_k1"] = [r["prompt"] for r in merged] == [r["prompt"] for r in reference]
            row["max_rel_diff_vs_k1"] = max(diffs) if diffs else None
        result["runs"].append(row)
        print(json.dumps(row), flush=True)
        (out / "gpu_audit.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if all(r["returncode"] == 0 for r in result["runs"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
