"""User-facing errors: one clear line in the CLI/UI, never a traceback unless ``--debug``."""
from __future__ import annotations


class SailScopeError(Exception):
    """Base class of errors whose message is meant for the user as-is."""


class UserInputError(SailScopeError, ValueError):
    """A bad argument; the message names the argument and the allowed values."""


class ModelLoadError(SailScopeError):
    """The model could not be found, is corrupt, or needs the network while offline."""


class NonFiniteError(SailScopeError, FloatingPointError):
    """NaN/inf appeared in latents or a metric; the message names the step."""

    def __init__(self, message: str, step: int | None = None) -> None:
        super().__init__(message)
        self.step = step


class Cancelled(SailScopeError):
    """The user cancelled a run; finished results were kept."""


class UsageError(UserInputError):
    """An argument that parsed but does not fit this machine (``--device cuda`` without CUDA): exit status 2."""


def cancel_requested(cancel) -> bool:
    """Whether a run's cancel signal is set: a ``threading.Event``, a ``() -> bool`` callable, or ``None``."""
    if cancel is None:
        return False
    return cancel.is_set() if hasattr(cancel, "is_set") else bool(cancel())
