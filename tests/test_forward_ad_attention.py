"""Exact JVPs use attention written out (core.metrics.explicit_attention): it must equal torch's own
scaled_dot_product_attention, its forward-mode derivative must equal finite differences, and a half-precision UNet's
JVP must stay in half precision (on an H200 the CUDA MATH kernel's derivative mixed fp32 into fp16 and failed)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sailscope.core.metrics import explicit_attention, forward_ad_attention, jvp


@pytest.mark.parametrize("case", ["plain", "bool_mask", "float_mask", "causal", "scale"])
def test_explicit_attention_equals_torch_sdpa(case):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g, dtype=torch.float64) for _ in range(3))
    kw = {}
    if case == "bool_mask":
        kw["attn_mask"] = torch.rand(7, 7, generator=g) > 0.3
        kw["attn_mask"][:, 0] = True
    elif case == "float_mask":
        kw["attn_mask"] = torch.randn(7, 7, generator=g, dtype=torch.float64)
    elif case == "causal":
        kw["is_causal"] = True
    elif case == "scale":
        kw["scale"] = 0.3
    assert torch.allclose(explicit_attention(q, k, v, **kw), F.scaled_dot_product_attention(q, k, v, **kw), atol=1e-12)


@pytest.mark.parametrize("case", ["plain", "bool_mask", "causal"])
def test_query_chunks_give_the_same_attention_and_derivative(monkeypatch, case):
    """Chunked over queries (to bound the score matrix) the attention and its forward derivative are unchanged."""
    import sailscope.core.metrics as metrics

    g = torch.Generator().manual_seed(4)
    q, k, v, dq = (torch.randn(2, 3, 10, 4, generator=g, dtype=torch.float64) for _ in range(4))
    kw = {"attn_mask": torch.rand(10, 10, generator=g) > 0.2, "is_causal": False} if case == "bool_mask" else {}
    if case == "bool_mask":
        kw["attn_mask"][:, 0] = True
    if case == "causal":
        kw["is_causal"] = True
    whole = explicit_attention(q, k, v, **kw)
    with forward_ad_attention():
        _, t_whole = torch.func.jvp(lambda x: F.scaled_dot_product_attention(x, k, v, **kw), (q,), (dq,))
    monkeypatch.setattr(metrics, "ATTENTION_CHUNK_ELEMENTS", 2 * 3 * 10 * 3)  # 3 query rows per chunk
    assert torch.allclose(explicit_attention(q, k, v, **kw), whole, atol=1e-14)
    with forward_ad_attention():
        _, t_chunked = torch.func.jvp(lambda x: F.scaled_dot_product_attention(x, k, v, **kw), (q,), (dq,))
    assert torch.allclose(t_chunked, t_whole, atol=1e-14)


def test_forward_derivative_of_the_written_out_attention_matches_finite_differences():
    g = torch.Generator().manual_seed(1)
    q, k, v, dq = (torch.randn(1, 2, 5, 4, generator=g, dtype=torch.float64) for _ in range(4))

    def f(x):
        return F.scaled_dot_product_attention(x, k, v)

    with forward_ad_attention():
        _, tangent = torch.func.jvp(f, (q,), (dq,))
    h = 1e-6
    fd = (explicit_attention(q + h * dq, k, v) - explicit_attention(q - h * dq, k, v)) / (2 * h)
    assert torch.allclose(tangent, fd, atol=1e-8)


def test_half_precision_unet_jvp_stays_half_and_matches_fp32(tiny_pipe):
    """The score function casts its fp32 input to the UNet's dtype (as DiffusersScoreModel does); the JVP through an
    fp16 copy of the tiny UNet agrees with the fp32 one to half precision."""
    import copy

    unet32 = tiny_pipe.unet
    unet16 = copy.deepcopy(unet32).to(torch.float16)
    emb = tiny_pipe.encode_prompt("a red square", "cpu", 1, False)[0]
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    v = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))

    def fn(unet):
        return lambda z: unet(z.to(unet.dtype), 500, encoder_hidden_states=emb.to(unet.dtype)).sample.float()

    _, t32 = jvp(fn(unet32), x, v)
    _, t16 = jvp(fn(unet16), x, v)
    assert t16.dtype == torch.float32 and torch.isfinite(t16).all()
    assert (t16 - t32).norm() / t32.norm() < 2e-2
