"""On a CUDA machine: the one MoE module and the one SWAT module run the Triton kernels, and agree with the
PyTorch reference path, as the training module uses them (bf16 autocast, forward and backward).

    python3 experiments/gpu_modules_check.py          # prints one JSON line per check, exits 1 on a mismatch

Run beside ``TIERGATE_KERNEL_TESTS_CUDA=1 python3 -m pytest tests/kernels`` (the kernels' own tests).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiergate.models.moe import MoEConfig, MoEFFN  # noqa: E402
from tiergate.training.swat import SwatConfig, SwatLinear  # noqa: E402


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def _timed(fn, n: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1000


def check_swat(dev: str = "cuda") -> dict:
    torch.manual_seed(0)
    base = nn.Linear(384, 1536).to(dev)
    x = torch.randn(4096, 384, device=dev, requires_grad=True)
    out = {}
    for backend in ("triton", "reference"):
        layer = SwatLinear(base, SwatConfig(weight_sparsity=0.8, act_sparsity=0.8, backend=backend)).train()
        x.grad, base.weight.grad = None, None

        def step(layer=layer):
            with torch.autocast(dev, dtype=torch.bfloat16):
                y = layer(x)
            y.float().square().mean().backward()
            return y

        y = step()
        out[backend] = (y.detach(), x.grad.detach().clone(), base.weight.grad.detach().clone(), _timed(step))
    t, r = out["triton"], out["reference"]
    return {"check": "swat layer, bf16 autocast, 4096x384 -> 1536", "y_rel": _rel(t[0], r[0]),
            "dx_rel": _rel(t[1], r[1]), "dw_rel": _rel(t[2], r[2]), "ms_triton": round(t[3], 3),
            "ms_reference": round(r[3], 3), "ok": max(_rel(t[0], r[0]), _rel(t[1], r[1]), _rel(t[2], r[2])) < 0.05}


def check_moe(dev: str = "cuda") -> dict:
    torch.manual_seed(0)
    cfg = MoEConfig(d_model=384, d_hidden=1536, n_experts=8, top_k=2, backend="triton")
    tri = MoEFFN(cfg).to(dev)
    ref = MoEFFN(MoEConfig(**{**cfg.__dict__, "backend": "reference"})).to(dev)
    ref.load_state_dict(tri.state_dict())
    x = torch.randn(16, 256, 384, device=dev)
    res = {}
    for name, layer in (("triton", tri), ("reference", ref)):
        xi = x.clone().requires_grad_(True)

        def step(layer=layer, xi=xi):
            with torch.autocast(dev, dtype=torch.bfloat16):
                y = layer(xi)
            (y.float().square().mean() + layer.aux_loss).backward()
            return y

        y = step()
        res[name] = (y.detach(), xi.grad.detach().clone(), layer.w1.grad.detach().clone(), _timed(step))
    t, r = res["triton"], res["reference"]
    worst = max(_rel(t[0], r[0]), _rel(t[1], r[1]), _rel(t[2], r[2]))
    return {"check": "moe layer (the upcycled blocks' shape), bf16 autocast, 4096 tokens, 8 experts top-2",
            "y_rel": _rel(t[0], r[0]), "dx_rel": _rel(t[1], r[1]), "dw1_rel": _rel(t[2], r[2]),
            "ms_triton": round(t[3], 3), "ms_reference": round(r[3], 3), "ok": worst < 0.05}


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    results = [check_swat(), check_moe()]
    for r in results:
        print(json.dumps(r))
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
