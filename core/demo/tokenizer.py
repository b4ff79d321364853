"""Stable Diffusion's CLIP tokenizer, offline: from the vocabulary shipped with the demo model, or rebuilt from the
BPE file in the open-clip-torch wheel.

By default the vocabulary and merges come from ``assets/models/demo/tokenizer`` (``vocab.json``, ``merges.txt``),
which were written by this module from open-clip-torch's BPE file; so training the demo model needs no open-clip-torch
(which would pull in timm and torchvision). ``bpe_path`` rebuilds them from a BPE file instead; the construction
is CLIP's own (``simple_tokenizer.py``): the 256 byte-level symbols, the same with
``</w>``, one token per merge (48,894 merges), then ``<|startoftext|>`` and ``<|endoftext|>``: 49,408
tokens, identical ids to ``openai/clip-vit-large-patch14``'s ``vocab.json``.
"""
from __future__ import annotations

import gzip
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

MODEL_MAX_LENGTH = 77
N_MERGES = 49152 - 256 - 2
SHIPPED_TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "assets" / "models" / "demo" / "tokenizer"


@lru_cache()
def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2 reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def default_bpe_path() -> Path:
    """``open_clip/bpe_simple_vocab_16e6.txt.gz`` inside the installed open-clip-torch package."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("open-clip-torch is not installed: pip install open-clip-torch (its BPE file is needed)")
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        raise FileNotFoundError(f"BPE vocabulary not found at {path}")
    return path


def shipped_vocab_and_merges(folder: str | os.PathLike = SHIPPED_TOKENIZER_DIR) -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary and merges as shipped with the demo model (HF ``vocab.json``/``merges.txt``)."""
    folder = Path(folder)
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
    merges = [line for line in lines[1:] if line]  # line 0: "#version: 0.2"
    if len(vocab) != N_MERGES + 514 or len(merges) != N_MERGES:
        raise ValueError(f"{folder} does not hold CLIP's tokenizer ({len(vocab)} tokens, {len(merges)} merges)")
    return vocab, merges


def vocab_and_merges(bpe_path: str | os.PathLike | None = None) -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary (token -> id) and merge list: the shipped files, or derived from a gzipped BPE file
    (``default_bpe_path()`` is open-clip-torch's)."""
    if bpe_path is None:
        return shipped_vocab_and_merges()
    bpe_path = Path(bpe_path)
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def write_tokenizer_files(out_dir: str | os.PathLike, bpe_path: str | os.PathLike | None = None) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` (HF format) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab, merges = vocab_and_merges(bpe_path)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return out_dir


def build_clip_tokenizer(bpe_path: str | os.PathLike | None = None):
    """A ``transformers.CLIPTokenizer`` equal to SD 1.x's (pad = ``<|endoftext|>``, max length 77)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(tmp, bpe_path)
        return CLIPTokenizer(
            os.path.join(tmp, "vocab.json"),
            os.path.join(tmp, "merges.txt"),
            unk_token="<|endoftext|>",
            bos_token="<|startoftext|>",
            eos_token="<|endoftext|>",
            pad_token="<|endoftext|>",
            model_max_length=MODEL_MAX_LENGTH,
        )


def save_tokenizer(out_dir: str | os.PathLike, bpe_path: str | os.PathLike | None = None) -> Path:
    """Save a loadable tokenizer folder (``CLIPTokenizer.from_pretrained(out_dir)``)."""
    tok = build_clip_tokenizer(bpe_path)
    tok.save_pretrained(str(out_dir))
    return Path(out_dir)
