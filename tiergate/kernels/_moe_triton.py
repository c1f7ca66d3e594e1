"""Triton kernels and launchers for the MoE feed-forward layer.

Imported only when ``triton`` imports (see ``tiergate.kernels._backend``). Every launcher takes plain torch
tensors and works on CUDA and, with ``TRITON_INTERPRET=1``, on CPU (the tests run them that way).

Names: N = T*k routed rows, in expert-sorted order; ``perm_N[p]`` is the flat assignment index ``t*k + j`` of
sorted row ``p`` (so its token is ``perm_N[p] // k``); ``pos_Tk`` is the inverse (flat index -> sorted row);
``offs_E`` holds the cumulative row ends of the experts (int32, the layout ``torch._grouped_mm`` takes).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

ACT_IDS = {"relu": 0, "gelu": 1, "silu": 2}


@triton.jit
def _act(x, ACT: tl.constexpr):
    if ACT == 0:
        y = tl.maximum(x, 0.0)
    elif ACT == 1:
        y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))  # exact (erf) GELU, as F.gelu
    else:
        y = x * tl.sigmoid(x)
    return y


@triton.jit
def _act_grad(x, ACT: tl.constexpr):
    if ACT == 0:
        g = tl.where(x > 0.0, 1.0, 0.0)
    elif ACT == 1:
        cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
        g = cdf + x * tl.exp(-0.5 * x * x) * 0.3989422804014327
    else:
        s = tl.sigmoid(x)
        g = s + x * s * (1.0 - s)
    return g


# ---------------------------------------------------------------------------------------------- elementwise
@triton.jit
def _live_elems(OFFS, E, ROW_LEN, n):
    # rows at and past offs[E-1] belong to dropped assignments: nothing wrote them, nothing reads them
    return tl.minimum(tl.load(OFFS + E - 1).to(tl.int64) * ROW_LEN, n)


@triton.jit
def _act_fwd_kernel(H, A, OFFS, E, ROW_LEN, n, ACT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < _live_elems(OFFS, E, ROW_LEN, n)
    h = tl.load(H + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(A + offs, _act(h, ACT).to(A.dtype.element_ty), mask=m)


@triton.jit
def _act_bwd_kernel(H, DA, A_OUT, DH_OUT, OFFS, E, ROW_LEN, n, ACT: tl.constexpr, BLOCK: tl.constexpr):
    # A_OUT may alias H and DH_OUT may alias DA: each element is read before it is written, by one program.
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < _live_elems(OFFS, E, ROW_LEN, n)
    h = tl.load(H + offs, mask=m, other=0.0).to(tl.float32)
    da = tl.load(DA + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(A_OUT + offs, _act(h, ACT).to(A_OUT.dtype.element_ty), mask=m)
    tl.store(DH_OUT + offs, (da * _act_grad(h, ACT)).to(DH_OUT.dtype.element_ty), mask=m)


def act_fwd(h_NH: torch.Tensor, activation: str, offs_E: torch.Tensor) -> torch.Tensor:
    """a = act(h), elementwise, in h's dtype (computed in fp32), for the rows before offs_E[-1]."""
    assert h_NH.is_contiguous()
    a = torch.empty_like(h_NH)
    n = h_NH.numel()
    block = 4096 if h_NH.is_cuda else 256
    _act_fwd_kernel[(triton.cdiv(n, block),)](h_NH, a, offs_E, offs_E.numel(), h_NH.shape[1], n,
                                              ACT=ACT_IDS[activation], BLOCK=block, num_warps=8)
    return a


def act_bwd_(h_NH: torch.Tensor, da_NH: torch.Tensor, activation: str,
             offs_E: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """In place: h becomes act(h) and da becomes da * act'(h); returns (a, dh), which share their storage."""
    assert h_NH.is_contiguous() and da_NH.is_contiguous() and h_NH.shape == da_NH.shape
    n = h_NH.numel()
    block = 4096 if h_NH.is_cuda else 256
    _act_bwd_kernel[(triton.cdiv(n, block),)](h_NH, da_NH, h_NH, da_NH, offs_E, offs_E.numel(), h_NH.shape[1], n,
                                              ACT=ACT_IDS[activation], BLOCK=block, num_warps=8)
    return h_NH, da_NH


# ---------------------------------------------------------------------------------------- gather / combine
@triton.jit
def _gather_kernel(X, PERM, OUT, POS, N, D, stride_x, stride_o, TOPK: tl.constexpr, WRITE_POS: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rm = rows < N
    flat = tl.load(PERM + rows, mask=rm, other=0)
    src = (flat // TOPK).to(tl.int64)
    if WRITE_POS:  # the inverse permutation, by the first column block only: saves two launches
        if tl.program_id(1) == 0:
            tl.store(POS + flat, rows.to(POS.dtype.element_ty), mask=rm)
    for d0 in range(tl.program_id(1) * BLOCK_D, D, tl.num_programs(1) * BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        m = rm[:, None] & (cols[None, :] < D)
        v = tl.load(X + src[:, None] * stride_x + cols[None, :], mask=m)
        tl.store(OUT + rows.to(tl.int64)[:, None] * stride_o + cols[None, :], v, mask=m)


def gather_rows(x_TD: torch.Tensor, perm_N: torch.Tensor, topk: int,
                pos_out: torch.Tensor | None = None) -> torch.Tensor:
    """xs_ND[p] = x_TD[perm_N[p] // topk]: the tokens in expert-sorted order.

    With pos_out (a flat tensor of N ints) given, also writes the inverse permutation pos_out[perm_N[p]] = p.
    """
    assert x_TD.stride(1) == 1
    n, d = perm_N.numel(), x_TD.shape[1]
    out = torch.empty((n, d), dtype=x_TD.dtype, device=x_TD.device)
    br, bd = (16, min(triton.next_power_of_2(d), 256)) if x_TD.is_cuda else (8, 32)
    grid = (triton.cdiv(n, br), min(triton.cdiv(d, bd), 4))
    _gather_kernel[grid](x_TD, perm_N, out, pos_out if pos_out is not None else perm_N, n, d, x_TD.stride(0),
                         out.stride(0), TOPK=topk, WRITE_POS=pos_out is not None, BLOCK_R=br, BLOCK_D=bd,
                         num_warps=4)
    return out


@triton.jit
def _combine_kernel(Y, POS, EIDX, GATE, B2, OUT, T, D, stride_y, stride_o, stride_b2, TOPK: tl.constexpr,
                    HAS_GATE: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    toks = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    tm = toks < T
    cm = cols < D
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for j in tl.static_range(TOPK):
        flat = toks * TOPK + j
        e = tl.load(EIDX + flat, mask=tm, other=-1)
        live = tm & (e >= 0)  # a dropped assignment (expert -1) contributes nothing; its row of y is garbage
        m = live[:, None] & cm[None, :]
        p = tl.load(POS + flat, mask=live, other=0).to(tl.int64)
        y = tl.load(Y + p[:, None] * stride_y + cols[None, :], mask=m, other=0.0).to(tl.float32)
        if HAS_BIAS:
            y += tl.load(B2 + e.to(tl.int64)[:, None] * stride_b2 + cols[None, :], mask=m, other=0.0).to(tl.float32)
        if HAS_GATE:
            g = tl.load(GATE + flat, mask=live, other=0.0).to(tl.float32)
            y = y * g[:, None]
        acc += y
    tl.store(OUT + toks.to(tl.int64)[:, None] * stride_o + cols[None, :], acc.to(OUT.dtype.element_ty),
             mask=tm[:, None] & cm[None, :])


def combine(y_ND: torch.Tensor, pos_Tk: torch.Tensor, expert_idx_Tk: torch.Tensor, gate_Tk: torch.Tensor | None,
            b2_ED: torch.Tensor | None = None) -> torch.Tensor:
    """out_TD[t] = sum_j gate_Tk[t, j] * (y_ND[pos_Tk[t, j]] + b2_ED[e]) over the live slots (e = expert >= 0).

    fp32 sum over the k rows of a token, no atomics: deterministic. With gate_Tk None the gate is 1 (and b2 is
    not allowed): that is the backward of the gather (dx from the sorted rows).
    """
    assert y_ND.stride(1) == 1 and pos_Tk.is_contiguous() and expert_idx_Tk.is_contiguous()
    t, k = pos_Tk.shape
    d = y_ND.shape[1]
    out = torch.empty((t, d), dtype=y_ND.dtype, device=y_ND.device)
    bt, bd = (16, min(triton.next_power_of_2(d), 256)) if y_ND.is_cuda else (8, 32)
    grid = (triton.cdiv(t, bt), triton.cdiv(d, bd))
    _combine_kernel[grid](y_ND, pos_Tk, expert_idx_Tk, gate_Tk if gate_Tk is not None else y_ND,
                          b2_ED if b2_ED is not None else y_ND, out, t, d, y_ND.stride(0), out.stride(0),
                          b2_ED.stride(0) if b2_ED is not None else 0, TOPK=k, HAS_GATE=gate_Tk is not None,
                          HAS_BIAS=b2_ED is not None, BLOCK_T=bt, BLOCK_D=bd, num_warps=4)
    return out


@triton.jit
def _combine_bwd_kernel(DO, Y, PERM, EIDX, GATE, B2, DY, DGATE, N, D, stride_do, stride_y, stride_dy, stride_b2,
                        TOPK: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rm = rows < N
    flat = tl.load(PERM + rows, mask=rm, other=0)
    e = tl.load(EIDX + flat, mask=rm, other=-1)
    live = rm & (e >= 0)
    tok = (flat // TOPK).to(tl.int64)
    g = tl.load(GATE + flat, mask=live, other=0.0).to(tl.float32)
    rows64 = rows.to(tl.int64)
    acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        m = live[:, None] & (cols[None, :] < D)
        do = tl.load(DO + tok[:, None] * stride_do + cols[None, :], mask=m, other=0.0).to(tl.float32)
        y = tl.load(Y + rows64[:, None] * stride_y + cols[None, :], mask=m, other=0.0).to(tl.float32)
        if HAS_BIAS:
            y += tl.load(B2 + e.to(tl.int64)[:, None] * stride_b2 + cols[None, :], mask=m, other=0.0).to(tl.float32)
        acc += tl.sum(do * y, axis=1)
        # dropped rows get dy = 0, so that nothing downstream reads their garbage
        tl.store(DY + rows64[:, None] * stride_dy + cols[None, :], (do * g[:, None]).to(DY.dtype.element_ty),
                 mask=rm[:, None] & (cols[None, :] < D))
    tl.store(DGATE + flat, acc.to(DGATE.dtype.element_ty), mask=rm)


def combine_bwd(do_TD: torch.Tensor, y_ND: torch.Tensor, perm_N: torch.Tensor, expert_idx_Tk: torch.Tensor,
                gate_Tk: torch.Tensor, b2_ED: torch.Tensor | None = None,
                out_dy: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of ``combine``: dy_ND[p] = gate[perm[p]] * do[tok(p)], dgate[perm[p]] = <do[tok(p)], y[p] + b2[e]>
    (both 0 for a dropped slot); dgate is float32.

    ``out_dy`` may be y_ND itself (each element of y is read before it is overwritten by the same program),
    which saves an N x D buffer when y is not needed afterwards.
    """
    assert do_TD.stride(1) == 1 and y_ND.stride(1) == 1 and gate_Tk.is_contiguous() and expert_idx_Tk.is_contiguous()
    n, d = y_ND.shape
    k = gate_Tk.shape[1]
    dy = torch.empty_like(y_ND) if out_dy is None else out_dy
    dgate = torch.empty(gate_Tk.shape, dtype=torch.float32, device=y_ND.device)
    br, bd = (16, min(triton.next_power_of_2(d), 512)) if y_ND.is_cuda else (8, 32)
    _combine_bwd_kernel[(triton.cdiv(n, br),)](
        do_TD, y_ND, perm_N, expert_idx_Tk, gate_Tk, b2_ED if b2_ED is not None else y_ND, dy, dgate, n, d,
        do_TD.stride(0), y_ND.stride(0), dy.stride(0), b2_ED.stride(0) if b2_ED is not None else 0, TOPK=k,
        HAS_BIAS=b2_ED is not None, BLOCK_R=br, BLOCK_D=bd, num_warps=4)
    return dy, dgate


# --------------------------------------------------------------------------------------------- expert biases
@triton.jit
def _bias_act_kernel(H, B1, SORTED_E, A, OFFS, N, HD, E, stride_h, stride_b, ACT: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    rm = rows < tl.minimum(tl.load(OFFS + E - 1), N)  # live rows only (see _live_elems)
    e = tl.load(SORTED_E + rows, mask=rm, other=0)
    m = rm[:, None] & (cols[None, :] < HD)
    offs = rows.to(tl.int64)[:, None] * stride_h + cols[None, :]
    h = tl.load(H + offs, mask=m, other=0.0).to(tl.float32)
    b = tl.load(B1 + e.to(tl.int64)[:, None] * stride_b + cols[None, :], mask=m & (e < E)[:, None], other=0.0)
    h = (h + b.to(tl.float32)).to(H.dtype.element_ty)  # rounded as stored, so the backward sees the same h
    tl.store(H + offs, h, mask=m)
    tl.store(A + offs, _act(h.to(tl.float32), ACT).to(A.dtype.element_ty), mask=m)


def bias_act_fwd_(h_NH: torch.Tensor, b1_EH: torch.Tensor, sorted_e_N: torch.Tensor, activation: str,
                  offs_E: torch.Tensor) -> torch.Tensor:
    """h += b1[sorted_e] in place, then a = act(h), for the rows before offs_E[-1]; returns a."""
    assert h_NH.stride(1) == 1 and b1_EH.stride(1) == 1
    n, hd = h_NH.shape
    a = torch.empty_like(h_NH)
    br, bc = (16, min(triton.next_power_of_2(hd), 256)) if h_NH.is_cuda else (8, 32)
    grid = (triton.cdiv(n, br), triton.cdiv(hd, bc))
    _bias_act_kernel[grid](h_NH, b1_EH, sorted_e_N, a, offs_E, n, hd, b1_EH.shape[0], h_NH.stride(0), b1_EH.stride(0),
                           ACT=ACT_IDS[activation], BLOCK_R=br, BLOCK_C=bc, num_warps=4)
    return a


@triton.jit
def _segment_sum_kernel(X, SORTED_E, OUT, N, C, E, stride_x, stride_o, BLOCK_R: tl.constexpr,
                        BLOCK_C: tl.constexpr):
    # rows are sorted by expert, so a block of rows spans few experts: one partial sum and one atomic add each
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    rm = rows < N
    cm = cols < C
    e = tl.load(SORTED_E + rows, mask=rm, other=E)
    x = tl.load(X + rows.to(tl.int64)[:, None] * stride_x + cols[None, :], mask=rm[:, None] & cm[None, :],
                other=0.0).to(tl.float32)
    e_lo = tl.min(e, axis=0)
    e_hi = tl.minimum(tl.max(e, axis=0), E - 1)
    for ee in range(e_lo, e_hi + 1):
        part = tl.sum(tl.where((e == ee)[:, None], x, 0.0), axis=0)
        tl.atomic_add(OUT + ee * stride_o + cols, part, mask=cm)  # E * C fits in int32


def segment_sum(x_NC: torch.Tensor, sorted_e_N: torch.Tensor, n_experts: int) -> torch.Tensor:
    """out_EC[e] = sum of the rows of x whose (sorted) expert id is e, in float32; ids >= E are skipped.

    float32 atomics across row blocks: the summation order, hence the last bits, can vary between runs.
    """
    assert x_NC.stride(1) == 1
    n, c = x_NC.shape
    out = torch.zeros((n_experts, c), dtype=torch.float32, device=x_NC.device)
    br, bc = (64, min(triton.next_power_of_2(c), 128)) if x_NC.is_cuda else (8, 32)
    grid = (triton.cdiv(n, br), triton.cdiv(c, bc))
    _segment_sum_kernel[grid](x_NC, sorted_e_N, out, n, c, n_experts, x_NC.stride(0), out.stride(0),
                              BLOCK_R=br, BLOCK_C=bc, num_warps=4)
    return out


# ------------------------------------------------------------------------------------------- grouped GEMMs
def block_schedule(counts_E: torch.Tensor, n_rows: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Map row blocks to experts without a host sync: returns (block_expert, block_start_E, n_blocks).

    n_blocks = cdiv(N, BM) + E bounds the real number of blocks; blocks past it get expert E (skipped).
    """
    e = counts_E.numel()
    blocks_e = (counts_E + block_m - 1) // block_m
    cum = torch.cumsum(blocks_e, 0)
    n_blocks = triton.cdiv(n_rows, block_m) + e
    ids = torch.arange(n_blocks, device=counts_E.device, dtype=cum.dtype)
    block_expert = torch.searchsorted(cum, ids, right=True).to(torch.int32)
    return block_expert, (cum - blocks_e).to(torch.int32), n_blocks


@triton.jit
def _gmm_kernel(A, B, C, PERM, OFFS, BLOCK_EXPERT, BLOCK_START, E, N, K,
                stride_am, stride_ak, stride_be, stride_bk, stride_bn, stride_cm,
                GATHER: tl.constexpr, TOPK: tl.constexpr, PREC: tl.constexpr, DOT_F32: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(BLOCK_EXPERT + pid_m)
    valid = e < E
    e = tl.minimum(e, E - 1)
    row_lo = tl.load(OFFS + e - 1, mask=e > 0, other=0)
    row_hi = tl.where(valid, tl.load(OFFS + e), 0)
    first = row_lo + (pid_m - tl.load(BLOCK_START + e)) * BM
    rows = first + tl.arange(0, BM)
    rm = rows < row_hi
    if GATHER:
        src = (tl.load(PERM + rows, mask=rm, other=0) // TOPK).to(tl.int64)
    else:
        src = rows.to(tl.int64)
    cols = pid_n * BN + tl.arange(0, BN)
    cm = cols < N
    b_base = B + e.to(tl.int64) * stride_be
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        km = ks < K
        a = tl.load(A + src[:, None] * stride_am + ks[None, :] * stride_ak, mask=rm[:, None] & km[None, :],
                    other=0.0)
        b = tl.load(b_base + ks[:, None] * stride_bk + cols[None, :] * stride_bn, mask=km[:, None] & cm[None, :],
                    other=0.0)
        if DOT_F32:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PREC)
    tl.store(C + rows.to(tl.int64)[:, None] * stride_cm + cols[None, :], acc.to(C.dtype.element_ty),
             mask=rm[:, None] & cm[None, :])


def _prec(t: torch.Tensor) -> dict:
    """Dot settings. fp32 operands: full-precision products ("ieee"), so the fp32 path is not tf32.

    On CPU (the interpreter), Triton 3.9's interpreter returns garbage for a bf16 tl.dot (numpy has no bf16),
    so the operands are upcast to fp32 first: bf16 x bf16 products are exact in fp32 and the GPU's MMA
    accumulates in fp32 too, so this computes the same function.
    """
    upcast = not t.is_cuda
    return {"PREC": "ieee" if t.dtype == torch.float32 or upcast else "tf32", "DOT_F32": upcast}


def grouped_mm(a_MK: torch.Tensor, b_EKN: torch.Tensor, offs_E: torch.Tensor, counts_E: torch.Tensor,
               perm_N: torch.Tensor | None = None, topk: int = 1) -> torch.Tensor:
    """c[rows of e] = a[rows of e] @ b[e], rows of e = offs[e-1]:offs[e] of the sorted order.

    With perm_N given, row p of A is a_MK[perm_N[p] // topk] (the gather is fused into the operand load and
    the sorted copy of the tokens is never written). b may be any strided view (a transpose included).
    """
    n = perm_N.numel() if perm_N is not None else a_MK.shape[0]
    e, k, nn = b_EKN.shape
    c = torch.empty((n, nn), dtype=a_MK.dtype, device=a_MK.device)
    if a_MK.is_cuda:
        bm, bn, bk, warps, stages = 64, 128, 64, 4, 3
    else:
        bm, bn, bk, warps, stages = 16, 16, 16, 1, 1
    block_expert, block_start, n_blocks = block_schedule(counts_E, n, bm)
    grid = (n_blocks, triton.cdiv(nn, bn))
    _gmm_kernel[grid](a_MK, b_EKN, c, perm_N if perm_N is not None else offs_E, offs_E, block_expert, block_start,
                      e, nn, k, a_MK.stride(0), a_MK.stride(1), *b_EKN.stride(), c.stride(0),
                      GATHER=perm_N is not None, TOPK=topk, **_prec(a_MK), BM=bm, BN=bn, BK=bk,
                      num_warps=warps, num_stages=stages)
    return c


@triton.jit
def _gmm_wgrad_kernel(X, DY, DW, PERM, OFFS, K, N, stride_xm, stride_xk, stride_dym, stride_dwe, stride_dwk,
                      GATHER: tl.constexpr, TOPK: tl.constexpr, PREC: tl.constexpr, DOT_F32: tl.constexpr,
                      BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    e = tl.program_id(0)
    n_tiles = tl.cdiv(N, BN)
    pid_k = tl.program_id(1) // n_tiles
    pid_n = tl.program_id(1) % n_tiles
    row_lo = tl.load(OFFS + e - 1, mask=e > 0, other=0)
    row_hi = tl.load(OFFS + e)
    ks = pid_k * BK + tl.arange(0, BK)
    cols = pid_n * BN + tl.arange(0, BN)
    km = ks < K
    cm = cols < N
    acc = tl.zeros((BK, BN), dtype=tl.float32)
    for r0 in range(row_lo, row_hi, BM):
        rows = r0 + tl.arange(0, BM)
        rm = rows < row_hi
        if GATHER:
            src = (tl.load(PERM + rows, mask=rm, other=0) // TOPK).to(tl.int64)
        else:
            src = rows.to(tl.int64)
        xt = tl.load(X + src[None, :] * stride_xm + ks[:, None] * stride_xk, mask=km[:, None] & rm[None, :],
                     other=0.0)  # (BK, BM): the transpose is in the addressing
        dy = tl.load(DY + rows.to(tl.int64)[:, None] * stride_dym + cols[None, :], mask=rm[:, None] & cm[None, :],
                     other=0.0)
        if DOT_F32:
            xt = xt.to(tl.float32)
            dy = dy.to(tl.float32)
        acc = tl.dot(xt, dy, acc, input_precision=PREC)
    tl.store(DW + e.to(tl.int64) * stride_dwe + ks[:, None] * stride_dwk + cols[None, :],
             acc.to(DW.dtype.element_ty), mask=km[:, None] & cm[None, :])


def grouped_mm_wgrad(x_MK: torch.Tensor, dy_NN: torch.Tensor, offs_E: torch.Tensor,
                     perm_N: torch.Tensor | None = None, topk: int = 1) -> torch.Tensor:
    """dw[e] = x[rows of e]^T @ dy[rows of e] -> (E, K, N); an expert with no rows gets zeros.

    With perm_N given, row p of x is x_MK[perm_N[p] // topk] (gather fused into the load).
    """
    e = offs_E.numel()
    k = x_MK.shape[1]
    nn = dy_NN.shape[1]
    assert dy_NN.stride(1) == 1
    dw = torch.empty((e, k, nn), dtype=x_MK.dtype, device=x_MK.device)
    if x_MK.is_cuda:
        bm, bn, bk, warps, stages = 64, 128, 128, 8, 3
    else:
        bm, bn, bk, warps, stages = 16, 16, 16, 1, 1
    grid = (e, triton.cdiv(k, bk) * triton.cdiv(nn, bn))
    _gmm_wgrad_kernel[grid](x_MK, dy_NN, dw, perm_N if perm_N is not None else offs_E, offs_E, k, nn,
                            x_MK.stride(0), x_MK.stride(1), dy_NN.stride(0), dw.stride(0), dw.stride(1),
                            GATHER=perm_N is not None, TOPK=topk, **_prec(x_MK), BM=bm, BN=bn, BK=bk,
                            num_warps=warps, num_stages=stages)
    return dw
