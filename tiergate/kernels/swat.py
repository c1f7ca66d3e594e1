"""SWAT sparse linear layer (Raihan & Aamodt 2020) and its 2:4 semi-structured variant.

SWAT ("topk" mode): the forward uses the top-K weights by magnitude (a per-layer threshold, the K-th largest
|w|); the backward uses the same sparse weights for dx and the top-K activations for dw; the update itself stays
dense (dw is a dense matrix), so the mask moves as the weights change. On a GPU an unstructured mask saves no
time by itself: the Triton kernel applies the mask as the operand tile is loaded (no masked copy is written),
which costs what a dense matmul costs. The saving on real hardware comes from the structured form:

"2:4" mode: in every group of 4 consecutive input weights of an output row, the 2 of largest magnitude are
kept. On CUDA the forward runs through torch's semi-structured sparse tensor (cuSPARSELt on sm_90; the CUTLASS
path refuses sm_90) when the shapes and dtype allow it, else, and on CPU, as a dense matmul of the masked weight.
``semi_structured_status(device)`` says which, and why.

Layers: ``swat_linear_reference`` (plain torch; CPU path and oracle), ``SwatLinearFunction`` (Triton),
the layer over it (warm-up, fixed masks, FLOP counts) is :class:`tiergate.training.swat.SwatLinear`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F

from tiergate.kernels._backend import kernels, use_triton

MODES = ("topk", "2:4")


def topk_threshold(t: torch.Tensor, density: float, backend: str = "auto") -> torch.Tensor:
    """0-dim float32 tensor thr such that keeping |t| >= thr keeps the top ``density`` fraction of t.

    K = ceil(density * numel); thr = the K-th largest |t|, rounded toward zero to bf16 precision, found by a
    two-level radix select over the top 16 bits of |t| as float32 (two 256-bin histograms, no sort, no host
    sync). For bf16 tensors it is exactly the K-th largest magnitude; for float32 ones it can keep a few more
    than K (those sharing the K-th's bf16 magnitude); ties keep more too. 0 (keep all) when density >= 1.
    (torch.kthvalue, the obvious way, took ~270 ms on a 67M-element tensor on an H200: one block per slice.)
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density={density}: expected 0 < density <= 1")
    n = t.numel()
    keep = max(1, math.ceil(density * n))
    if keep >= n:
        return torch.zeros((), dtype=torch.float32, device=t.device)
    t = t.detach()
    if use_triton(backend, t):
        ks = kernels("_swat_triton")
        h1, pad = ks.radix_hist(t, 0)
        h1[0] -= pad
        b1, above = _pick_bin(h1, keep)
        h2, pad = ks.radix_hist(t, 1, b1.to(torch.int32))
        h2[0] -= pad * (b1 == 0).to(h2.dtype)
        b2, _ = _pick_bin(h2[:128], keep - above)
    else:
        key = (t.abs().float().reshape(-1).view(torch.int32) >> 16) & 0x7FFF
        hi = key >> 7
        h1 = torch.zeros(256, dtype=torch.int64, device=t.device).index_add_(0, hi, torch.ones_like(hi, dtype=torch.int64))
        b1, above = _pick_bin(h1, keep)
        lo = torch.where(hi == b1, key & 127, 255)
        h2 = torch.zeros(256, dtype=torch.int64, device=t.device).index_add_(0, lo, torch.ones_like(lo, dtype=torch.int64))
        b2, _ = _pick_bin(h2[:128], keep - above)
    bits = ((b1.to(torch.int32) << 7) | b2.to(torch.int32)) << 16
    return bits.view(torch.float32).reshape(())


def _pick_bin(hist: torch.Tensor, keep) -> tuple[torch.Tensor, torch.Tensor]:
    """Highest bin b with (count of bins >= b) >= keep, and the count strictly above b (device tensors)."""
    hist = hist.to(torch.int64)
    at_or_above = hist.flip(0).cumsum(0).flip(0)
    b = (at_or_above >= keep).sum() - 1
    return b, at_or_above[b] - hist[b]


def two_four_mask(w_OI: torch.Tensor) -> torch.Tensor:
    """Boolean 2:4 mask: in each group of 4 consecutive inputs of a row, the 2 largest |w| (I % 4 == 0).

    Ranks by pairwise comparison (ties: the lower index wins), a few elementwise kernels instead of a topk and a
    scatter over millions of 4-element groups.
    """
    o, i = w_OI.shape
    if i % 4:
        raise ValueError(f"2:4 sparsity needs in_features % 4 == 0, got {i}")
    a = w_OI.detach().abs().reshape(o, i // 4, 4, 1)
    b = a.transpose(-1, -2)  # (o, g, 1, 4)
    earlier = torch.ones(4, 4, dtype=torch.bool, device=w_OI.device).tril(-1)  # [j, m]: m < j
    beaten_by = (b > a) | ((b == a) & earlier)  # [.., j, m]: element m ranks before element j
    return (beaten_by.sum(-1) < 2).reshape(o, i)


def _keep(t: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
    return torch.where(t.abs() >= thr.to(t.dtype), t, torch.zeros((), dtype=t.dtype, device=t.device))


class _SwatReference(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x_ND: torch.Tensor, w_OI: torch.Tensor, thr_w: torch.Tensor,
                thr_x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x_ND, w_OI, thr_w, thr_x)
        return x_ND @ _keep(w_OI, thr_w).t()

    @staticmethod
    def backward(ctx: Any, dy_NO: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w, thr_w, thr_x = ctx.saved_tensors
        dx = dy_NO @ _keep(w, thr_w) if ctx.needs_input_grad[0] else None
        dw = dy_NO.t() @ _keep(x, thr_x) if ctx.needs_input_grad[1] else None
        return dx, dw, None, None


class SwatLinearFunction(torch.autograd.Function):
    """Triton path of the topk mode: inputs x_ND, w_OI, thr_w, thr_x (0-dim tensors); returns x @ mask(w)^T."""

    @staticmethod
    def forward(ctx: Any, x_ND: torch.Tensor, w_OI: torch.Tensor, thr_w: torch.Tensor,
                thr_x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x_ND, w_OI, thr_w, thr_x)
        return kernels("_swat_triton").masked_mm(x_ND, w_OI.t(), None, thr_w)

    @staticmethod
    def backward(ctx: Any, dy_NO: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        ks = kernels("_swat_triton")
        x, w, thr_w, thr_x = ctx.saved_tensors
        dy_NO = dy_NO.contiguous()
        dx = ks.masked_mm(dy_NO, w, None, thr_w) if ctx.needs_input_grad[0] else None
        dw = ks.masked_mm(dy_NO.t(), x, None, thr_x) if ctx.needs_input_grad[1] else None
        return dx, dw, None, None


@functools.cache
def semi_structured_status(device: str) -> tuple[bool, str]:
    """(usable, reason): whether torch's 2:4 semi-structured sparse matmul runs on this device (tried once)."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return False, "not a CUDA device: dense matmul of the 2:4-masked weight"
    try:
        from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

        SparseSemiStructuredTensor._FORCE_CUTLASS = False  # cuSPARSELt: the CUTLASS path refuses sm_90
        w = torch.randn(128, 128, device=device, dtype=torch.bfloat16)
        w = w * two_four_mask(w)
        x = torch.randn(64, 128, device=device, dtype=torch.bfloat16)
        err = (F.linear(x, to_sparse_semi_structured(w)).float() - F.linear(x, w).float()).norm() / (
            F.linear(x, w).float().norm())
        if not err < 1e-2:
            return False, f"semi-structured result off by {err:.2e}: dense fallback"
    except Exception as exc:  # noqa: BLE001 - any failure means: fall back to dense, and say why
        return False, f"semi-structured sparse unavailable ({type(exc).__name__}: {exc}): dense fallback"
    return True, "cuSPARSELt 2:4 via torch.sparse.to_sparse_semi_structured"


def _semi_structured_ok(x: torch.Tensor, w: torch.Tensor) -> bool:
    # cuSPARSELt's bf16/fp16 shape rules as torch states them: sparse rows % 32 and cols % 64
    return (x.dtype in (torch.bfloat16, torch.float16) and w.shape[0] % 32 == 0 and w.shape[1] % 64 == 0
            and semi_structured_status(str(x.device))[0])


class _Swat24(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x_ND: torch.Tensor, w_OI: torch.Tensor, use_sparse: bool) -> torch.Tensor:
        w24 = w_OI * two_four_mask(w_OI)
        ctx.save_for_backward(x_ND, w24)
        if use_sparse:
            from torch.sparse import to_sparse_semi_structured

            return F.linear(x_ND, to_sparse_semi_structured(w24))
        return x_ND @ w24.t()

    @staticmethod
    def backward(ctx: Any, dy_NO: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w24 = ctx.saved_tensors
        dx = dy_NO @ w24 if ctx.needs_input_grad[0] else None
        dw = dy_NO.t() @ x if ctx.needs_input_grad[1] else None
        return dx, dw, None


def swat_linear_reference(x: torch.Tensor, weight_OI: torch.Tensor, bias_O: torch.Tensor | None = None,
                          density: float = 0.2, act_density: float | None = None) -> torch.Tensor:
    """Plain-torch SWAT linear (topk mode): y = x @ topk(w)^T + b; dx uses topk(w); dw uses topk(x)."""
    x_ND = x.reshape(-1, x.shape[-1])
    thr_w = topk_threshold(weight_OI, density, backend="reference")
    thr_x = topk_threshold(x_ND, density if act_density is None else act_density, backend="reference")
    y = _SwatReference.apply(x_ND, weight_OI, thr_w, thr_x)
    if bias_O is not None:
        y = y + bias_O
    return y.reshape(*x.shape[:-1], weight_OI.shape[0])


def swat_linear(x: torch.Tensor, weight_OI: torch.Tensor, bias_O: torch.Tensor | None = None,
                density: float = 0.2, act_density: float | None = None, mode: str = "topk",
                backend: str = "auto") -> torch.Tensor:
    """SWAT linear layer on x (..., I) -> (..., O). Differentiable in x, weight and bias.

    mode "topk": keep the top ``density`` fraction of weights by magnitude in forward and backward, and the
    top ``act_density`` (default: density) of the activations for dw. mode "2:4": 2:4 weight mask (density
    ignored), semi-structured sparse forward on CUDA where supported. backend as for ``moe_ffn``.

    >>> swat_linear(torch.randn(3, 8), torch.randn(5, 8), density=0.5).shape
    torch.Size([3, 5])
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    x_ND = x.reshape(-1, x.shape[-1])
    if mode == "2:4":
        use_triton(backend, x_ND)  # validates the backend name
        y = _Swat24.apply(x_ND, weight_OI, _semi_structured_ok(x_ND, weight_OI))
    elif use_triton(backend, x_ND, weight_OI):
        thr_w = topk_threshold(weight_OI, density, backend)
        thr_x = topk_threshold(x_ND, density if act_density is None else act_density, backend)
        y = SwatLinearFunction.apply(x_ND, weight_OI, thr_w, thr_x)
    else:
        return swat_linear_reference(x, weight_OI, bias_O, density, act_density)
    if bias_O is not None:
        y = y + bias_O
    return y.reshape(*x.shape[:-1], weight_OI.shape[0])
