"""A few training steps at tiny sizes write a folder that stock StableDiffusionPipeline loads offline."""
import json

import numpy as np
import torch

import pytest

from sailscope.cli.train_demo import add_arguments, config_from_args
from sailscope.core.demo.train import TrainConfig, train


def test_train_smoke_writes_loadable_pipeline(tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    cfg = TrainConfig.tiny()
    info = train(cfg, tmp_path / "run", tmp_path / "out", progress=False)
    assert info["unet_steps_done"] == cfg.unet_steps

    out = tmp_path / "out"
    pipe = StableDiffusionPipeline.from_pretrained(str(out), local_files_only=True)
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.safety_checker is None
    assert pipe.tokenizer.model_max_length == 77
    assert (out / "tokenizer" / "vocab.json").exists() and (out / "tokenizer" / "merges.txt").exists()
    assert pipe.tokenizer("hello world").input_ids == [49406, 3306, 1002, 49407]  # SD 1.x CLIP ids
    img = pipe("a red circle", num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 64, 64, 3) and np.isfinite(img).all()

    rows = [json.loads(l) for l in (out / "memorized.jsonl").read_text().splitlines()]
    assert len(rows) == cfg.n_exact + cfg.n_template
    assert all((out / r["image"]).exists() and r["kind"] in ("exact", "template") for r in rows)
    assert len((out / "heldout_prompts.txt").read_text().split("\n")) >= cfg.n_heldout

    # resuming a finished run does no more steps and exports again
    info2 = train(cfg, tmp_path / "run", tmp_path / "out2", progress=False)
    assert info2["unet_steps_done"] == cfg.unet_steps and (tmp_path / "out2" / "model_index.json").exists()

    # --phase extends a finished run from its checkpoint: only the new steps run, the schedule and command are recorded
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg_x, command = config_from_args(parser.parse_args(["--tiny", "--run-dir", str(tmp_path / "run"), "--phase", "2:4:2.5"]))
    assert cfg_x.phases == ((0, 2, 1.0), (2, 4, 2.5)) and cfg_x.unet_steps == 4 and command.endswith("--phase 2:4:2.5 --tiny")
    before = torch.load(tmp_path / "run" / "unet.ckpt", weights_only=False)["unet"]
    info_x = train(cfg_x, tmp_path / "run", tmp_path / "out_x", progress=False, command=command)
    after = torch.load(tmp_path / "run" / "unet.ckpt", weights_only=False)
    assert info_x["unet_steps_done"] == after["step"] == 4 and tuple(info_x["config"]["phases"][-1]) == (2, 4, 2.5)
    assert not all(torch.equal(before[k], after["unet"][k]) for k in before)
    cfg_d, command_d = config_from_args(parser.parse_args(["--tiny", "--design", "v3", "--unet-steps", "3", "--unet-lr", "1e-4"]))
    assert cfg_d.data_design == "v3" and cfg_d.unet_lr == 1e-4 and cfg_d.unet_steps == 3
    assert cfg_d.phases == ((0, 3, cfg_d.memorized_weight),)  # one cosine planned to the steps asked for
    assert command_d.endswith("--unet-steps 3 --unet-lr 0.0001 --design v3 --tiny")
    cfg_e, _ = config_from_args(parser.parse_args(["--tiny", "--unet-steps", "3", "--phase", "3:5:0.5"]))
    assert cfg_e.phases == ((0, 3, cfg_e.memorized_weight), (3, 5, 0.5)) and cfg_e.unet_steps == 5
    for bad in (["--unet-lr", "0"], ["--unet-lr", "x"], ["--design", "v9"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    from sailscope.cli.train_demo import run

    with pytest.raises(SystemExit, match="--unet-from .*not an exported demo folder"):
        run(parser.parse_args(["--tiny", "--run-dir", str(tmp_path / "never"), "--unet-from", str(tmp_path)]))
    for bad in ("2:1:1", "0:4:1", "2:4:0", "x"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--phase", bad])

    # a new UNet run can take its VAE from an exported folder: same VAE weights, its wall time carried over
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    info3 = train(cfg, tmp_path / "run3", tmp_path / "out3", progress=False, vae_from=out)
    assert "vae_from" in info3 and info3["wall_s"]["vae"] == info["wall_s"]["vae"]
    a = AutoencoderKL.from_pretrained(str(out / "vae")).state_dict()
    b = AutoencoderKL.from_pretrained(str(tmp_path / "out3" / "vae")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # ... and when the data design differs, the decoder fine-tune is re-run on the new data (encoder kept)
    info4 = train(TrainConfig.tiny(data_design="v1"), tmp_path / "run4", tmp_path / "out4", progress=False, vae_from=out)
    assert "re-run on v1" in info4["vae_from"]
    c = AutoencoderKL.from_pretrained(str(tmp_path / "out4" / "vae")).state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a if k.startswith("encoder."))
    assert not all(torch.equal(a[k], c[k]) for k in a if k.startswith("decoder."))
    assert 0 < info4["vae_recon_rmse_general"] < 1 and info4["command"].startswith("sailscope train-demo")
    # the text encoder is stored in fp16 (size); stock loading gives fp32
    assert all(v.dtype == torch.float16 for v in load_file(str(out / "text_encoder" / "model.safetensors")).values()
               if v.is_floating_point())
    assert pipe.text_encoder.dtype == torch.float32


def test_unet_from_starts_at_the_exported_weights(tmp_path):
    """``--unet-from``: step 0 of a new run holds the exported text encoder and UNet (fp16-stored text encoder
    cast back); with other latent channels only the UNet's input/output convolutions start fresh."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from sailscope.core.demo.train import _warm_start, make_text_encoder, make_unet

    cfg = TrainConfig.tiny()
    train(cfg, tmp_path / "run", tmp_path / "out", progress=False)
    text, unet = make_text_encoder(cfg), make_unet(cfg)
    assert _warm_start(text, unet, tmp_path / "out") == []
    ref_unet = UNet2DConditionModel.from_pretrained(str(tmp_path / "out" / "unet")).state_dict()
    ref_text = CLIPTextModel.from_pretrained(str(tmp_path / "out" / "text_encoder")).state_dict()
    assert all(torch.equal(v, ref_unet[k]) for k, v in unet.state_dict().items())
    assert all(torch.equal(v, ref_text[k].float()) for k, v in text.state_dict().items())
    wide = make_unet(TrainConfig.tiny(vae_latent_channels=8))
    fresh = _warm_start(make_text_encoder(cfg), wide, tmp_path / "out")
    assert fresh == ["conv_in.weight", "conv_out.bias", "conv_out.weight"]

    info = train(cfg, tmp_path / "run2", tmp_path / "out2", progress=False, vae_from=tmp_path / "out",
                 unet_from=tmp_path / "out")
    assert info["unet_from"].startswith(str(tmp_path / "out")) and "fresh" not in info["unet_from"]


def test_reconstruction_losses_and_pinned_posterior():
    from sailscope.core.demo.train import make_vae, pin_posterior_to_mean, reconstruction_loss

    x = torch.zeros(1, 3, 8, 8)
    x[..., 2:6, 2:6] = 1.0
    shifted = torch.roll(x, 1, dims=-1)
    # a 4x4 block moved one pixel: 2 columns x 4 rows x 3 channels of 192 values change; of the 168 horizontal
    # differences 4 boundaries x 4 rows x 3 channels change, of the 168 vertical ones 2 columns x 2 edges x 3
    assert torch.isclose(reconstruction_loss(shifted, x, "l1_grad"), torch.tensor(24 / 192 + 48 / 168 + 12 / 168))
    assert torch.isclose(reconstruction_loss(shifted, x, "mse"), torch.tensor(24 / 192))
    with pytest.raises(ValueError, match="vae_loss"):
        reconstruction_loss(x, x, "l2")
    vae = make_vae(TrainConfig.tiny(vae_latent_channels=8))
    pin_posterior_to_mean(vae)
    with torch.no_grad():
        post = vae.encode(torch.randn(2, 3, 16, 16)).latent_dist
    assert post.mean.shape[1] == 8 and float(post.std.max()) < 1e-6
    assert torch.allclose(post.sample(), post.mean, atol=1e-5)
