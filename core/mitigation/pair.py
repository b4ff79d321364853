"""A mitigation pair: the original run (seed's ``x_T``, prompt as given) and the mitigated one (SAIL's ``x_T``, or
RTA's prompt), everything else identical."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from sailscope.core.errors import UserInputError
from sailscope.core.mitigation.pipeline import iter_sail
from sailscope.core.mitigation.rta import RtaSettings, iter_rta
from sailscope.core.mitigation.settings import SailSettings
from sailscope.core.sampling import GenerationResult, generate


@dataclass
class PairResult:
    """Both runs of one mitigation pair, everything else identical.

    ``mitigation`` is the :class:`SailResult` (or :class:`~sailscope.core.mitigation.rta.RtaResult`);
    ``mitigated_seconds`` = mitigation time + the mitigated run's sampling time (the cost the user waits for).
    """

    original: Any  # GenerationResult
    mitigated: Any  # GenerationResult
    mitigation: Any  # SailResult | RtaResult
    method: str

    @property
    def mitigated_seconds(self) -> float:
        return float(self.mitigation.seconds) + float(self.mitigated.seconds)

    def report(self) -> dict:
        return {
            "method": self.method, "mitigation": self.mitigation.report(),
            "original": self.original.report(), "mitigated": self.mitigated.report(),
            "original_seconds": self.original.seconds, "mitigated_seconds": self.mitigated_seconds,
        }


def generate_pair(
    pipe: Any,
    settings: Any,
    mitigation: Any,
    *,
    probes: Sequence[Any] = (),
    cancel: Callable[[], bool] | Any | None = None,
    run_original: bool = True,
) -> Iterator[Any]:
    """Stream a mitigation pair: mitigation progress, then both runs' step records, then a :class:`PairResult`.

    Yields, in order: :class:`SailStep` items and the :class:`SailResult` (SAIL) or the
    :class:`~sailscope.core.mitigation.rta.RtaResult` (RTA); the original run's ``StepRecord`` s (``run="original"``)
    and its ``GenerationResult``; the mitigated run's (``run="sail"`` or ``"rta"``); finally the
    :class:`PairResult`. ``mitigation`` is a :class:`SailSettings` or :class:`~sailscope.core.mitigation.rta.RtaSettings`.
    """
    # 1. Mitigation plan: a new x_T (SAIL) or new settings (RTA)
    if isinstance(mitigation, SailSettings):
        method, result = "sail", None
        for item in iter_sail(pipe, settings, mitigation, cancel=cancel):
            yield item
            result = item
        x_T, mitigated_settings = result.x_T, settings
    elif isinstance(mitigation, RtaSettings):
        method, result = "rta", None
        for item in iter_rta(pipe, settings, mitigation):
            yield item
            result = item
        x_T, mitigated_settings = None, result.settings
    else:
        raise UserInputError(f"mitigation must be SailSettings or RtaSettings, got {type(mitigation).__name__}")
    # 2. Original run (the seed's x_T)
    original = None
    if run_original:
        for item in generate(pipe, settings, probes=probes, cancel=cancel, run="original"):
            yield item
            if isinstance(item, GenerationResult):
                original = item
    # 3. Mitigated run
    mitigated = None
    for item in generate(pipe, mitigated_settings, x_T=x_T, probes=probes, cancel=cancel, run=method):
        yield item
        if isinstance(item, GenerationResult):
            mitigated = item
    if mitigated is not None:
        mitigated.warnings = list(result.warnings) + list(mitigated.warnings)
    yield PairResult(original=original, mitigated=mitigated, mitigation=result, method=method)


def run_pair(pipe: Any, settings: Any, mitigation: Any, **kwargs: Any) -> PairResult:
    """Consume :func:`generate_pair` and return the :class:`PairResult`."""
    pair = None
    for item in generate_pair(pipe, settings, mitigation, **kwargs):
        if isinstance(item, PairResult):
            pair = item
    assert pair is not None
    return pair
