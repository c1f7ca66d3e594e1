"""Shared helpers for the kernel tests: high-precision comparison and random inputs."""

from __future__ import annotations

import torch

# Relative-norm tolerances ||out - ref|| / ||ref|| against a float64 reference computed from the same inputs.
# fp32: the kernels compute in fp32 with full-precision dot products ("ieee", not tf32); the error is a few
# ulps accumulated over sums of a few dozen terms, ~1e-6; 1e-4 leaves room for reordered sums on the GPU.
# bf16: every intermediate that is stored (h, a, y, dy, dh, the outputs) is rounded to bf16 (unit roundoff
# 2^-9 ~ 2e-3); a chain of ~4 such roundings with random signs gives ~5e-3 in norm; 2e-2 leaves room without
# letting a wrong index (error ~1) or a dropped row (error >~ 1/sqrt(rows)) pass.
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.isfinite(out64).all(), "non-finite values in the output"
    denom = ref64.norm().item()
    return (out64 - ref64).norm().item() / (denom if denom > 0 else 1.0)


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    err = rel_err(out, ref)
    assert err <= TOL[dtype], f"{what}: relative error {err:.2e} > {TOL[dtype]:.0e} ({dtype})"
