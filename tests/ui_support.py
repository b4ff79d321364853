"""Helpers the app's handler tests share (their fixtures ``pipe`` and ``ctx`` live in conftest.py)."""
from __future__ import annotations

from types import SimpleNamespace


def request(session: str):
    """What gradio passes a handler as ``request``: only the session id matters to the app."""
    return SimpleNamespace(session_hash=session)


def last(gen):
    """The final item of a handler's stream."""
    out = None
    for out in gen:
        pass
    return out
