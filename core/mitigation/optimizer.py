"""The SAIL search, model-agnostic (any eps pair, the Gaussian oracles included).

A candidate is *accepted* when its loss is ``≤ threshold``, checked before each Adam step and once more
after the last one; an accepted candidate leaves the batch (it costs no further UNet evaluations), and with
``stop="first"`` an image stops searching at its first accepted candidate. When no candidate of an image
reaches the threshold within ``max_steps``, up to ``rounds - 1`` more rounds start from fresh noises; when
they fail too the result says so (``converged=False``) and returns the lowest-loss iterate of any round.

Two thresholds (``trigger`` and ``threshold``): at step 0 a start is also accepted, unchanged, when its loss
is ``≤ trigger`` (default: the calibrated q0.9 of non-memorized prompts, so typical prompts are left alone);
a start that is sharper than that is optimized down to ``threshold`` (default: the calibrated median, the
flatness of a typical non-memorized start). With one calibrated level for both, the search stopped as soon
as a copying start looked "not unusual" and most demo-model copies survived (docs/mitigation.md). The trigger
judges the prompt: a start under it is kept only if its mean loss with ``trigger_noises - 1`` probe noises is
under it too.

``sphere=True`` (default) makes every step a Riemannian one on the sphere ``‖z‖ = ‖z_0‖`` of the candidate's
own start: the gradient's tangent component goes to Adam and the update is retracted onto the sphere. A unit
Gaussian in ``d`` dimensions lives on the shell ``‖z‖ ≈ sqrt(d)``; large free Adam steps left it (RMS ≈ 1.3
after 20 steps at lr 0.1) and turned demo images into noise texture. On the sphere ``α ‖z‖²`` is a constant,
so α only offsets the loss there.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor

from sailscope.core.errors import Cancelled, NonFiniteError, UserInputError, cancel_requested
from sailscope.core.mitigation.objectives import (
    EpsPair, ObjectiveValue, _flat_norm, _per_sample, evaluate_objective, retract_to_sphere, tangent_component,
)
from sailscope.core.mitigation.settings import SailSettings

# (images without a converged candidate, round >= 1) -> (fresh candidates, image of each, seed of each)
Redraw = Callable[[list[int], int], "tuple[Tensor, list[int], list[int | None]]"]
# (images whose seed's start lies between threshold and trigger) -> (probe noises, image of each, seed of each)
Probe = Callable[[list[int]], "tuple[Tensor, list[int], list[int | None]]"]


@dataclass
class RowAdam:
    """``torch.optim.Adam`` (no weight decay, no amsgrad) applied to selected rows of one tensor."""

    shape: tuple[int, ...]
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    m: Tensor = field(init=False)
    v: Tensor = field(init=False)
    count: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.m = torch.zeros(self.shape, dtype=torch.float32)
        self.v = torch.zeros(self.shape, dtype=torch.float32)
        self.count = torch.zeros(self.shape[0], dtype=torch.int64)

    def grow(self, n: int) -> None:
        """Append ``n`` fresh rows (new candidates start with zero moments)."""
        self.m = torch.cat([self.m, self.m.new_zeros((n, *self.m.shape[1:]))])
        self.v = torch.cat([self.v, self.v.new_zeros((n, *self.v.shape[1:]))])
        self.count = torch.cat([self.count, self.count.new_zeros(n)])

    def step(self, z: Tensor, rows: Tensor, grad: Tensor) -> None:
        """Update ``z[rows]`` in place with gradients ``grad`` (one row per entry of ``rows``)."""
        b1, b2 = self.betas
        g = grad.to(torch.float32)
        self.count[rows] += 1
        k = self.count[rows].to(torch.float64)
        m = self.m[rows].mul_(b1).add_(g, alpha=1 - b1)
        v = self.v[rows].mul_(b2).addcmul_(g, g, value=1 - b2)
        self.m[rows], self.v[rows] = m, v
        bc1 = _per_sample((1 - b1**k).to(torch.float32), g)
        bc2 = _per_sample((1 - b2**k).sqrt().to(torch.float32), g)
        z[rows] -= self.lr * (m / bc1) / (v.sqrt() / bc2 + self.eps)


@dataclass
class SailStep:
    """One objective evaluation of the active candidates (step 0 = at the initial noises)."""

    step: int
    max_steps: int
    loss: list[float | None]  # per candidate (None: not evaluated at this step)
    sharpness: list[float | None]  # first term, same units as the objective
    prior: list[float | None]  # ‖z‖² (paper) or ‖z‖ (reference)
    accepted: list[int]  # candidates accepted at this step
    threshold: float
    elapsed: float
    unet_calls: int  # cumulative batched UNet calls so far
    round: int = 0  # 0 = the first candidates; r > 0 = the r-th re-draw (its candidates have new columns)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SailResult:
    """The chosen initial noise per image and how it was found.

    ``x_T`` is unit-variance (like :func:`~sailscope.core.sampling.initial_noise`), CPU fp32, one row per
    image. ``chosen[i]`` is a candidate index within image ``i`` (0 = the seed's own ``x_T``);
    ``steps[i]`` the Adam updates it received. ``unet_calls`` counts batched UNet calls (each evaluates cond
    and uncond for the active candidates), ``unet_rows`` the candidate-evaluations inside them.
    """

    x_T: Tensor
    converged: list[bool]
    chosen: list[int]
    steps: list[int]
    loss: list[float]
    initial_loss: list[float]
    trace: list[SailStep]
    threshold: float
    threshold_source: str
    objective: str
    alpha: float
    settings: SailSettings
    candidate_image: list[int]  # image index of each candidate (trace columns)
    candidate_seeds: list[int | None]  # None: the seed's stock x_T
    unet_calls: int
    unet_rows: int
    seconds: float
    warnings: list[str] = field(default_factory=list)
    delta: float | None = None  # paper objective's relative step (None for reference)
    alpha_source: str = "user setting"
    trigger: float | None = None  # starts with loss <= max(trigger, threshold) were kept unchanged
    trigger_source: str = "same as the threshold"
    chosen_round: list[int] = field(default_factory=list)  # per image: 0 = its first candidates, r = r-th re-draw
    # per image: the prompt's mean step-0 loss over its start and the probe noises (None: not needed), and
    # whether that mean overruled the trigger (the start was under it, the prompt was not: optimized)
    prompt_loss: list[float | None] = field(default_factory=list)
    trigger_overruled: list[bool] = field(default_factory=list)
    # every candidate row of the search (trace columns, all rounds): its final noise (the accepted iterate, else the
    # lowest-loss one), whether it was accepted, its loss, Adam steps and round (core.mitigation.picks ranks them)
    row_x_T: Tensor | None = None
    row_converged: list[bool] = field(default_factory=list)
    row_loss: list[float] = field(default_factory=list)
    row_steps: list[int] = field(default_factory=list)
    row_round: list[int] = field(default_factory=list)
    row_order: list[int] = field(default_factory=list)  # rows best first: accepted (round, step, row), then by loss

    @property
    def all_converged(self) -> bool:
        return all(self.converged)

    def report(self) -> dict:
        return {
            "objective": self.objective, "alpha": self.alpha, "alpha_source": self.alpha_source, "delta": self.delta,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source, "trigger": self.trigger, "trigger_source": self.trigger_source,
            "settings": self.settings.to_dict(),
            "converged": self.converged, "chosen": self.chosen, "chosen_round": self.chosen_round, "steps": self.steps,
            "loss": self.loss, "prompt_loss": self.prompt_loss, "trigger_overruled": self.trigger_overruled,
            "initial_loss": self.initial_loss, "candidate_image": self.candidate_image,
            "candidate_seeds": self.candidate_seeds, "unet_calls": self.unet_calls, "unet_rows": self.unet_rows,
            "seconds": self.seconds, "warnings": list(self.warnings), "trace": [s.to_dict() for s in self.trace],
        }


class _CountingEpsPair:
    """The eps pair, counting batched calls and candidate rows (the cost SAIL reports)."""

    def __init__(self, fn: EpsPair) -> None:
        self.fn, self.calls, self.rows = fn, 0, 0

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.calls += 1
        self.rows += x.shape[0]
        return self.fn(x)


def _per_row(v: Tensor, rows: list[int], n: int) -> list[float | None]:
    """Values of the evaluated ``rows`` spread over all ``n`` candidates (None where not evaluated)."""
    out: list[float | None] = [None] * n
    for j, r in enumerate(rows):
        out[r] = float(v[j])
    return out


@dataclass
class _Search:
    """The state of one SAIL search: every candidate row of every round and what became of it.

    Rows are candidates (round 0's first, each re-draw appended); ``image[r]`` is the image row ``r`` belongs to.
    ``z`` holds the current iterates (CPU fp32), ``best_*`` the lowest loss each row has seen, ``accepted_*`` the
    iterate at which a row reached its acceptance level.
    """

    z: Tensor
    radius: Tensor  # norm of each row's start: the sphere it stays on (settings.sphere)
    image: list[int]
    seed: list[int | None]
    round: list[int]
    best_z: Tensor
    best_loss: list[float]
    best_step: list[int]
    initial_loss: list[float]
    accepted_step: list[int]  # -1: not accepted
    accepted_z: dict[int, Tensor] = field(default_factory=dict)
    accepted_loss: dict[int, float] = field(default_factory=dict)

    @classmethod
    def start(cls, z0: Tensor, image: Sequence[int] | None, seeds: Sequence[int | None] | None) -> "_Search":
        z = z0.detach().to("cpu", torch.float32).clone()
        n = z.shape[0]
        image = list(image) if image is not None else [0] * n
        if len(image) != n:
            raise UserInputError(f"candidate_image has {len(image)} entries for {n} candidates")
        return cls(z=z, radius=_flat_norm(z), image=image, seed=list(seeds) if seeds is not None else [None] * n,
                   round=[0] * n, best_z=z.clone(), best_loss=[math.inf] * n, best_step=[0] * n,
                   initial_loss=[math.nan] * n, accepted_step=[-1] * n)

    @property
    def n_rows(self) -> int:
        return self.z.shape[0]

    @property
    def n_images(self) -> int:
        return max(self.image) + 1

    def rows_of(self, i: int) -> list[int]:
        return [r for r in range(self.n_rows) if self.image[r] == i]

    def converged(self, i: int) -> bool:
        return any(self.accepted_step[r] >= 0 for r in self.rows_of(i))

    def add(self, fresh: Tensor, image: Sequence[int], seeds: Sequence[int | None], round_: int) -> list[int]:
        """Append a round's fresh candidates; returns their row indices."""
        fresh = fresh.detach().to("cpu", torch.float32)
        n0, n = self.n_rows, fresh.shape[0]
        self.z, self.best_z = torch.cat([self.z, fresh]), torch.cat([self.best_z, fresh])
        self.radius = torch.cat([self.radius, _flat_norm(fresh)])
        self.image += list(image); self.seed += list(seeds); self.round += [round_] * n
        self.accepted_step += [-1] * n; self.best_loss += [math.inf] * n; self.best_step += [0] * n
        self.initial_loss += [math.nan] * n
        return list(range(n0, n0 + n))

    def record(self, r: int, step: int, loss: float, level: float) -> bool:
        """Note row ``r``'s loss at ``step``; accept it when ``loss <= level`` (returns whether it was)."""
        if step == 0:
            self.initial_loss[r] = loss
        if loss < self.best_loss[r]:  # NaN never wins
            self.best_loss[r], self.best_step[r] = loss, step
            self.best_z[r] = self.z[r]
        if loss <= level:
            self.accepted_step[r], self.accepted_z[r], self.accepted_loss[r] = step, self.z[r].clone(), loss
            return True
        return False

    def choose(self, i: int) -> tuple[int, bool]:
        """Image ``i``'s pick: its earliest accepted row (earliest round, then step, then index), else the row with
        the lowest loss seen in any round. Returns ``(row, converged)``."""
        rows = self.rows_of(i)
        accepted = [r for r in rows if self.accepted_step[r] >= 0]
        if accepted:
            return min(accepted, key=lambda r: (self.round[r], self.accepted_step[r], r)), True
        return min(rows, key=lambda r: (self.best_loss[r] if math.isfinite(self.best_loss[r]) else math.inf, r)), False


def iter_optimize(
    eps_pair: EpsPair,
    z0: Tensor,
    settings: SailSettings,
    *,
    sigma: float,
    threshold: float,
    alpha: float,
    scale: float = 1.0,
    candidate_image: Sequence[int] | None = None,
    candidate_seeds: Sequence[int | None] | None = None,
    threshold_source: str = "user setting",
    delta: float | None = None,
    alpha_source: str = "user setting",
    trigger: float | None = None,
    trigger_source: str = "same as the threshold",
    redraw: Redraw | None = None,
    probe: Probe | None = None,
    cancel: Callable[[], bool] | Any | None = None,
) -> Iterator[SailStep | SailResult]:
    """Run SAIL on candidates ``z0`` (K, ...); yields a :class:`SailStep` per evaluation, then the result.

    ``candidate_image[k]`` is the image candidate ``k`` belongs to (default: all image 0); the result has
    one row per image. ``eps_pair`` must accept any batch size (rows are independent). ``delta``: the
    paper objective's resolved relative step (default ``settings.delta_for(float32)``). ``trigger``: the
    resolved trigger (None = the threshold): an image's own start (its first row) is kept at step 0 when its
    loss is ``≤ max(trigger, threshold)``; every other candidate needs the threshold. ``redraw(images, round)``
    returns fresh candidates (and their seeds) for the images no candidate of which converged; without it there
    is one round whatever ``settings.rounds`` says.
    ``probe(images)`` returns ``trigger_noises - 1`` noises per image whose seed's start is under the trigger but
    above the threshold; the start is kept only if its mean loss with theirs is under the trigger too (without
    ``probe`` the seed's start alone decides).
    """
    start = time.perf_counter()
    delta = float(delta) if delta is not None else settings.delta_for(torch.float32)
    counted = _CountingEpsPair(eps_pair)
    search = _Search.start(z0, candidate_image, candidate_seeds)
    device = z0.device
    n_images = search.n_images
    first_row = [search.image.index(i) for i in range(n_images)]  # each image's own start (the seed's x_T)
    start_level = threshold if trigger is None else max(float(trigger), float(threshold))
    adam = RowAdam(tuple(search.z.shape), lr=float(settings.lr))
    trace: list[SailStep] = []
    prompt_loss: list[float | None] = [None] * n_images
    overruled = [False] * n_images

    def objective(z: Tensor) -> ObjectiveValue:
        return evaluate_objective(counted, z, settings, sigma=sigma, alpha=alpha, scale=scale, delta=delta)

    def start_levels(active: list[int], loss: Tensor) -> dict[int, float]:
        """Rows judged at the trigger instead of the threshold: each image's own start, when the prompt's mean loss
        over the start and the probe noises is under the trigger too."""
        levels = {r: start_level for r in active if r == first_row[search.image[r]]}
        if not (levels and probe is not None and settings.trigger_noises > 1 and start_level > threshold):
            return levels
        under = [search.image[r] for j, r in enumerate(active) if r in levels and threshold < float(loss[j]) <= start_level]
        if not under:
            return levels
        noises, noise_image, _ = probe(under)
        with torch.no_grad():
            probe_loss = objective(noises.to(device, torch.float32)).loss.detach().to("cpu", torch.float64)
        for i in under:
            values = [float(loss[active.index(first_row[i])])] + [float(v) for v, g in zip(probe_loss, noise_image) if g == i]
            prompt_loss[i] = sum(values) / len(values)
            if not prompt_loss[i] <= start_level:  # a NaN overrules too
                overruled[i] = True
                del levels[first_row[i]]
        return levels

    active = list(range(search.n_rows))
    for round_ in range(settings.rounds if redraw is not None else 1):
        # 1. A new round: fresh candidates for the images none of whose candidates converged
        if round_ > 0:
            failed = [i for i in range(n_images) if not search.converged(i)]
            if not failed:
                break
            active = search.add(*redraw(failed, round_), round_=round_)
            adam.grow(len(active))
        for step in range(settings.max_steps + 1):
            if cancel_requested(cancel):
                raise Cancelled(f"SAIL cancelled before step {step} of {settings.max_steps} (round {round_ + 1})")
            # 2. Evaluate the active candidates (with the graph when an Adam step follows)
            need_grad = step < settings.max_steps
            rows = torch.tensor(active, dtype=torch.long)
            zi = search.z[rows].to(device).requires_grad_(need_grad)
            with torch.set_grad_enabled(need_grad):
                val = objective(zi)
            loss = val.loss.detach().to("cpu", torch.float64)
            # 3. Accept: the threshold, or the trigger for a start whose prompt is not sharp (step 0 of round 0)
            levels = start_levels(active, loss) if step == 0 and round_ == 0 else {}
            newly = [r for j, r in enumerate(active) if search.record(r, step, float(loss[j]), levels.get(r, threshold))]
            if step == 0 and round_ == 0 and all(not math.isfinite(float(v)) for v in loss):
                raise NonFiniteError("SAIL objective is not finite at the initial noise (NaN/inf from the model)", step=0)
            trace.append(SailStep(
                step=step, max_steps=settings.max_steps, loss=_per_row(loss, active, search.n_rows),
                sharpness=_per_row(val.sharpness.detach().cpu(), active, search.n_rows),
                prior=_per_row(val.prior.detach().cpu(), active, search.n_rows), accepted=newly, threshold=threshold,
                elapsed=time.perf_counter() - start, unet_calls=counted.calls, round=round_,
            ))
            yield trace[-1]
            # 4. Step the candidates still searching (stop="first": an image stops at its first accepted one)
            keep = [j for j, r in enumerate(active) if search.accepted_step[r] < 0
                    and not (settings.stop == "first" and search.converged(search.image[r]))]
            if not need_grad or not keep:
                break
            _adam_step(search, adam, settings, val.loss, zi, rows, keep)
            active = [active[j] for j in keep]

    # 5. Choose per image
    x_T, converged, chosen, steps, losses, chosen_round, warnings = [], [], [], [], [], [], []
    for i in range(n_images):
        r, ok = search.choose(i)
        members = search.rows_of(i)
        x_T.append(search.accepted_z[r] if ok else search.best_z[r].clone())
        steps.append(search.accepted_step[r] if ok else search.best_step[r])
        losses.append(search.accepted_loss[r] if ok else search.best_loss[r])
        if not ok:
            warnings.append(
                f"SAIL did not reach the threshold {threshold:.4g} for image {i} within {settings.max_steps} steps "
                f"({len(members)} candidate(s) in {max(search.round[c] for c in members) + 1} round(s)); using the "
                f"lowest-loss noise found (loss {search.best_loss[r]:.4g}, candidate {members.index(r)}, "
                f"step {search.best_step[r]})"
            )
        converged.append(ok)
        chosen.append(members.index(r))
        chosen_round.append(search.round[r])
    rows = range(search.n_rows)
    ok_rows = sorted((r for r in rows if search.accepted_step[r] >= 0),
                     key=lambda r: (search.round[r], search.accepted_step[r], r))
    other = sorted((r for r in rows if search.accepted_step[r] < 0),
                   key=lambda r: (search.best_loss[r] if math.isfinite(search.best_loss[r]) else math.inf, r))
    yield SailResult(
        row_x_T=torch.stack([search.accepted_z[r] if search.accepted_step[r] >= 0 else search.best_z[r].clone()
                             for r in rows]),
        row_converged=[search.accepted_step[r] >= 0 for r in rows],
        row_loss=[search.accepted_loss[r] if search.accepted_step[r] >= 0 else search.best_loss[r] for r in rows],
        row_steps=[search.accepted_step[r] if search.accepted_step[r] >= 0 else search.best_step[r] for r in rows],
        row_round=list(search.round), row_order=ok_rows + other,
        x_T=torch.stack(x_T), converged=converged, chosen=chosen, steps=steps, loss=losses,
        initial_loss=[search.initial_loss[first_row[i]] for i in range(n_images)],
        trace=trace, threshold=threshold, threshold_source=threshold_source, objective=settings.objective,
        alpha=alpha, settings=settings, candidate_image=search.image, candidate_seeds=search.seed,
        unet_calls=counted.calls, unet_rows=counted.rows, seconds=time.perf_counter() - start, warnings=warnings,
        delta=delta if settings.objective == "paper" else None, alpha_source=alpha_source,
        trigger=trigger, trigger_source=trigger_source, chosen_round=chosen_round, prompt_loss=prompt_loss,
        trigger_overruled=overruled,
    )


def _adam_step(search: _Search, adam: RowAdam, settings: SailSettings, loss: Tensor, zi: Tensor, rows: Tensor,
               keep: list[int]) -> None:
    """One Adam step on rows ``rows[keep]`` of the search (``loss``/``zi``: the evaluation of ``rows``); on the sphere
    a Riemannian one: tangent gradient, Adam, retraction (the moments are not transported)."""
    keep_t = torch.tensor(keep, dtype=torch.long)
    lk = loss[keep_t.to(loss.device)]
    lk = torch.where(torch.isfinite(lk), lk, torch.zeros_like(lk))  # a NaN row must not poison the others
    (grad,) = torch.autograd.grad(lk.sum(), zi)
    moved = rows[keep_t]
    g = grad[keep_t.to(grad.device)].detach().to("cpu", torch.float32)
    if settings.sphere:
        g = tangent_component(g, search.z[moved])
    adam.step(search.z, moved, g)
    if settings.sphere:
        search.z[moved] = retract_to_sphere(search.z[moved], search.radius[moved])


def optimize(eps_pair: EpsPair, z0: Tensor, settings: SailSettings, **kwargs: Any) -> SailResult:
    """Consume :func:`iter_optimize` and return its :class:`SailResult`."""
    return final_result(iter_optimize(eps_pair, z0, settings, **kwargs))


def final_result(items: Iterable[Any]) -> SailResult:
    """The last item of a SAIL progress stream (always its :class:`SailResult`)."""
    result = None
    for result in items:
        pass
    assert isinstance(result, SailResult)
    return result
