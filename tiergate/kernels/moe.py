"""Dropless mixture-of-experts feed-forward: routing, expert-sorted dispatch, grouped expert matmuls, gated combine.

Three layers, as for every op in this package:
- ``moe_ffn_reference``: plain PyTorch (one sort, then a loop over the experts); the CPU path and the oracle;
- ``MoEFFNFunction``: the autograd Function over the Triton kernels of ``_moe_triton`` (gather, activation,
  gated combine and their backwards, plus a Triton grouped GEMM), with ``torch._grouped_mm`` as the expert
  GEMM on CUDA where it applies (bf16, widths multiple of 8);
- the module (router, experts, auxiliary losses) is :class:`tiergate.models.moe.MoEFFN`, the one MoE layer of
  tiergate, over this op.

Forward, N = T*k routed rows in expert-sorted order (one stable sort of the expert ids, no host sync):
    xs_ND = x_TD[perm // k]            (Triton gather; fused into the GEMM's operand load on the Triton GEMM path)
    h_NH  = xs_ND @ w1_EDH[e]          (grouped GEMM)
    a_NH  = act(h_NH)                  (Triton, fp32 math)
    y_ND  = a_NH @ w2_EHD[e]           (grouped GEMM)
    out_TD[t] = sum_j gate_Tk[t, j] * y_ND[pos[t, j]]   (Triton, fp32 sum over the k rows, no atomics)
Saved for backward: h_NH, y_ND (and xs_ND on the torch GEMM path), not a_NH: the backward recomputes a = act(h)
in the same pass that forms dh, writing a over h and dh over da, and writes dy over y, so the backward holds two
N x H buffers where autograd over the plain layer holds four.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F

from tiergate.kernels._backend import kernels, use_triton

ACTIVATIONS = ("relu", "gelu", "silu")
GEMMS = ("auto", "torch", "triton")


def _act_torch(h: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return F.relu(h)
    if activation == "gelu":
        return F.gelu(h)
    if activation == "silu":
        return F.silu(h)
    raise ValueError(f"activation={activation!r}: expected one of {ACTIVATIONS}")


def route(router_logits_TE: torch.Tensor, k: int, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k routing in float32: returns (expert_idx_Tk int64, gate_Tk float32).

    normalize=True rescales the k gates of a token to sum to 1 (for k=1 that makes every gate 1 and the
    router gets no gradient through the gate: use normalize=False with k=1, as Switch does).

    >>> idx, gate = route(torch.randn(5, 4), k=2)
    """
    probs_TE = torch.softmax(router_logits_TE.float(), dim=-1)
    gate_Tk, idx_Tk = torch.topk(probs_TE, k, dim=-1)
    if normalize:
        gate_Tk = gate_Tk / gate_Tk.sum(dim=-1, keepdim=True)
    return idx_Tk, gate_Tk


_ARANGE: dict[tuple[int, str, torch.dtype], torch.Tensor] = {}


def _experts(n: int, like: torch.Tensor) -> torch.Tensor:
    """arange(n) on like's device and dtype, cached: one launch fewer per call (the MoE op is launch-bound
    at small sizes)."""
    key = (n, str(like.device), like.dtype)
    if key not in _ARANGE:
        _ARANGE[key] = torch.arange(n, device=like.device, dtype=like.dtype)
    return _ARANGE[key]


def _order(expert_idx_Tk: torch.Tensor, n_experts: int, need_pos: bool):
    # a dropped assignment (-1) becomes expert E (remainder maps -1 to E in one launch): it sorts last, beyond
    # offs[-1], where no GEMM reads or writes
    key = expert_idx_Tk.reshape(-1).remainder(n_experts + 1)
    sorted_e, perm = torch.sort(key, stable=True)
    offs = torch.searchsorted(sorted_e, _experts(n_experts, sorted_e), right=True, out_int32=True)
    pos = None
    if need_pos:
        pos = torch.empty_like(perm)
        pos[perm] = torch.arange(perm.numel(), device=perm.device)
        pos = pos.view(expert_idx_Tk.shape)
    return perm, pos, offs, sorted_e


def _counts(offs_E: torch.Tensor) -> torch.Tensor:
    return torch.diff(offs_E, prepend=offs_E.new_zeros(1))


def sort_by_expert(expert_idx_Tk: torch.Tensor, n_experts: int) -> tuple[torch.Tensor, ...]:
    """Expert-sorted order of the T*k assignments, with no host sync.

    Returns perm_N (int64, sorted row -> flat index t*k+j), pos_Tk (int64, the inverse), counts_E (int32) and
    offs_E (int32 cumulative row ends, the layout torch._grouped_mm takes). The sort is stable, so within an
    expert rows keep token order. Dropped assignments (expert -1) sort last, after offs_E[-1].
    """
    perm, pos, offs, _ = _order(expert_idx_Tk, n_experts, need_pos=True)
    return perm, pos, _counts(offs), offs


def moe_ffn_reference(x_TD: torch.Tensor, expert_idx_Tk: torch.Tensor, gate_Tk: torch.Tensor,
                      w1_EDH: torch.Tensor, w2_EHD: torch.Tensor, activation: str = "gelu",
                      b1_EH: torch.Tensor | None = None, b2_ED: torch.Tensor | None = None) -> torch.Tensor:
    """Plain PyTorch MoE FFN: out[t] = sum_j gate[t,j] * (act(x[t] @ w1[e] + b1[e]) @ w2[e] + b2[e]).

    e = expert_idx[t,j]; an assignment with e = -1 (dropped) contributes nothing. Differentiable in x, gate,
    w1, w2, b1, b2 by autograd. Matmuls run in the input dtype; the gated sum is taken in float32 and cast to
    x's dtype. One host sync (the per-expert row counts).
    """
    t, d = x_TD.shape
    n_experts = w1_EDH.shape[0]
    k = expert_idx_Tk.shape[1]
    perm, _, offs, _ = _order(expert_idx_Tk, n_experts, need_pos=False)
    counts = _counts(offs)
    tok = perm // k
    gate_sorted = gate_Tk.reshape(-1)[perm].float()
    out = torch.zeros((t, d), dtype=torch.float32, device=x_TD.device)
    start = 0
    for e, c in enumerate(counts.tolist()):
        if c == 0:
            continue
        rows = tok[start:start + c]
        h = x_TD[rows] @ w1_EDH[e]
        if b1_EH is not None:
            h = h + b1_EH[e]
        y = _act_torch(h, activation) @ w2_EHD[e]
        if b2_ED is not None:
            y = y + b2_ED[e]
        out = out.index_add(0, rows, y.float() * gate_sorted[start:start + c, None])
        start += c
    return out.to(x_TD.dtype)


def _resolve_gemm(gemm: str, x: torch.Tensor, w1: torch.Tensor) -> str:
    if gemm not in GEMMS:
        raise ValueError(f"gemm={gemm!r}: expected one of {GEMMS}")
    if gemm != "auto":
        return gemm
    ok = (x.is_cuda and hasattr(torch, "_grouped_mm") and x.dtype == torch.bfloat16
          and w1.shape[1] % 8 == 0 and w1.shape[2] % 8 == 0)
    return "torch" if ok else "triton"


class MoEFFNFunction(torch.autograd.Function):
    """Autograd over the Triton path. Inputs: x_TD, gate_Tk, w1_EDH, w2_EHD, b1_EH | None, b2_ED | None,
    expert_idx_Tk, activation, gemm.

    The backward overwrites the h and y buffers (see the module docstring) and drops them as soon as they are
    used, so it runs once: a second backward through the same graph (retain_graph=True) raises instead of
    returning wrong gradients.
    """

    @staticmethod
    def forward(ctx: Any, x_TD: torch.Tensor, gate_Tk: torch.Tensor, w1_EDH: torch.Tensor, w2_EHD: torch.Tensor,
                b1_EH: torch.Tensor | None, b2_ED: torch.Tensor | None, expert_idx_Tk: torch.Tensor,
                activation: str, gemm: str) -> torch.Tensor:
        km = kernels("_moe_triton")
        n_experts = w1_EDH.shape[0]
        k = expert_idx_Tk.shape[1]
        x_TD = x_TD.contiguous()
        gate_Tk = gate_Tk.contiguous()
        idx = expert_idx_Tk.contiguous()
        torch_gemm = gemm == "torch"
        perm, pos, offs, sorted_e = _order(idx, n_experts, need_pos=not torch_gemm)
        counts = None
        if torch_gemm:
            pos = torch.empty_like(perm)
            xs = km.gather_rows(x_TD, perm, k, pos_out=pos)  # also fills pos, the inverse of perm
            pos = pos.view(idx.shape)
            h = torch._grouped_mm(xs, w1_EDH, offs=offs)
        else:
            xs = None  # the Triton GEMM gathers the rows of x as it loads them
            counts = _counts(offs)
            h = km.grouped_mm(x_TD, w1_EDH, offs, counts, perm, k)
        if b1_EH is not None:
            a = km.bias_act_fwd_(h, b1_EH, sorted_e, activation, offs)  # h += b1 in place: backward needs h + b1
        else:
            a = km.act_fwd(h, activation, offs)
        y = torch._grouped_mm(a, w2_EHD, offs=offs) if torch_gemm else km.grouped_mm(a, w2_EHD, offs, counts)
        del a
        out = km.combine(y, pos, idx, gate_Tk, b2_ED)
        # Inputs go through save_for_backward; the intermediates are kept on ctx so that backward can drop
        # them as soon as they are used (saved tensors live until backward returns).
        ctx.save_for_backward(x_TD, gate_Tk, w1_EDH, w2_EHD, b2_ED)
        ctx.xs, ctx.h, ctx.y, ctx.perm, ctx.pos, ctx.offs, ctx.counts = xs, h, y, perm, pos, offs, counts
        ctx.idx, ctx.sorted_e, ctx.has_b1 = idx, sorted_e, b1_EH is not None
        ctx.activation, ctx.gemm, ctx.k = activation, gemm, k
        return out

    @staticmethod
    def backward(ctx: Any, do_TD: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.h is None:
            raise RuntimeError("MoEFFNFunction.backward ran twice on one graph: its buffers are reused in place")
        km = kernels("_moe_triton")
        x, gate, w1, w2, b2 = ctx.saved_tensors
        xs, h, y, perm, pos, offs, counts = ctx.xs, ctx.h, ctx.y, ctx.perm, ctx.pos, ctx.offs, ctx.counts
        idx, sorted_e = ctx.idx, ctx.sorted_e
        ctx.xs = ctx.h = ctx.y = None
        need_x, need_gate, need_w1, need_w2, need_b1, need_b2 = ctx.needs_input_grad[:6]
        torch_gemm = ctx.gemm == "torch"
        n_experts = w1.shape[0]

        def gmm(a, b):
            return torch._grouped_mm(a, b, offs=offs) if torch_gemm else km.grouped_mm(a, b, offs, counts)

        # dy overwrites y (each element read first); dropped rows get dy = 0
        dy, dgate = km.combine_bwd(do_TD.contiguous(), y, perm, idx, gate, b2, out_dy=y)
        del y
        db2 = km.segment_sum(dy, sorted_e, n_experts).to(b2.dtype) if need_b2 else None
        da = gmm(dy, w2.transpose(1, 2))  # (E, D, H) view
        a, dh = km.act_bwd_(h, da, ctx.activation, offs)  # a overwrites h, dh overwrites da
        del h, da
        dw2 = None
        if need_w2:
            dw2 = torch._grouped_mm(a.t(), dy, offs=offs) if torch_gemm else km.grouped_mm_wgrad(a, dy, offs)
        del a, dy  # frees the h and y buffers
        db1 = km.segment_sum(dh, sorted_e, n_experts).to(w1.dtype) if need_b1 else None
        # dw1 before dx, so that xs is gone before dxs exists and dh is gone before dx exists (lower peak)
        dw1 = None
        if need_w1:
            dw1 = torch._grouped_mm(xs.t(), dh, offs=offs) if torch_gemm else km.grouped_mm_wgrad(x, dh, offs, perm,
                                                                                                ctx.k)
        del xs
        dx = None
        if need_x:
            dxs = gmm(dh, w1.transpose(1, 2))  # (E, H, D) view
            del dh
            dx = km.combine(dxs, pos, idx, None)
            del dxs
        dgate = dgate.to(gate.dtype) if need_gate else None
        return dx, dgate, dw1, dw2, db1, db2, None, None, None


def moe_ffn(x_TD: torch.Tensor, expert_idx_Tk: torch.Tensor, gate_Tk: torch.Tensor, w1_EDH: torch.Tensor,
            w2_EHD: torch.Tensor, activation: str = "gelu", b1_EH: torch.Tensor | None = None,
            b2_ED: torch.Tensor | None = None, backend: str = "auto", gemm: str = "auto") -> torch.Tensor:
    """Dropless MoE feed-forward: out_TD[t] = sum_j gate_Tk[t,j] * (act(x_TD[t] @ w1[e] + b1[e]) @ w2[e] + b2[e]).

    e = expert_idx_Tk[t, j], in [0, E) or -1 for an assignment dropped by the caller (it contributes nothing);
    not range-checked on the GPU path (that would cost a host sync). b1_EH and b2_ED are optional expert biases.
    Differentiable in x, gate, w1, w2, b1, b2. backend: "auto" (Triton for CUDA tensors when triton imports,
    else the reference), "triton", "reference". gemm (Triton path only): "auto" (torch._grouped_mm for bf16 CUDA
    tensors with D and H multiples of 8, else the Triton grouped GEMM), "torch", "triton".

    >>> x, w1, w2 = torch.randn(6, 8), torch.randn(4, 8, 16), torch.randn(4, 16, 8)
    >>> idx, gate = route(torch.randn(6, 4), k=2)
    >>> moe_ffn(x, idx, gate, w1, w2).shape
    torch.Size([6, 8])
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r}: expected one of {ACTIVATIONS}")
    if x_TD.dim() != 2 or expert_idx_Tk.shape != gate_Tk.shape or expert_idx_Tk.shape[0] != x_TD.shape[0]:
        raise ValueError(f"shapes: x_TD {tuple(x_TD.shape)}, expert_idx_Tk {tuple(expert_idx_Tk.shape)}, "
                         f"gate_Tk {tuple(gate_Tk.shape)}: expected (T, D), (T, k), (T, k)")
    e, d, h = w1_EDH.shape
    if w2_EHD.shape != (e, h, d) or d != x_TD.shape[1]:
        raise ValueError(f"shapes: w1_EDH {tuple(w1_EDH.shape)}, w2_EHD {tuple(w2_EHD.shape)} for D={x_TD.shape[1]}")
    if (b1_EH is not None and b1_EH.shape != (e, h)) or (b2_ED is not None and b2_ED.shape != (e, d)):
        raise ValueError(f"shapes: b1_EH {None if b1_EH is None else tuple(b1_EH.shape)}, b2_ED "
                         f"{None if b2_ED is None else tuple(b2_ED.shape)}: expected ({e}, {h}), ({e}, {d})")
    if not use_triton(backend, x_TD, w1_EDH, w2_EHD):
        return moe_ffn_reference(x_TD, expert_idx_Tk, gate_Tk, w1_EDH, w2_EHD, activation, b1_EH, b2_ED)
    dev = x_TD.device.type
    autocast = torch.is_autocast_enabled(dev)
    if autocast:
        # Under autocast the reference's matmuls run in the autocast dtype; a custom Function sees its inputs
        # as given (a model's LayerNorm output and fp32 parameters), so without this cast the Triton path would
        # run fp32 GEMMs (Triton's, not torch._grouped_mm) where the reference runs bf16 cuBLAS: the
        # torch.amp.custom_fwd(cast_inputs=...) rule, applied here. The gates stay fp32 (routing precision).
        dt = torch.get_autocast_dtype(dev)
        x_TD, w1_EDH, w2_EHD = x_TD.to(dt), w1_EDH.to(dt), w2_EHD.to(dt)
        b1_EH = None if b1_EH is None else b1_EH.to(dt)
        b2_ED = None if b2_ED is None else b2_ED.to(dt)
    with torch.autocast(dev, enabled=False) if autocast else contextlib.nullcontext():
        return MoEFFNFunction.apply(x_TD, gate_Tk, w1_EDH, w2_EHD, b1_EH, b2_ED, expert_idx_Tk, activation,
                                    _resolve_gemm(gemm, x_TD, w1_EDH))
