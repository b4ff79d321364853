"""LoRAs through the loader (diffusers' load_lora_weights + PEFT adapters): scale 0 is the base model, scale 1
changes the image exactly as stock diffusers with the same LoRA does, the calibration key follows the LoRA, and bad
files get one clear message."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sailscope.core.calibration import model_key
from sailscope.core.errors import ModelLoadError
from sailscope.core.models import LoraSpec, load_pipeline
from sailscope.core.sampling import GenerationSettings, run_generation
from sailscope.core.testing import tiny_pipeline, tiny_sdxl_pipeline

PROMPT = "a red square"


def _save_lora(pipe, folder, seed: int = 0):
    """A random (non-zero) LoRA on the UNet's attention projections, written in diffusers' format."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    for name, p in pipe.unet.named_parameters():
        if "lora_" in name:
            p.data.normal_(0, 0.3)
    state = get_peft_model_state_dict(pipe.unet)
    type(pipe).save_lora_weights(str(folder), unet_lora_layers=state, safe_serialization=True)
    pipe.unet.delete_adapters("default")
    return folder / "pytorch_lora_weights.safetensors"


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_lora_scale_zero_is_the_base_model_and_scale_one_is_stock(tmp_path, family):
    build = tiny_pipeline if family == "sd" else tiny_sdxl_pipeline
    base = build()
    base.save_pretrained(tmp_path / "model")
    lora = _save_lora(build(), tmp_path)
    s = GenerationSettings(prompt=PROMPT, seed=1, steps=4, sharpness_at="first")

    plain = load_pipeline(str(tmp_path / "model"), device="cpu", dtype="fp32")
    off = load_pipeline(str(tmp_path / "model"), device="cpu", dtype="fp32", loras=[LoraSpec(str(lora), 0.0)])
    on = load_pipeline(str(tmp_path / "model"), device="cpu", dtype="fp32", loras=[LoraSpec.parse(f"{lora}:1")])
    img_plain, img_off, img_on = (run_generation(p, s).array for p in (plain, off, on))
    assert np.abs(img_off - img_plain).max() <= 1e-6
    assert np.abs(img_on - img_plain).max() > 1e-3

    stock = build()  # stock diffusers with the same LoRA file and scale
    stock.load_lora_weights(str(lora), adapter_name="x")
    stock.set_adapters(["x"], adapter_weights=[1.0])
    assert np.abs(run_generation(stock, s).array - img_on).max() <= 1e-5

    assert on.sailscope_info.loras[0]["name"] == lora.stem and on.sailscope_info.loras[0]["scale"] == 1.0
    assert len({model_key(plain), model_key(off), model_key(on)}) == 3  # a LoRA (and its scale) changes the key
    assert model_key(on) == model_key(load_pipeline(str(tmp_path / "model"), device="cpu", dtype="fp32",
                                                    loras=[LoraSpec(str(lora), 1.0)]))


def test_lora_spec_parsing_and_bad_files(tmp_path):
    assert LoraSpec.parse("a/b.safetensors") == LoraSpec("a/b.safetensors", 1.0)
    assert LoraSpec.parse("a/b.safetensors:0.6") == LoraSpec("a/b.safetensors", 0.6)
    assert LoraSpec.parse("C:/x/b.safetensors") == LoraSpec("C:/x/b.safetensors", 1.0)
    base = tiny_pipeline()
    base.save_pretrained(tmp_path / "model")
    with pytest.raises(ModelLoadError, match="LoRA file not found"):
        load_pipeline(str(tmp_path / "model"), device="cpu", dtype="fp32", loras=[LoraSpec(str(tmp_path / "no.safetensors"))])
    (tmp_path / "x.ckpt").write_bytes(b"0")
    with pytest.raises(ModelLoadError, match="pickle"):
        load_pipeline(str(tmp_path / "model"), device="cpu", dtype="fp32", loras=[LoraSpec(str(tmp_path / "x.ckpt"))])
    xl_lora = _save_lora(tiny_sdxl_pipeline(), tmp_path / "xl")
    with pytest.raises(ModelLoadError, match="could not apply the LoRA"):
        load_pipeline(str(tmp_path / "model"), device="cpu", dtype="fp32", loras=[LoraSpec(str(xl_lora))])


def test_cli_lora_option_reaches_the_report(tmp_path):
    import json

    from sailscope.cli import main

    tiny_pipeline().save_pretrained(tmp_path / "model")
    lora = _save_lora(tiny_pipeline(), tmp_path)
    rc = main(["generate", "--model", str(tmp_path / "model"), "--lora", f"{lora}:0.5", "--prompt", PROMPT,
               "--steps", "2", "--out", str(tmp_path / "out"), "--device", "cpu", "--dtype", "fp32"])
    assert rc == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [(x["name"], x["scale"]) for x in report["model"]["loras"]] == [(lora.stem, 0.5)]
    from sailscope.core.io.infotext import parse_png_text
    from sailscope.core.models import file_sha256

    from PIL import Image

    (png,) = (tmp_path / "out").glob("*.png")
    params = parse_png_text(Image.open(png).info["parameters"])  # A1111's format: "Lora hashes: name: <first 12 hex of sha256>"
    assert params["Lora hashes"] == f"{lora.stem}: {file_sha256(lora)[:12]}"


def test_a_kohya_format_lora_equals_its_hand_merged_weights(tmp_path):
    """An A1111/kohya-format file (``lora_unet_<module path with _>.lora_down/.lora_up/.alpha``, the layout
    sd-scripts writes) applied at scale s gives the same image as the base model with every targeted weight
    replaced by ``W + s * (alpha / rank) * up @ down``, merged here by hand."""
    from safetensors.torch import save_file

    rank, alpha, scale = 4, 2.0, 0.7
    base = tiny_pipeline()
    base.save_pretrained(tmp_path / "model")
    gen = torch.Generator().manual_seed(3)
    tensors, deltas = {}, {}
    for name, module in base.unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith((".to_q", ".to_k", ".to_v", ".to_out.0")):
            key = "lora_unet_" + name.replace(".", "_")
            down = torch.randn(rank, module.in_features, generator=gen) * 0.3
            up = torch.randn(module.out_features, rank, generator=gen) * 0.3
            tensors.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                            f"{key}.alpha": torch.tensor(alpha)})
            deltas[name] = scale * (alpha / rank) * up @ down
    assert len(deltas) >= 8
    lora = tmp_path / "kohya_style.safetensors"
    save_file(tensors, str(lora))

    merged = tiny_pipeline()
    with torch.no_grad():
        for name, module in merged.unet.named_modules():
            if name in deltas:
                module.weight += deltas[name]
    s = GenerationSettings(prompt=PROMPT, seed=2, steps=4, sharpness_at="none")
    on = load_pipeline(str(tmp_path / "model"), device="cpu", dtype="fp32", loras=[LoraSpec(str(lora), scale)])
    got, want = run_generation(on, s).array, run_generation(merged, s).array
    assert np.abs(got - want).max() <= 1e-5
    assert np.abs(got - run_generation(tiny_pipeline(), s).array).max() > 1e-3
