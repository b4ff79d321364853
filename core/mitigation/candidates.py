"""SAIL's candidate noises: seeded, reproducible from ``(seed, k, salt)``, and never two alike."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from sailscope.core.mitigation.settings import SailSettings


def candidate_seed(seed: int, k: int, salt: int = 0) -> int:
    """The torch seed of extra candidate ``k >= 1`` of the image with ``seed`` (never ``seed + j``-style)."""
    state = np.random.SeedSequence([int(seed), int(salt), int(k), 0x5A11]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) % (2**63 - 1)


PROBE_SALT = 104_729  # probe noises' seed salt: apart from every round's (candidate_seed + 7919 r, r <= 16)


class CandidateDraws:
    """Distinct candidate noises of every image and round (no two candidates are ever equal, across images and
    rounds: a draw equal to an earlier one is redrawn with the next salt).

    ``stock`` is ``(N, C, H, W)`` (one row per image, seeds ``seeds``). Round 0 (:meth:`first`): row 0 of each image
    is its stock ``x_T``, then ``candidates - 1`` draws seeded by ``(seed, k, candidate_seed)``; round ``r``
    (:meth:`redraw`): ``candidates`` draws per image seeded by ``(seed, k, candidate_seed + r·7919)``; the trigger's
    prompt check (:meth:`probe`): ``trigger_noises - 1`` draws seeded by ``(seed, k, candidate_seed + PROBE_SALT)``.
    """

    def __init__(self, stock: Tensor, seeds: Sequence[int], settings: SailSettings) -> None:
        self.stock = stock.detach().to("cpu", torch.float32)
        self.seeds, self.settings = list(seeds), settings
        self.seen = {self._key(self.stock[i]) for i in range(self.stock.shape[0])}

    @staticmethod
    def _key(t: Tensor) -> bytes:
        return t.contiguous().numpy().tobytes()

    def _draw(self, image: int, k: int, salt: int) -> tuple[Tensor, int]:
        while True:
            s = candidate_seed(self.seeds[image], k, salt)
            g = torch.Generator("cpu").manual_seed(s)
            t = randn_tensor(tuple(self.stock.shape[1:]), generator=g, device=torch.device("cpu"), dtype=torch.float32)
            if self._key(t) not in self.seen:
                self.seen.add(self._key(t))
                return t, s
            salt += 1_000_003

    def first(self) -> tuple[Tensor, list[int], list[int | None]]:
        """Round 0: ``(z0, image_of_row, seed_of_row)``; seed ``None`` marks a stock ``x_T``."""
        rows, groups, seeds = [], [], []
        for i in range(self.stock.shape[0]):
            rows.append(self.stock[i]); groups.append(i); seeds.append(None)
            for k in range(1, self.settings.candidates):
                t, s = self._draw(i, k, self.settings.candidate_seed)
                rows.append(t); groups.append(i); seeds.append(s)
        return torch.stack(rows), groups, seeds

    def probe(self, images: Sequence[int]) -> tuple[Tensor, list[int], list[int | None]]:
        """``trigger_noises - 1`` noises per image for the trigger's prompt check (the :data:`Probe` contract)."""
        rows, groups, seeds = [], [], []
        for i in images:
            for k in range(1, self.settings.trigger_noises):
                t, s = self._draw(i, k, self.settings.candidate_seed + PROBE_SALT)
                rows.append(t); groups.append(i); seeds.append(s)
        return torch.stack(rows), groups, seeds

    def redraw(self, images: Sequence[int], round_: int) -> tuple[Tensor, list[int], list[int | None]]:
        """Round ``round_ >= 1``: fresh candidates for ``images`` (the :data:`Redraw` contract)."""
        rows, groups, seeds = [], [], []
        for i in images:
            for k in range(1, self.settings.candidates + 1):
                t, s = self._draw(i, k, self.settings.candidate_seed + 7919 * round_)
                rows.append(t); groups.append(i); seeds.append(s)
        return torch.stack(rows), groups, seeds


def draw_candidates(stock: Tensor, seeds: Sequence[int],
                    settings: SailSettings) -> tuple[Tensor, list[int], list[int | None]]:
    """Round 0's candidates for every image (:meth:`CandidateDraws.first`): ``(z0, image_of_row, seed_of_row)``."""
    return CandidateDraws(stock, seeds, settings).first()
