"""Train the embedded demo model (Stable Diffusion architecture, 64x64) on the procedural data.

One command, fixed seeds, resumable::

    sailscope train-demo --run-dir runs/demo --out assets/models/demo

Stages (each resumes from the newest checkpoint in ``run_dir``):

1. build the deterministic dataset (:mod:`sailscope.core.demo.data`);
2. train ``AutoencoderKL`` (64x64x3 -> 4x16x16) on reconstruction + a tiny KL term;
3. encode every training image once (posterior mean) and set ``scaling_factor = 1 / std(latents)``;
   then fine-tune the decoder alone on full 64x64 images (latents unchanged; memorized rows up-weighted,
   since copy distances are measured on them);
4. train ``CLIPTextModel`` + ``UNet2DConditionModel`` jointly on epsilon, SD's scaled-linear schedule
   (beta 0.00085..0.012, 1000 steps), 10 % caption dropout (empty caption = unconditional), EMA of both;
5. export a stock diffusers folder (DDIM scheduler, no safety checker), ``memorized.jsonl`` with the
   training PNGs, ``heldout_prompts.txt`` and ``train_info.json`` (wall time, steps, configuration).
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import data as demo_data
from .tokenizer import build_clip_tokenizer, write_tokenizer_files

SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    seed: int = 0
    # data
    n_general: int = 2000
    n_exact: int = 12
    n_template: int = 2
    n_dup: int = 64
    memorized_weight: float = 1.5  # UNet sampling weight of duplicated rows (effective n_dup 96)
    n_heldout: int = 120
    data_design: str = demo_data.DEFAULT_DESIGN  # see data.DESIGNS ("v1" = the first shipped model's data)
    # VAE
    vae_channels: tuple[int, ...] = (16, 32, 64)
    vae_steps: int = 250
    vae_batch: int = 32
    vae_crop: int = 32  # the VAE is convolutional: train on random crops (4x cheaper)
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    vae_loss: str = "mse"  # or "l1_grad": L1 on pixels and on their finite differences (probed for v3, card)
    vae_latent_channels: int = 4
    vae_posterior: str = "sample"  # or "mean": a deterministic encoder (pin_posterior_to_mean; probed for v3)
    decoder_steps: int = 300  # decoder-only fine-tune on full images (latents stay fixed); v1 model: 120
    decoder_batch: int = 16
    decoder_lr: float = 3e-4
    decoder_memorized_weight: float = 1.0  # v1 model: 3.0 (with v2 data it degraded general images)
    # text encoder
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 4
    # UNet
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_attention: tuple[bool, ...] = (False, True, True)  # cross-attention at 8x8 and 4x4 (and mid), as the probe
    unet_layers_per_block: int = 1
    unet_head_dim: int = 8
    unet_steps: int = 3000
    # phases (first_step, planned_total_for_the_LR_cosine, weight_of_duplicated_rows), for runs that were
    # extended; the first phase uses `memorized_weight`
    phases: tuple = ((0, 3000, 1.5),)
    unet_batch: int = 32
    unet_lr: float = 1e-3
    unet_warmup: int = 50
    cond_dropout: float = 0.1
    ema_decay: float = 0.995
    # bookkeeping
    ckpt_every: int = 100
    export_every: int = 200
    threads: int = 2  # the shipped run had the 2-core machine to itself (SAILSCOPE_THREADS overrides)

    @classmethod
    def tiny(cls, **kw) -> "TrainConfig":
        """Smoke-test sizes (seconds on a CPU)."""
        base = dict(n_general=32, n_exact=2, n_template=1, n_dup=4, n_heldout=12, vae_channels=(8, 8, 8),
                    vae_steps=2, vae_batch=4, vae_crop=16, decoder_steps=2, decoder_batch=4, text_width=32, text_layers=1, text_heads=2, unet_channels=(16, 16, 16),
                    unet_steps=2, unet_batch=4, unet_warmup=1, phases=((0, 2, 1.0),), ckpt_every=1, export_every=0, unet_head_dim=4)
        base.update(kw)
        return cls(**base)


# ----------------------------------------------------------------------------------------------
# Model factories
# ----------------------------------------------------------------------------------------------
def make_vae(cfg: TrainConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.vae_latent_channels, sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.vae_channels), layers_per_block=1, norm_num_groups=min(8, cfg.vae_channels[0]),
    )


def pin_posterior_to_mean(vae) -> None:
    """For an encoder trained deterministically (``vae_posterior="mean"``): set the log-variance half of
    ``quant_conv`` to the smallest value diffusers allows (-30), so ``latent_dist.sample()`` (img2img) equals the
    mean to ~3e-7 instead of adding the untrained variance."""
    c = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[c:].zero_()
        vae.quant_conv.bias[c:].fill_(-30.0)


def make_text_encoder(cfg: TrainConfig):
    from transformers import CLIPTextConfig, CLIPTextModel

    tc = CLIPTextConfig(
        vocab_size=49408, hidden_size=cfg.text_width, intermediate_size=4 * cfg.text_width,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads, max_position_embeddings=77,
        hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=cfg.text_width,
    )
    return CLIPTextModel(tc)


def make_unet(cfg: TrainConfig):
    from diffusers import UNet2DConditionModel

    ch = tuple(cfg.unet_channels)
    attn = tuple(cfg.unet_attention)
    return UNet2DConditionModel(
        sample_size=16, in_channels=cfg.vae_latent_channels, out_channels=cfg.vae_latent_channels,
        layers_per_block=cfg.unet_layers_per_block,
        block_out_channels=ch,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        cross_attention_dim=cfg.text_width, attention_head_dim=cfg.unet_head_dim, norm_num_groups=min(16, ch[0]),
    )


def make_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                         prediction_type="epsilon")


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warmup then cosine decay to ``floor * peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


def reconstruction_loss(rec: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """``mse``, or ``l1_grad``: L1 on pixels plus L1 on horizontal and vertical pixel differences, which keeps
    edges and corners (MSE alone prefers a blur wherever an edge's exact position is uncertain)."""
    if kind == "mse":
        return F.mse_loss(rec, x)
    if kind != "l1_grad":
        raise ValueError(f"vae_loss must be mse or l1_grad, got {kind!r}")
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]
    return F.l1_loss(rec, x) + F.l1_loss(dy(rec), dy(x)) + F.l1_loss(dx(rec), dx(x))


def latent_and_prior(post, posterior: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The latent the decoder trains on and the prior term: ``sample`` draws from the posterior and uses its KL;
    ``mean`` (a deterministic encoder) takes the mean and penalizes only its size, ``0.5 * ||mean||^2``."""
    if posterior == "mean":
        return post.mean, 0.5 * post.mean.pow(2).sum(dim=(1, 2, 3)).mean()
    if posterior != "sample":
        raise ValueError(f"vae_posterior must be sample or mean, got {posterior!r}")
    return post.mean + post.std * torch.randn(post.mean.shape, generator=gen), post.kl().mean()


def to_tensor_images(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------
def reconstruction_rmse(vae, images: torch.Tensor, mu: torch.Tensor, kinds: list[str]) -> dict:
    """Decoder RMSE in [0,1] pixels: mean over general images, max over exact memorized ones."""
    with torch.no_grad():
        rec = torch.cat([vae.decode(mu[i:i + 256]).sample for i in range(0, len(mu), 256)])
    rmse = ((rec.clamp(-1, 1) - images) / 2).pow(2).mean(dim=(1, 2, 3)).sqrt()
    kinds = np.array(kinds)
    return {"rmse_general": float(rmse[kinds == "general"].mean()), "rmse_memorized_max": float(rmse[kinds == "exact"].max())}


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".ckpt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None


# ----------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------
def store_text_encoder_fp16(out: Path) -> None:
    """Rewrite ``text_encoder/model.safetensors`` in fp16: its 49,408-row token table is half the folder, and
    fp16 storage keeps the folder under 50 MB. Stock loaders cast it back to the model's fp32 on load."""
    from safetensors.torch import load_file, save_file

    path = Path(out) / "text_encoder" / "model.safetensors"
    tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def export_pipeline(out: Path, vae, text_encoder, unet, ds: demo_data.DemoDataset, info: dict, tokenizer=None) -> Path:
    """Write a stock diffusers folder plus memorized.jsonl, PNGs, heldout_prompts.txt, train_info.json."""
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer or build_clip_tokenizer(), unet=unet,
        scheduler=make_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(out), safe_serialization=True)
    store_text_encoder_fp16(out)
    write_tokenizer_files(out / "tokenizer")  # vocab.json/merges.txt too, for older transformers
    (out / "memorized").mkdir(exist_ok=True)
    with open(out / "memorized.jsonl", "w") as f:
        for i, item in enumerate(ds.memorized):
            rel = f"memorized/{i:02d}_{item.kind}.png"
            Image.fromarray(item.image).save(out / rel)
            f.write(json.dumps({"caption": item.caption, "image": rel, "kind": item.kind}) + "\n")
    (out / "heldout_prompts.txt").write_text("\n".join(ds.heldout) + "\n")
    (out / "train_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def _seed_vae_stages(cfg: TrainConfig, run_dir: Path, source: Path, meta: dict) -> dict:
    """Resume point after the VAE stages from an exported demo folder (same VAE config): its VAE becomes the
    finished VAE checkpoint, and its recorded VAE wall time is carried over. The decoder fine-tune is carried
    over too when the source was trained on the same images (``data.same_images``); otherwise it is re-run on this run's data
    (starting from the source's decoder), since the decoder must reconstruct this run's memorized images."""
    from diffusers import AutoencoderKL

    old = json.loads((source / "train_info.json").read_text())
    old_design = old["config"].get("data_design", "v1")
    vae = make_vae(cfg)
    vae.load_state_dict(AutoencoderKL.from_pretrained(str(source / "vae")).state_dict())
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    _save(run_dir / "vae.ckpt", {"model": vae.state_dict(), "opt": opt.state_dict(), "step": cfg.vae_steps})
    same = demo_data.same_images(old_design, cfg.data_design)
    if same:
        _save(run_dir / "decoder.ckpt", {"decoder": vae.decoder.state_dict(), "post_quant_conv": vae.post_quant_conv.state_dict(),
                                         "step": cfg.decoder_steps, "wall_s": old["wall_s"]["decoder"]})
    meta = {**meta, "wall_s": {"vae": old["wall_s"]["vae"], "encode": 0.0, "unet": 0.0},
            "vae_from": f"{source} (its VAE config and seeds are this run's; VAE trained on data design {old_design}"
                        + ("" if same else f", decoder fine-tune re-run on {cfg.data_design}") + ")"}
    _save(run_dir / "meta.ckpt", meta)
    return meta


def _warm_start(text_encoder, unet, source: Path) -> list[str]:
    """Start from an exported demo folder's text encoder and UNet: every tensor whose name and shape match is
    copied (the UNet's input and output convolutions differ when the latent channels do); returns the names
    left at their fresh initialization."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    text_encoder.load_state_dict(CLIPTextModel.from_pretrained(str(source / "text_encoder")).float().state_dict())
    old = UNet2DConditionModel.from_pretrained(str(source / "unet")).state_dict()
    own = unet.state_dict()
    same = {k: v for k, v in old.items() if k in own and own[k].shape == v.shape}
    unet.load_state_dict(same, strict=False)
    return sorted(set(own) - set(same))


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, run_dir: str | os.PathLike, out: str | os.PathLike, *, progress: bool = True,
          max_unet_steps: int | None = None, vae_only: bool = False, vae_from: str | os.PathLike | None = None,
          unet_from: str | os.PathLike | None = None,
          command: str = "sailscope train-demo --run-dir runs/demo --out assets/models/demo") -> dict:
    """Run (or resume) all stages; returns the info dict written to ``train_info.json``."""
    from diffusers import DDPMScheduler
    from tqdm.auto import tqdm

    run_dir, out = Path(run_dir), Path(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    threads = int(os.environ.get("SAILSCOPE_THREADS") or cfg.threads)
    if threads > 0:  # 0 = torch's own default (core/threads.py)
        torch.set_num_threads(threads)
    meta = _load(run_dir / "meta.ckpt") or {"wall_s": {"vae": 0.0, "encode": 0.0, "unet": 0.0}, "config": asdict(cfg)}

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # 1. Data
    ds = demo_data.dataset_from_config(asdict(cfg))
    images = to_tensor_images(ds.images)
    log(f"dataset: {len(ds.captions)} images, {len(ds.memorized)} memorized items, {len(ds.heldout)} held-out prompts")

    # 2. VAE
    torch.manual_seed(cfg.seed)
    vae = make_vae(cfg)
    if vae_from is not None and not (run_dir / "vae.ckpt").exists():
        meta = _seed_vae_stages(cfg, run_dir, Path(vae_from), meta)
        log(f"VAE stages taken from {vae_from}: {meta['vae_from']}")
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    st = _load(run_dir / "vae.ckpt")
    step = 0
    if st:
        vae.load_state_dict(st["model"]); opt.load_state_dict(st["opt"]); step = st["step"]
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    if st and "gen" in st:
        gen.set_state(st["gen"])
    if step < cfg.vae_steps:
        vae.train()
        bar = tqdm(range(step, cfg.vae_steps), initial=step, total=cfg.vae_steps, desc="vae", disable=not progress,
                   mininterval=5)
        t0 = time.time()
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg.vae_steps, cfg.vae_lr, 30)
            x = images[torch.randint(len(images), (cfg.vae_batch,), generator=gen)]
            if cfg.vae_crop < 64:
                i, j = torch.randint(0, 64 - cfg.vae_crop + 1, (2,), generator=gen).tolist()
                x = x[:, :, i:i + cfg.vae_crop, j:j + cfg.vae_crop]
            z, prior = latent_and_prior(vae.encode(x).latent_dist, cfg.vae_posterior, gen)
            rec = vae.decode(z).sample
            loss = reconstruction_loss(rec, x, cfg.vae_loss) + cfg.vae_kl_weight * prior
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.vae_steps:
                meta["wall_s"]["vae"] += time.time() - t0; t0 = time.time()
                _save(run_dir / "vae.ckpt", {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                                             "gen": gen.get_state()})
                _save(run_dir / "meta.ckpt", meta)
                if not progress:
                    log(f"vae step {step + 1} loss {loss.item():.4f}")
    vae.eval().requires_grad_(False)
    if cfg.vae_posterior == "mean":
        pin_posterior_to_mean(vae)

    # 3. Latents
    lat_path = run_dir / "latents.pt"
    if lat_path.exists():
        lat = torch.load(lat_path)
    else:
        t0 = time.time()
        with torch.no_grad():
            mu = torch.cat([vae.encode(images[i:i + 256]).latent_dist.mean for i in range(0, len(images), 256)])
        lat = {"mu": mu, "scale": float(1.0 / mu.std()), **reconstruction_rmse(vae, images, mu, ds.kinds)}
        torch.save(lat, lat_path)
        meta["wall_s"]["encode"] += time.time() - t0
        _save(run_dir / "meta.ckpt", meta)
    vae.register_to_config(scaling_factor=lat["scale"])
    log(f"latents: scale {lat['scale']:.4f}, VAE recon RMSE general {lat['rmse_general']:.4f}, "
        f"exact max {lat['rmse_memorized_max']:.4f}")
    latents = lat["mu"] * lat["scale"]

    # 3b. Decoder fine-tune on full 64x64 images (encoder and latents unchanged)
    dec_path = run_dir / "decoder.ckpt"
    st = _load(dec_path)
    step = st["step"] if st else 0
    if st:
        vae.decoder.load_state_dict(st["decoder"]); vae.post_quant_conv.load_state_dict(st["post_quant_conv"])
    if step < cfg.decoder_steps:
        dec_params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
        for p in dec_params:
            p.requires_grad_(True)
        dopt = torch.optim.AdamW(dec_params, lr=cfg.decoder_lr, weight_decay=0.0)
        if st:
            dopt.load_state_dict(st["opt"])
        dgen = torch.Generator().manual_seed(cfg.seed + 4)
        if st:
            dgen.set_state(st["gen"])
        dweight = torch.tensor([1.0 if k == "general" else cfg.decoder_memorized_weight for k in ds.kinds])
        dec_wall = st["wall_s"] if st else 0.0
        vae.decoder.train()
        bar = tqdm(range(step, cfg.decoder_steps), initial=step, total=cfg.decoder_steps, desc="decoder",
                   disable=not progress, mininterval=5)
        t0 = time.time()
        for step in bar:
            for g in dopt.param_groups:
                g["lr"] = lr_at(step, cfg.decoder_steps, cfg.decoder_lr, 10)
            idx = torch.multinomial(dweight, cfg.decoder_batch, replacement=True, generator=dgen)
            rec = vae.decode(lat["mu"][idx]).sample
            loss = reconstruction_loss(rec, images[idx], cfg.vae_loss)
            dopt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(dec_params, 1.0)
            dopt.step()
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.decoder_steps:
                dec_wall += time.time() - t0; t0 = time.time()
                _save(dec_path, {"decoder": vae.decoder.state_dict(), "post_quant_conv": vae.post_quant_conv.state_dict(),
                                 "opt": dopt.state_dict(), "step": step + 1, "gen": dgen.get_state(), "wall_s": dec_wall})
                if not progress:
                    log(f"decoder step {step + 1} loss {loss.item():.4f}")
        vae.eval().requires_grad_(False)
        st = {**_load(dec_path), **reconstruction_rmse(vae, images, lat["mu"], ds.kinds)}
        _save(dec_path, st)
    dec_wall = st["wall_s"] if st else 0.0
    recon = {k: st[k] for k in ("rmse_general", "rmse_memorized_max")} if st and "rmse_general" in st else lat
    if vae_only:
        log("decoder fine-tune done (--vae-only): stopping before the UNet stage")
        return {"decoder_steps_done": cfg.decoder_steps, "decoder_wall_s": dec_wall}

    # 4. Text encoder + UNet
    tokenizer = build_clip_tokenizer()
    tok = lambda caps: tokenizer(caps, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    unique_caps = sorted(set(ds.captions))
    cap_index = {c: i for i, c in enumerate(unique_caps)}
    cap_ids = torch.tensor([cap_index[c] for c in ds.captions])
    phases = [(a, b, cfg.memorized_weight if i == 0 else w) for i, (a, b, w) in enumerate(cfg.phases)]
    phase_of = lambda s: [p for p in phases if p[0] <= s][-1]
    row_weights = {w: torch.tensor([1.0 if k == "general" else w for k in ds.kinds]) for _, _, w in phases}
    cap_tokens = tok(unique_caps)
    empty_tokens = tok([""])[0]

    torch.manual_seed(cfg.seed + 2)
    text_encoder, unet = make_text_encoder(cfg), make_unet(cfg)
    ema_text, ema_unet = copy.deepcopy(text_encoder).requires_grad_(False), copy.deepcopy(unet).requires_grad_(False)
    params = list(text_encoder.parameters()) + list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    noise_sched = DDPMScheduler(**SD_SCHEDULE)
    st = _load(run_dir / "unet.ckpt")
    step = 0
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    if st:
        text_encoder.load_state_dict(st["text"]); unet.load_state_dict(st["unet"])
        ema_text.load_state_dict(st["ema_text"]); ema_unet.load_state_dict(st["ema_unet"])
        opt.load_state_dict(st["opt"]); step = st["step"]; gen.set_state(st["gen"])
    elif unet_from is not None:
        fresh = _warm_start(text_encoder, unet, Path(unet_from))
        ema_text.load_state_dict(text_encoder.state_dict()); ema_unet.load_state_dict(unet.state_dict())
        meta["unet_from"] = (f"{unet_from} (text encoder and UNet weights as the starting point"
                             + (f"; fresh: {', '.join(fresh)}" if fresh else "") + ")")
        _save(run_dir / "meta.ckpt", meta)
        log(f"text encoder and UNet start from {unet_from}")
    n_params = {"vae": sum(p.numel() for p in vae.parameters()), "text_encoder": sum(p.numel() for p in text_encoder.parameters()),
                "unet": sum(p.numel() for p in unet.parameters())}
    log(f"params: {n_params}")

    def info(done: int) -> dict:
        return {"config": asdict(cfg), "unet_steps_done": done, "vae_steps_done": cfg.vae_steps,
                "wall_s": {**meta["wall_s"], "decoder": dec_wall}, "wall_s_total": sum(meta["wall_s"].values()) + dec_wall,
                "decoder_steps_done": cfg.decoder_steps,
                "vae_recon_rmse_general": recon["rmse_general"], "vae_recon_rmse_exact_max": recon["rmse_memorized_max"],
                "scaling_factor": lat["scale"], "params": n_params, "torch": torch.__version__,
                **{k: meta[k] for k in ("vae_from", "unet_from") if k in meta},
                "command": command}

    def do_export(done: int) -> None:
        export_pipeline(out, vae, ema_text, ema_unet, ds, info(done), tokenizer)
        log(f"exported EMA weights at unet step {done} to {out}")

    end = cfg.unet_steps if max_unet_steps is None else min(cfg.unet_steps, max_unet_steps)
    if step < end:
        text_encoder.train(); unet.train()
        bar = tqdm(range(step, end), initial=step, total=cfg.unet_steps, desc="unet", disable=not progress, mininterval=5)
        t0 = time.time()
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, phase_of(step)[1], cfg.unet_lr, cfg.unet_warmup)
            row_weight = row_weights[phase_of(step)[2]]
            idx = torch.multinomial(row_weight, cfg.unet_batch, replacement=True, generator=gen)
            x0 = latents[idx]
            ids = cap_tokens[cap_ids[idx]].clone()
            drop = torch.rand(cfg.unet_batch, generator=gen) < cfg.cond_dropout
            ids[drop] = empty_tokens
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.randint(0, 1000, (cfg.unet_batch,), generator=gen)
            xt = noise_sched.add_noise(x0, noise, t)
            cond = text_encoder(ids)[0]
            loss = F.mse_loss(unet(xt, t, cond).sample, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for m, e in ((text_encoder, ema_text), (unet, ema_unet)):
                    for p, q in zip(m.parameters(), e.parameters()):
                        q.lerp_(p, 1 - decay)
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            done = step + 1
            if done % cfg.ckpt_every == 0 or done == end:
                meta["wall_s"]["unet"] += time.time() - t0; t0 = time.time()
                _save(run_dir / "unet.ckpt", {"text": text_encoder.state_dict(), "unet": unet.state_dict(),
                                              "ema_text": ema_text.state_dict(), "ema_unet": ema_unet.state_dict(),
                                              "opt": opt.state_dict(), "step": done, "gen": gen.get_state()})
                _save(run_dir / "meta.ckpt", meta)
                if not progress:
                    log(f"unet step {done} loss {loss.item():.4f}")
            if cfg.export_every and done % cfg.export_every == 0 and done != end:
                do_export(done)
        step = end
    do_export(step)
    return info(step)


def default_out() -> Path:
    return Path(__file__).resolve().parents[2] / "assets" / "models" / "demo"
