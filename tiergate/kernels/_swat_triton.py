"""Triton masked-operand matmul for SWAT: c = mask(a) @ mask(b), |v| < threshold zeroed as the tile is loaded.

The masked copies of the weight (and of the activations in the backward) are never written to memory. The
thresholds are 0-dim device tensors, read inside the kernel, so choosing them costs no host sync.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _masked_mm_kernel(A, B, C, THR_A, THR_B, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm,
                      stride_cn, MASK_A: tl.constexpr, MASK_B: tl.constexpr, PREC: tl.constexpr,
                      DOT_F32: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                      GROUP_M: tl.constexpr):
    # grouped tile order: GROUP_M row tiles share their column tiles while those are in L2
    pid = tl.program_id(0)
    n_m, n_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    group = pid // (GROUP_M * n_n)
    first_m = group * GROUP_M
    size_m = tl.minimum(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * n_n)) % size_m
    pid_n = (pid % (GROUP_M * n_n)) // size_m
    rows = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)
    cols = (pid_n * BN + tl.arange(0, BN)).to(tl.int64)
    rm, cm = rows < M, cols < N
    thr_a = 0.0
    thr_b = 0.0
    if MASK_A:
        thr_a = tl.load(THR_A).to(tl.float32)
    if MASK_B:
        thr_b = tl.load(THR_B).to(tl.float32)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        km = ks < K
        a = tl.load(A + rows[:, None] * stride_am + ks[None, :] * stride_ak, mask=rm[:, None] & km[None, :],
                    other=0.0)
        b = tl.load(B + ks[:, None] * stride_bk + cols[None, :] * stride_bn, mask=km[:, None] & cm[None, :],
                    other=0.0)
        if MASK_A:
            a = tl.where(tl.abs(a.to(tl.float32)) >= thr_a, a, tl.zeros_like(a))
        if MASK_B:
            b = tl.where(tl.abs(b.to(tl.float32)) >= thr_b, b, tl.zeros_like(b))
        if DOT_F32:  # interpreter: its bf16 dot is wrong, and fp32 products of bf16 values are exact
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PREC)
    tl.store(C + rows[:, None] * stride_cm + cols[None, :] * stride_cn, acc.to(C.dtype.element_ty),
             mask=rm[:, None] & cm[None, :])


def masked_mm(a_MK: torch.Tensor, b_KN: torch.Tensor, thr_a: torch.Tensor | None = None,
              thr_b: torch.Tensor | None = None) -> torch.Tensor:
    """c_MN = (a * [|a| >= thr_a]) @ (b * [|b| >= thr_b]); a threshold of None means no mask. Any strides."""
    m, k = a_MK.shape
    k2, n = b_KN.shape
    assert k == k2, (a_MK.shape, b_KN.shape)
    c = torch.empty((m, n), dtype=a_MK.dtype, device=a_MK.device)
    if a_MK.is_cuda:
        bm, bn, bk, warps, stages = 128, 128, 64, 8, 3
    else:
        bm, bn, bk, warps, stages = 16, 16, 16, 1, 1
    upcast = not a_MK.is_cuda
    dummy = c
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    _masked_mm_kernel[grid](a_MK, b_KN, c, thr_a if thr_a is not None else dummy,
                            thr_b if thr_b is not None else dummy, m, n, k, *a_MK.stride(), *b_KN.stride(),
                            *c.stride(), MASK_A=thr_a is not None, MASK_B=thr_b is not None,
                            PREC="ieee" if a_MK.dtype == torch.float32 or upcast else "tf32", DOT_F32=upcast,
                            BM=bm, BN=bn, BK=bk, GROUP_M=8, num_warps=warps, num_stages=stages)
    return c


@triton.jit
def _radix_hist_kernel(X, HIST, SEL, n, LEVEL: tl.constexpr, BLOCK: tl.constexpr):
    # key = top 16 bits of |x| as float32 (a bf16 magnitude); level 0 counts key >> 7 (sign-free exponent),
    # level 1 counts the 7 low bits of the keys whose exponent equals SEL[0] (others go to bin 255)
    sel = 0
    if LEVEL == 1:
        sel = tl.load(SEL)
    acc = tl.zeros((256,), dtype=tl.int32)
    for start in range(tl.program_id(0).to(tl.int64) * BLOCK, n, tl.num_programs(0).to(tl.int64) * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(X + offs, mask=offs < n, other=0.0).to(tl.float32)  # padding counts as 0: removed by caller
        key = (tl.abs(x).to(tl.int32, bitcast=True) >> 16) & 0x7FFF
        if LEVEL == 0:
            bins = key >> 7
        else:
            bins = tl.where((key >> 7) == sel, key & 127, 255)
        acc += tl.histogram(bins, 256)
    tl.atomic_add(HIST + tl.arange(0, 256), acc)


def radix_hist(x: torch.Tensor, level: int, sel: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """256-bin histogram of the bf16 magnitude keys of x (see _radix_hist_kernel); returns (hist, n_padding)."""
    x = x.reshape(-1)
    n = x.numel()
    block = 4096 if x.is_cuda else 256
    programs = min(triton.cdiv(n, block), 1024 if x.is_cuda else 4)
    hist = torch.zeros(256, dtype=torch.int32, device=x.device)
    _radix_hist_kernel[(programs,)](x, hist, sel if sel is not None else hist, n, LEVEL=level, BLOCK=block,
                                    num_warps=8 if x.is_cuda else 1)
    # every block start < n is visited once, at full width: the padding is the tail of the last block
    return hist, triton.cdiv(n, block) * block - n
