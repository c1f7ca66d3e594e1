"""SWAT linear: the Triton masked matmul and the autograd path against float64 references."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.kernels.helpers import assert_close
from tiergate.kernels import _swat_triton as ks
from tiergate.kernels.swat import (
    semi_structured_status,
    swat_linear,
    swat_linear_reference,
    topk_threshold,
    two_four_mask,
)
from tiergate.training.swat import SwatConfig, SwatLinear

DTYPES = [torch.float32, torch.bfloat16]


def _keep64(t, thr):
    t = t.double()
    return torch.where(t.abs() >= thr.double(), t, torch.zeros((), dtype=torch.float64, device=t.device))


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_mm_launcher(dtype, device):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(37, 45, generator=g).to(device, dtype)
    b = torch.randn(29, 45, generator=g).to(device, dtype).t()  # (45, 29), transposed strides
    thr_a, thr_b = topk_threshold(a, 0.5), topk_threshold(b, 0.3)
    ref = _keep64(a, thr_a) @ _keep64(b, thr_b)
    assert_close(ks.masked_mm(a, b, thr_a, thr_b), ref, dtype, "masked_mm both masks")
    assert_close(ks.masked_mm(a, b), a.double() @ b.double(), dtype, "masked_mm no mask")


@pytest.mark.parametrize("dtype", DTYPES)
def test_thresholds(dtype, device):
    g = torch.Generator().manual_seed(1)
    w = (torch.randn(61, 37, generator=g) * torch.rand(61, 1, generator=g) * 10).to(device, dtype)
    for density in (0.003, 0.05, 0.2, 0.5, 0.97):
        keep = math.ceil(density * w.numel())
        thr = topk_threshold(w, density, backend="triton")
        # the Triton radix select and the plain-torch one find the same threshold
        assert thr.item() == topk_threshold(w, density, backend="reference").item()
        kth = torch.kthvalue(w.abs().float().flatten().cpu(), w.numel() - keep + 1).values.item()
        kept = (w.abs().float() >= thr).sum().item()
        if dtype == torch.bfloat16:
            assert thr.item() == kth  # exact on bf16 values
        else:  # rounded toward zero to bf16: relative error below 2^-7, never above the K-th value
            assert kth * (1 - 2**-7) <= thr.item() <= kth
        assert keep <= kept <= keep * 1.02 + 8  # ties (bf16) or the rounding (fp32) keep a few more
    assert topk_threshold(w, 1.0).item() == 0.0


def test_masks():
    w = torch.randn(13, 24)
    w[0, :4] = torch.tensor([1.0, -1.0, 1.0, 0.5])  # a tie: the lower index wins, still 2 of 4
    m = two_four_mask(w)
    assert (m.reshape(13, 6, 4).sum(-1) == 2).all()
    big = w.abs().reshape(13, 6, 4)
    assert (big.masked_fill(~m.reshape(13, 6, 4), -1).amax(-1) == big.amax(-1)).all()  # the largest is kept
    with pytest.raises(ValueError):
        topk_threshold(w, 0.0)
    with pytest.raises(ValueError):
        two_four_mask(torch.randn(3, 6))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 17, 40, 23), (1, 33, 48, 16)], ids=str)
def test_swat_linear_triton_matches_reference(shape, dtype, device):
    b0, n, i, o = shape
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(b0, n, i, generator=g).to(device, dtype).requires_grad_()
    w = torch.randn(o, i, generator=g).to(device, dtype).requires_grad_()
    bias = torch.randn(o, generator=g).to(device, dtype).requires_grad_()
    dy = torch.randn(b0, n, o, generator=g).to(device, dtype)
    density, act_density = 0.3, 0.6
    x2 = x.reshape(-1, i)
    thr_w, thr_x = topk_threshold(w, density), topk_threshold(x2, act_density)
    ref = (x2.double() @ _keep64(w, thr_w).t() + bias.double()).reshape(b0, n, o)
    ref_dx = (dy.reshape(-1, o).double() @ _keep64(w, thr_w)).reshape(x.shape)
    ref_dw = dy.reshape(-1, o).double().t() @ _keep64(x2, thr_x)
    ref_db = dy.double().sum((0, 1))
    for backend in ("triton", "reference"):
        y = swat_linear(x, w, bias, density, act_density, backend=backend)
        dx, dw, db = torch.autograd.grad(y, (x, w, bias), dy)
        assert_close(y, ref, dtype, f"{backend} y")
        assert_close(dx, ref_dx, dtype, f"{backend} dx")
        assert_close(dw, ref_dw, dtype, f"{backend} dw (dense update from top-K activations)")
        assert_close(db, ref_db, dtype, f"{backend} db")
    y_ref = swat_linear_reference(x, w, bias, density, act_density)
    assert_close(y_ref, ref, dtype, "swat_linear_reference y")


@pytest.mark.parametrize("dtype", DTYPES)
def test_two_four_mode(dtype, device):
    g = torch.Generator().manual_seed(3)
    i, o = 128, 64  # cuSPARSELt-compatible on a GPU; dense masked fallback elsewhere
    x = torch.randn(40, i, generator=g).to(device, dtype).requires_grad_()
    w = torch.randn(o, i, generator=g).to(device, dtype).requires_grad_()
    dy = torch.randn(40, o, generator=g).to(device, dtype)
    w24 = w.double() * two_four_mask(w)
    y = swat_linear(x, w, mode="2:4")
    dx, dw = torch.autograd.grad(y, (x, w), dy)
    assert_close(y, x.double() @ w24.t(), dtype, "2:4 y")
    assert_close(dx, dy.double() @ w24, dtype, "2:4 dx")
    assert_close(dw, dy.double().t() @ x.double(), dtype, "2:4 dw (dense)")
    usable, reason = semi_structured_status(device)
    assert usable == (device == "cuda" and "cuSPARSELt" in reason) and reason


def test_module(device):
    torch.manual_seed(4)
    lin = SwatLinear(nn.Linear(24, 10), SwatConfig(weight_sparsity=0.75, act_sparsity=0.75, backend="triton")).to(device)
    x = torch.randn(5, 24, device=device)
    lin(x).square().sum().backward()  # the training layer runs the kernel (Triton, interpreted on CPU)
    pruned = lin.weight.abs() < topk_threshold(lin.weight, 0.25)
    # the update is dense: weights outside this step's mask get gradients too, so the mask can move
    assert (lin.weight.grad[pruned] != 0).float().mean() > 0.5
    with pytest.raises(ValueError, match="mode"):
        swat_linear(x, lin.weight, mode="1:2")
