"""Short VAE probes for the demo model: how fast does a training recipe lift the VAE round-trip attribute accuracy?

    python tests/bench/demo_vae_probe.py --train decoder --steps 400 --lr 3e-4 --out runs/vae_probe_decoder.jsonl

The round-trip attribute accuracy is :func:`sailscope.core.demo.data.check_attributes` on decode(encode(x)) of
ground-truth renders of the 120 held-out prompts (2 renders each): the most any UNet can reach through that VAE
(model card). Every ``--eval-every`` steps one JSON line: step, seconds of training, loss, that accuracy, the
checker's failures (colour / count / shape) and the reconstruction RMSE on every 7th training image.

Recipes: start from the shipped VAE (``--init shipped``), a saved state (``--init PATH``, a state dict this script
wrote) or fresh weights (``--init fresh`` with ``--latent-channels`` and ``--widths``); train the decoder alone on
the fixed encoder's latents (``--train decoder``) or the whole VAE (``--train all``) with the posterior sampled or
its mean (``--posterior``); loss ``mse`` or ``l1_grad`` (``core.demo.train.reconstruction_loss``); full images or
random square crops. Fresh VAEs and the prior term are the trainer's (``core.demo.train.make_vae``,
``latent_and_prior``). Resumable only by ``--init`` from a saved state (``--save``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--init", default="shipped", help="shipped | fresh | PATH of a saved state dict")
    p.add_argument("--train", choices=["decoder", "all"], default="all")
    p.add_argument("--posterior", choices=["sample", "mean"], default="mean")
    p.add_argument("--loss", choices=["mse", "l1_grad"], default="l1_grad")
    p.add_argument("--latent-channels", type=int, default=4, help="--init fresh only")
    p.add_argument("--widths", default="16,32,64", help="--init fresh only: block widths")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=64, help="random square crops of this size (64 = full images)")
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save", default=None, help="write the state dict here at every evaluation")
    p.add_argument("--out", required=True, help="JSON lines, one per evaluation")
    return p.parse_args(argv)


def make_vae(args):
    import torch
    from diffusers import AutoencoderKL

    from sailscope.core.demo.train import TrainConfig, make_vae as make_demo_vae
    from sailscope.core.models import DEMO_MODEL_DIR

    if args.init == "fresh":
        torch.manual_seed(0)
        return make_demo_vae(TrainConfig(vae_latent_channels=args.latent_channels,
                                         vae_channels=tuple(int(w) for w in args.widths.split(","))))
    vae = AutoencoderKL.from_pretrained(str(Path(DEMO_MODEL_DIR) / "vae"))
    if args.init != "shipped":
        vae.load_state_dict(torch.load(args.init))
    return vae


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from sailscope.core.demo import data as D
    from sailscope.core.demo import evaluate as E
    from sailscope.core.demo import train as T

    torch.set_num_threads(args.threads)
    vae = make_vae(args)
    ds = D.build_dataset(seed=0, n_general=2000, n_exact=12, n_template=2, n_dup=64, n_heldout=120, design="v2")
    images = T.to_tensor_images(ds.images)
    truth = E.heldout_truth_renders(ds.heldout, "v2", 2)
    captions = list(np.repeat(ds.heldout, 2))
    probe = type("VaeOnly", (), {"vae": vae})()

    def measure() -> dict:
        vae.eval()
        failures = E.attribute_failures(E.vae_roundtrip(probe, truth), captions)
        rec = E.vae_reconstruction_rmse(probe, ds.images[::7].astype(np.float32) / 255)
        return {"roundtrip_attribute_accuracy": failures["ok"] / len(captions), "failures": failures,
                "rmse_mean": float(rec.mean()), "rmse_max": float(rec.max())}

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python tests/bench/demo_vae_probe.py " + " ".join(sys.argv[1:] if argv is None else argv)
    with open(out, "a") as f:
        f.write(json.dumps({"command": command, "step": 0, "params": sum(p.numel() for p in vae.parameters()),
                            **measure()}) + "\n")
    if args.train == "decoder":
        with torch.no_grad():
            mu = torch.cat([vae.encode(images[i:i + 256]).latent_dist.mean for i in range(0, len(images), 256)])
        vae.requires_grad_(False)
        params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
        for p in params:
            p.requires_grad_(True)
    else:
        params = list(vae.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = T.lr_at(step, args.steps, args.lr, args.warmup)
        idx = torch.randint(len(images), (args.batch,), generator=gen)
        vae.train()
        if args.train == "decoder":
            x, z, prior = images[idx], mu[idx], 0.0
        else:
            x = images[idx]
            if args.crop < 64:
                i, j = torch.randint(0, 64 - args.crop + 1, (2,), generator=gen).tolist()
                x = x[:, :, i:i + args.crop, j:j + args.crop]
            z, prior = T.latent_and_prior(vae.encode(x).latent_dist, args.posterior, gen)
        loss = T.reconstruction_loss(vae.decode(z).sample, x, args.loss) + 1e-6 * prior
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            row = {"step": step + 1, "train_s": time.time() - t0, "loss": float(loss), **measure()}
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
            if args.save:
                torch.save(vae.state_dict(), args.save)
            t0 = time.time() - row["train_s"]  # the evaluation's time is not training time
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
