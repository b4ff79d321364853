"""Gradients through a model as a host loaded it: weights made under ``torch.inference_mode()``, weights left
trainable and restored in place, forward code with in-place residual adds (``x += n``).

SAIL differentiates the guided score with respect to the initial noise only; the weights are constants. Three
things in the hosts stop reverse-mode autograd all the same (`docs/extension.md`, "Autograd in hosts"):

* **Inference tensors.** ComfyUI runs every prompt under ``torch.inference_mode()`` and Forge's loaders are
  decorated with it, so the weights (and LoRA-patched weights) are inference tensors, which autograd refuses
  to save for backward even when no gradient flows into them.
* **In-place residuals.** Forge's transformer block does ``n = norm1(x); ...; x += n``: the add overwrites a
  tensor that ``norm1`` saved for backward.
* **Trainable weights.** A1111 leaves the UNet's weights ``requires_grad=True`` and its LoRA code restores
  weights with ``weight.copy_(backup)`` on the first forward after a LoRA change, which autograd refuses on
  such a leaf (and a backward would build a gradient the size of the UNet).

:func:`gradients_through_host_model` handles all three for the ops run inside it, without touching the model
and without copying the weights:

1. a ``TorchFunctionMode`` hands every op a constant sharing storage with each inference-tensor or weight
   argument (:func:`as_constant`);
2. saved-tensor hooks keep every tensor autograd saves in a box, and the mode, just before an op writes into
   a storage in place, replaces the boxed tensors on that storage by clones (copy-on-write). The host's
   in-place code keeps its exact semantics; only tensors that are saved *and* then overwritten are copied.

``offload=True`` (hosts' "SAIL low memory") moves each saved activation of an accelerator to CPU memory when
it is saved and back when backward needs it (on a CPU-only machine it changes nothing): the GPU then holds about one forward's working set instead of every activation
of the objective's UNet calls (measured in docs/extension.md), at the price of the transfers. Weights are
never moved. An offloaded activation is a copy, so the host's later in-place writes cannot reach it.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Iterator

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map_only

_PLAIN_TENSOR_TYPES = (Tensor, torch.nn.Parameter)
_CONSTANT = "_sailscope_constant"  # set on the constants as_constant makes: never offloaded
_OFFLOAD_MIN_BYTES = 1 << 16  # smaller saved tensors stay where they are
_PRUNE_EVERY = 4096  # saved tensors between sweeps of the registry's dead entries


def as_constant(t: Tensor) -> Tensor:
    """``t`` as a constant that autograd can save: zero-copy, same storage, same values.

    * an inference tensor -> a normal tensor viewing its storage;
    * a weight (``nn.Parameter``) that requires grad -> ``t.detach()``, so no weight gradient is built and the
      host's own in-place weight updates stay legal under autograd;
    * anything else, including the tensor SAIL differentiates by, as it is.

    Tensor subclasses (quantized or offloaded weight types of some hosts) are left alone: their storage is
    not theirs to alias.
    """
    if type(t) not in _PLAIN_TENSOR_TYPES or t.layout != torch.strided:
        return t
    if t.is_inference():
        constant = torch.empty(0, dtype=t.dtype, device=t.device)
        constant.set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())
    elif isinstance(t, torch.nn.Parameter) and t.requires_grad:
        constant = t.detach()
    else:
        return t
    setattr(constant, _CONSTANT, True)
    return constant


def _is_weight(t: Tensor) -> bool:
    return isinstance(t, torch.nn.Parameter) or getattr(t, _CONSTANT, False)


def written_in_place(func, args: tuple, kwargs: dict) -> list[Tensor]:
    """The tensors an op overwrites: ``x.add_(y)``/``x += y`` (the method's ``self``), ``x[i] = y``,
    ``F.silu(x, inplace=True)``, ``torch.add(a, b, out=x)``."""
    name = getattr(func, "__name__", "")
    written = []
    if (name.endswith("_") and not name.endswith("__")) or name == "__setitem__" or kwargs.get("inplace") is True:
        if args and isinstance(args[0], Tensor):
            written.append(args[0])
    out = kwargs.get("out")
    written += [out] if isinstance(out, Tensor) else [o for o in (out or ()) if isinstance(o, Tensor)]
    return written


class _Saved:
    """What autograd keeps for backward: the tensor, or its copy once the original is about to be overwritten."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor

    def get(self) -> Tensor:
        return self.tensor


class _Offloaded:
    """A saved activation copied to (pinned) CPU memory; back on its device when backward asks."""

    __slots__ = ("cpu", "device", "__weakref__")

    def __init__(self, t: Tensor) -> None:
        pin = t.device.type == "cuda"
        self.cpu = torch.empty(t.size(), dtype=t.dtype, pin_memory=pin)
        self.cpu.copy_(t, non_blocking=pin)
        self.device = t.device

    def get(self) -> Tensor:
        return self.cpu.to(self.device, non_blocking=self.device.type == "cuda")


def _worth_offloading(t: Tensor) -> bool:
    """An activation on an accelerator, big enough for the move to pay (on the CPU it would only be copied)."""
    return t.device.type != "cpu" and t.layout == torch.strided and t.numel() * t.element_size() >= _OFFLOAD_MIN_BYTES


def _storage_key(t: Tensor) -> int:
    return t.untyped_storage().data_ptr()


class _HostModelBridge(TorchFunctionMode):
    """Weights as zero-copy constants; copy-on-write for saved tensors that the host overwrites in place."""

    def __init__(self, offload: bool = False) -> None:
        super().__init__()
        self.offload = offload
        self._saved: dict[int, list[weakref.ref]] = {}
        self._offloaded: dict[int, tuple[weakref.ref, int, weakref.ref]] = {}  # id -> (tensor, version, copy)
        self._packed = 0

    def pack(self, t: Tensor) -> _Saved | _Offloaded:
        self._packed += 1
        if self._packed % _PRUNE_EVERY == 0:
            self._saved = {k: alive for k, refs in self._saved.items() if (alive := [r for r in refs if r() is not None])}
            self._offloaded = {k: e for k, e in self._offloaded.items() if e[0]() is not None and e[2]() is not None}
        if self.offload and not _is_weight(t) and _worth_offloading(t):
            return self._offload(t)
        box = _Saved(t)
        self._saved.setdefault(_storage_key(t), []).append(weakref.ref(box))
        return box

    def _offload(self, t: Tensor) -> _Offloaded:
        """One CPU copy per tensor and version, however many ops save it."""
        entry = self._offloaded.get(id(t))
        if entry is not None and entry[0]() is t and entry[1] == t._version and (copy := entry[2]()) is not None:
            return copy
        copy = _Offloaded(t)
        self._offloaded[id(t)] = (weakref.ref(t), t._version, weakref.ref(copy))
        return copy

    @staticmethod
    def unpack(box: _Saved | _Offloaded) -> Tensor:
        return box.get()

    def _copy_before_write(self, t: Tensor) -> None:
        for ref in self._saved.pop(_storage_key(t), ()):
            box = ref()
            if box is not None:
                box.tensor = box.tensor.clone()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        args, kwargs = tree_map_only(Tensor, as_constant, (args, kwargs))
        if self._saved:
            for t in written_in_place(func, args, kwargs):
                self._copy_before_write(t)
        return func(*args, **kwargs)


@contextlib.contextmanager
def gradients_through_host_model(*, offload: bool = False) -> Iterator[None]:
    """Autograd on, inference mode off, and the bridge above for every op run inside (``offload``: saved
    activations in CPU memory, see the module docstring).

    Inputs made by the host inside inference mode (latents, conditionings) are aliased like the weights. The
    host's weights never receive ``.grad`` and are never written by SAIL Scope.
    """
    bridge = _HostModelBridge(offload=offload)
    with torch.inference_mode(False), torch.enable_grad(), bridge, \
            torch.autograd.graph.saved_tensors_hooks(bridge.pack, bridge.unpack):
        yield
