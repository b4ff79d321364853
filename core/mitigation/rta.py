"""Random Token Addition (RTA), the simplest prompt-editing mitigation (Somepalli et al., 2023b).

Baseline for SAIL behind the same interface (:func:`sailscope.core.mitigation.generate_pair`): RTA leaves the
initial noise alone and changes the prompt, inserting ``tokens`` random vocabulary words at random word
positions. ``kind="number"`` is their Random Number Addition variant (random integers in ``[0, 10^6)``).
Draws are deterministic for (generation seed, ``salt``). Prompt-editing mitigations trade prompt fidelity
for less copying; SAIL keeps the prompt.
"""
from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import Any, Iterator, Literal

import numpy as np

from sailscope.core.errors import UserInputError

KINDS = ("token", "number")
_WORD = re.compile(r"^[a-z]+$")


@dataclass(frozen=True, kw_only=True)
class RtaSettings:
    """``tokens`` words (or numbers) inserted at random positions; ``salt`` changes the draw."""

    tokens: int = 4
    kind: Literal["token", "number"] = "token"
    salt: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.tokens, bool) or not isinstance(self.tokens, int) or not 1 <= self.tokens <= 32:
            raise UserInputError(f"rta tokens must be an integer in [1, 32], got {self.tokens!r}")
        if self.kind not in KINDS:
            raise UserInputError(f"rta kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if isinstance(self.salt, bool) or not isinstance(self.salt, int) or self.salt < 0:
            raise UserInputError(f"rta salt must be an integer >= 0, got {self.salt!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RtaResult:
    """The edited prompt and the generation settings of the mitigated run (only the prompt differs)."""

    original_prompt: str
    prompt: str
    added: list[str]
    settings: Any  # GenerationSettings of the mitigated run
    rta: RtaSettings
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def report(self) -> dict:
        return {"method": "rta", "original_prompt": self.original_prompt, "prompt": self.prompt,
                "added": list(self.added), "rta": self.rta.to_dict(), "seconds": self.seconds,
                "warnings": list(self.warnings)}


@lru_cache(maxsize=8)
def _word_vocab(vocab_items: tuple[str, ...]) -> tuple[str, ...]:
    words = sorted({t[:-4] for t in vocab_items if t.endswith("</w>") and _WORD.match(t[:-4])})
    return tuple(words)


def vocabulary_words(tokenizer: Any) -> tuple[str, ...]:
    """Whole lowercase words of a CLIP BPE vocabulary (entries ending in ``</w>``), sorted."""
    words = _word_vocab(tuple(tokenizer.get_vocab().keys()))
    if not words:
        raise UserInputError("the tokenizer has no whole-word vocabulary entries for random token addition")
    return words


def add_random_tokens(prompt: str, words: tuple[str, ...], rta: RtaSettings, seed: int) -> tuple[str, list[str]]:
    """Insert ``rta.tokens`` draws into ``prompt`` at random word positions; returns (prompt, added)."""
    rng = np.random.default_rng([int(seed), int(rta.salt), 0x47A])
    out = prompt.split()
    added = []
    for _ in range(rta.tokens):
        item = str(rng.integers(0, 10**6)) if rta.kind == "number" else words[int(rng.integers(0, len(words)))]
        out.insert(int(rng.integers(0, len(out) + 1)), item)
        added.append(item)
    return " ".join(out), added


def iter_rta(pipe: Any, settings: Any, rta: RtaSettings) -> Iterator[RtaResult]:
    """Yield the :class:`RtaResult` for these generation settings (a generator, like ``iter_sail``)."""
    start = time.perf_counter()
    if not isinstance(rta, RtaSettings):
        raise UserInputError(f"rta must be RtaSettings, got {type(rta).__name__}")
    words = vocabulary_words(pipe.tokenizer) if rta.kind == "token" else ()
    prompt, added = add_random_tokens(settings.prompt, words, rta, settings.seed)
    warnings = []
    n = len(pipe.tokenizer(prompt, truncation=False).input_ids)
    if n > pipe.tokenizer.model_max_length:
        warnings.append(f"RTA prompt is {n} tokens; words past {pipe.tokenizer.model_max_length} are ignored")
    yield RtaResult(original_prompt=settings.prompt, prompt=prompt, added=added,
                    settings=replace(settings, prompt=prompt), rta=rta, seconds=time.perf_counter() - start,
                    warnings=warnings)


__all__ = ["RtaSettings", "RtaResult", "add_random_tokens", "vocabulary_words", "iter_rta", "KINDS"]
