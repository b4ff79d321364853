"""Gradients through a UNet as each host holds it (core/autograd.py), against the stock diffusers UNet.

The host-shaped UNets come from tests/hosts/denoisers.py: ComfyUI's and Forge's weights loaded under
``torch.inference_mode()``, Forge's transformer blocks with in-place residuals, A1111's trainable weights with
its Lora extension's in-place weight restore. Each trap is first shown to break plain autograd, then the
gradient (reverse mode, SAIL) and the JVP (forward mode, exact sharpness) through it must equal those of the
stock UNet, with the host's weights untouched.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from sailscope.core import autograd
from sailscope.core.autograd import as_constant, gradients_through_host_model

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "hosts"))
from denoisers import a1111_lora_networks, host_loaded_unet, mark_lora_change  # noqa: E402
from fixtures import tiny  # noqa: E402

HOSTS = {
    "comfyui": dict(inference=True),
    "forge": dict(inference=True, forge_blocks=True),
    "forge-blocks-only": dict(inference=False, forge_blocks=True),
    "a1111": dict(inference=False),
}
TRAPS = {
    "comfyui": "Inference tensors cannot be saved for backward",
    "forge": "Inference tensors cannot be saved for backward",
    "forge-blocks-only": "modified by an inplace operation",
    "a1111": "a leaf Variable that requires grad is being used in an in-place operation",
}


def host_unet(name):
    pipe, _ = tiny()
    unet = host_loaded_unet(pipe.unet, **HOSTS[name])
    if name == "a1111":
        a1111_lora_networks(unet)
        mark_lora_change(unet)
    return unet


def inputs():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 8, generator=g)
    ctx = torch.randn(2, 77, 32, generator=g)
    return x, torch.tensor([999.0, 999.0]), ctx


def eps(unet, x, t, ctx):
    return unet(x, t, encoder_hidden_states=ctx, return_dict=False)[0]


def grad_of_sq_norm(unet, x, t, ctx):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(eps(unet, x, t, ctx).square().sum(), x)
    return g


@pytest.mark.parametrize("name", list(HOSTS))
def test_each_host_trap_breaks_plain_autograd(name):
    unet = host_unet(name)
    x, t, ctx = inputs()
    with torch.inference_mode(False), torch.enable_grad():
        with pytest.raises(RuntimeError, match=TRAPS[name]):
            grad_of_sq_norm(unet, x, t, ctx)


@pytest.mark.parametrize("offload", [False, True])
@pytest.mark.parametrize("name", list(HOSTS))
def test_gradient_and_jvp_equal_the_stock_unet(name, offload, monkeypatch):
    offloaded = count_offloads(monkeypatch)
    pipe, _ = tiny()
    unet = host_unet(name)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    x, t, ctx = inputs()
    with torch.inference_mode():  # the host's context around its nodes / scripts
        with gradients_through_host_model(offload=offload):  # offload: activations copied out and back
            got = grad_of_sq_norm(unet, x, t, ctx)
    want = grad_of_sq_norm(pipe.unet, x, t, ctx)
    # offloaded activations come back contiguous, so some kernels sum in another order: float32 rounding only
    assert float((got - want).norm() / want.norm()) <= 1e-6
    assert (offloaded[0] > 50) == offload  # every activation of the tiny UNet went out and came back
    v = torch.randn_like(x)
    with sdpa_kernel(SDPBackend.MATH):
        with gradients_through_host_model():
            _, jvp_got = torch.func.jvp(lambda z: eps(unet, z, t, ctx), (x,), (v,))
        _, jvp_want = torch.func.jvp(lambda z: eps(pipe.unet, z, t, ctx), (x,), (v,))
    assert torch.allclose(jvp_got, jvp_want, rtol=1e-5, atol=1e-6), float((jvp_got - jvp_want).abs().max())
    # the host's weights: same values, same kind (inference or not), no gradient buffers
    assert all(torch.equal(before[k], w) for k, w in unet.state_dict().items())
    assert all(w.grad is None and w.is_inference() == HOSTS[name]["inference"] for w in unet.parameters())


def test_constants_share_storage_with_the_weights():
    """No weight is copied: the constant views the weight's own memory."""
    with torch.inference_mode():
        w_inf = torch.nn.Parameter(torch.randn(3, 3), requires_grad=False)
    w_trainable = torch.nn.Parameter(torch.randn(3, 3))
    z = torch.randn(3, requires_grad=True)
    for w in (w_inf, w_trainable):
        c = as_constant(w)
        assert c.data_ptr() == w.data_ptr() and not c.is_inference() and not c.requires_grad
    assert as_constant(z) is z  # what SAIL differentiates by stays in the graph


def in_place_forms(x):
    """Every in-place form the bridge must keep exact, each on a tensor autograd saved just before."""
    a = x * 1.5
    n = torch.nn.functional.layer_norm(a, a.shape[-1:])  # saves a
    a += n  # Tensor.__iadd__
    b = torch.sigmoid(a)  # saves its output b
    b.mul_(2.0)  # method form
    c = torch.tanh(b)
    c[..., :2] = 0.5 * c[..., :2].clone()  # __setitem__ into a saved output
    d = torch.exp(c)  # saves d
    torch.nn.functional.silu(d, inplace=True)  # functional inplace=True
    e = torch.cos(d)  # saves d
    d.copy_(3.0 * d)  # copy_
    return (e * d).sum()


def in_place_reference(x):
    a = x * 1.5
    a = a + torch.nn.functional.layer_norm(a, a.shape[-1:])
    b = torch.sigmoid(a) * 2.0
    c = torch.tanh(b)
    c = torch.cat([0.5 * c[..., :2], c[..., 2:]], dim=-1)
    d = torch.nn.functional.silu(torch.exp(c))
    return (torch.cos(d) * (3.0 * d)).sum()


def count_offloads(monkeypatch) -> list[int]:
    """Offload every saved activation, however small and wherever it lies (CPU here), and count them."""
    count = [0]
    real = autograd._Offloaded

    class Counted(real):
        __slots__ = ()

        def __init__(self, t):
            count[0] += 1
            super().__init__(t)

    monkeypatch.setattr(autograd, "_worth_offloading", lambda t: t.layout == torch.strided)
    monkeypatch.setattr(autograd, "_Offloaded", Counted)
    return count


def test_in_place_writes_on_saved_tensors_keep_their_semantics(monkeypatch):
    offloaded = count_offloads(monkeypatch)
    x = torch.randn(4, 6, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(in_place_reference(xr), xr)
    with torch.inference_mode(False), torch.enable_grad():
        with pytest.raises(RuntimeError, match="inplace operation"):
            xs = x.clone().requires_grad_(True)
            torch.autograd.grad(in_place_forms(xs), xs)
    for offload in (False, True):
        with gradients_through_host_model(offload=offload):
            xg = x.clone().requires_grad_(True)
            value = in_place_forms(xg)
            (got,) = torch.autograd.grad(value, xg)
        assert float(value) == pytest.approx(float(in_place_reference(x)), rel=1e-12)
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
        assert (offloaded[0] > 0) == offload


def test_unaliasable_inference_weights_get_cause_and_fix():
    """A weight type the bridge must not alias (a tensor subclass, like quantized weights) fails with a line
    that names the cause and the fix."""
    from sailscope.extension.common import explain_autograd_error

    class QuantizedWeight(torch.Tensor):
        pass

    with torch.inference_mode():
        w = torch.Tensor._make_subclass(QuantizedWeight, torch.randn(3, 3))
    with gradients_through_host_model():
        x = torch.randn(2, 3, requires_grad=True)
        with pytest.raises(RuntimeError) as info:
            torch.autograd.grad((x @ w).square().sum(), x)
    msg = str(explain_autograd_error(info.value))
    assert "quantized" in msg and "Fix:" in msg and "unquantized" in msg


def test_an_activation_saved_by_several_ops_is_offloaded_once(monkeypatch):
    offloaded = count_offloads(monkeypatch)
    with gradients_through_host_model(offload=True):
        x = torch.randn(8, dtype=torch.float64, requires_grad=True)
        y = x.exp()  # saves its output y
        (g,) = torch.autograd.grad((y * y).sum(), x)  # mul saves y twice more: the same copy
    assert offloaded[0] == 1
    assert torch.allclose(g, 2 * x.detach().exp() ** 2)
