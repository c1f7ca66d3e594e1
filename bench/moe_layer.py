"""MoE layer forward + backward on a GPU: our op against the per-expert loop, the torch._grouped_mm layer and a
dense GEMM pair of equal FLOPs.

Every variant does the same work per step: router logits (float32), top-k routing, permutation by expert, both
expert matmuls, the activation, the gated combine, and the full backward (x, router, w1, w2). The dense pair
runs the two GEMMs and the activation on N = T*k rows already laid out: the FLOPs of the experts, with no routing.
FLOPs counted: 12 * N * D * H per step (two GEMMs, forward and two backward products each).

    python bench/moe_layer.py --out $OUT            # the grid below; prints a table, writes JSON + markdown

Timing: CUDA events around each whole step after warm-up, median of the repeats. Peak memory: the peak of
allocated memory during one step above what was allocated before it, with no gradients held before the step
(inputs and weights excluded; the new gradients, saved activations and temporaries included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiergate.kernels.moe import moe_ffn, moe_ffn_reference, route  # noqa: E402

# (T, D, H, E, k): a subset of E in {4, 8, 16, 64}, k in {1, 2}, 4k-64k tokens, width 512-2048
GRID = (
    [(t, 1024, 4096, e, k) for t in (4096, 16384, 65536) for e in (4, 8, 16, 64) for k in (1, 2)]
    + [(t, 512, 2048, e, 2) for t in (16384, 65536) for e in (8, 64)]
    + [(t, 2048, 8192, e, k) for t in (16384, 32768) for e in (16, 64) for k in (1, 2)]
)
QUICK = [(16384, 1024, 4096, 8, 2), (65536, 1024, 4096, 64, 2), (32768, 2048, 8192, 16, 2)]


def grouped_layer(x_TD, idx_Tk, gate_Tk, w1_EDH, w2_EHD, activation="gelu"):
    """Baseline (b): the layer written with plain torch ops around torch._grouped_mm; autograd does the rest."""
    k = idx_Tk.shape[1]
    flat = idx_Tk.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=w1_EDH.shape[0])
    offs = torch.cumsum(counts, 0).to(torch.int32)
    tok = order // k
    h = torch._grouped_mm(x_TD[tok], w1_EDH, offs=offs)
    y = torch._grouped_mm(F.gelu(h) if activation == "gelu" else F.silu(h), w2_EHD, offs=offs)
    y = y * gate_Tk.reshape(-1)[order, None].to(y.dtype)
    return torch.zeros_like(x_TD).index_add(0, tok, y)


def ours(gemm):
    def layer(x_TD, idx_Tk, gate_Tk, w1_EDH, w2_EHD, activation="gelu"):
        return moe_ffn(x_TD, idx_Tk, gate_Tk, w1_EDH, w2_EHD, activation, backend="triton", gemm=gemm)
    return layer


def loop_layer(x_TD, idx_Tk, gate_Tk, w1_EDH, w2_EHD, activation="gelu"):
    """Baseline (a): sort once, then one pair of matmuls per expert (moe_ffn_reference, the CPU path)."""
    return moe_ffn_reference(x_TD, idx_Tk, gate_Tk, w1_EDH, w2_EHD, activation)


DEV = os.environ.get("BENCH_DEVICE", "cuda")  # "cpu" (with TRITON_INTERPRET=1) only to smoke-test this script


def time_step(step, warmup, reps):
    for _ in range(warmup):
        step()
    times, host = [], []
    for _ in range(reps):
        if DEV != "cuda":
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
            continue
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        t0 = time.perf_counter()
        step()
        host.append((time.perf_counter() - t0) * 1e3)  # host time to issue the step (~ms when launch-bound)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times), times, statistics.median(host) if host else float("nan")


def peak_extra(step, params):
    if DEV != "cuda":
        step()
        return float("nan")
    for p in params:  # the previous step's gradients would otherwise sit in the baseline
        p.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def run_config(t, d, h, e, k, variants, dtype=torch.bfloat16, activation="gelu"):
    dev = DEV
    g = torch.Generator(device=dev).manual_seed(t + d + e + k)
    x = torch.randn(t, d, device=dev, dtype=dtype, generator=g).requires_grad_()
    wr = (torch.randn(d, e, device=dev, generator=g) / d**0.5).requires_grad_()
    w1 = (torch.randn(e, d, h, device=dev, dtype=dtype, generator=g) / d**0.5).requires_grad_()
    w2 = (torch.randn(e, h, d, device=dev, dtype=dtype, generator=g) / h**0.5).requires_grad_()
    do = torch.randn(t, d, device=dev, dtype=dtype, generator=g)
    params = (x, wr, w1, w2)
    n = t * k
    flops = 12.0 * n * d * h
    row = {"T": t, "D": d, "H": h, "E": e, "k": k, "N": n, "flops": flops, "dtype": str(dtype), "variants": {}}

    def moe_step(layer, keep=None):
        def step():
            for p in params:
                p.grad = None
            idx, gate = route(x.float() @ wr, k, normalize=k > 1)
            out = layer(x, idx, gate, w1, w2, activation)
            out.backward(do)
            if keep is not None:
                keep["out"] = out.detach()
                keep["grads"] = [p.grad.detach().clone() for p in params]
        return step

    checks = {}
    for name, layer in variants.items():
        if name == "dense":
            continue
        keep = {}
        moe_step(layer, keep)()  # one checked step (also compiles the kernels)
        checks[name] = keep
    base = checks.get("grouped")
    for name, keep in checks.items():
        if base is not None and name != "grouped":
            row["variants"].setdefault(name, {})["rel_err_vs_grouped"] = {
                "out": rel(keep["out"], base["out"]),
                **{f"d{p}": rel(a, b) for p, a, b in zip(("x", "wr", "w1", "w2"), keep["grads"], base["grads"],
                                                        strict=True)}}
    del checks, base
    for name, layer in variants.items():
        if name == "dense":
            xd = torch.randn(n, d, device=dev, dtype=dtype, generator=g).requires_grad_()
            w1d = w1[0].detach().clone().requires_grad_()
            w2d = w2[0].detach().clone().requires_grad_()
            dod = torch.randn(n, d, device=dev, dtype=dtype, generator=g)

            def step(xd=xd, w1d=w1d, w2d=w2d, dod=dod):
                for p in (xd, w1d, w2d):
                    p.grad = None
                (F.gelu(xd @ w1d) @ w2d).backward(dod)
        else:
            step = moe_step(layer)
        slow = name == "loop"
        ms, times, host_ms = time_step(step, warmup=1 if slow else 3, reps=3 if slow else 10)
        mem = peak_extra(step, (xd, w1d, w2d) if name == "dense" else params)
        row["variants"].setdefault(name, {}).update(
            {"ms": ms, "times_ms": times, "host_ms": host_ms, "tflops": flops / ms / 1e9, "peak_extra_mib": mem})
    v = row["variants"]
    for name in v:
        if "grouped" in v:
            v[name]["speedup_vs_grouped"] = v["grouped"]["ms"] / v[name]["ms"]
        if "dense" in v:
            v[name]["time_vs_dense"] = v[name]["ms"] / v["dense"]["ms"]
    return row


def markdown(rows, meta):
    names = [n for n in ("loop", "grouped", "ours", "ours_tgemm", "dense") if n in rows[0]["variants"]]
    lines = [f"Machine: {meta['gpu']}; torch {meta['torch']}; triton {meta['triton']}; bf16, gelu, fwd+bwd.", "",
             "| T | D | H | E | k | " + " | ".join(f"{n} ms" for n in names)
             + " | ours TFLOP/s | dense TFLOP/s | ours vs grouped | ours/dense time | peak MiB grouped | peak MiB ours |",
             "|" + "---|" * (5 + len(names) + 6)]
    for r in rows:
        v = r["variants"]
        cells = [str(r[c]) for c in ("T", "D", "H", "E", "k")] + [f"{v[n]['ms']:.2f}" for n in names]
        o = v.get("ours", {})
        cells += [f"{o.get('tflops', float('nan')):.0f}", f"{v['dense']['tflops']:.0f}",
                  f"{o.get('speedup_vs_grouped', float('nan')):.2f}x", f"{o.get('time_vs_dense', float('nan')):.2f}x",
                  f"{v['grouped']['peak_extra_mib']:.0f}", f"{o.get('peak_extra_mib', float('nan')):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    ap.add_argument("--quick", action="store_true", help="three sizes only")
    ap.add_argument("--sizes", default="", help='"T,D,H,E,k;..." instead of the grid')
    ap.add_argument("--variants", default="loop,grouped,ours,ours_tgemm,dense")
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop starting new sizes after this long")
    args = ap.parse_args()
    import triton

    all_variants = {"loop": loop_layer, "grouped": grouped_layer, "ours": ours("torch"),
                    "ours_tgemm": ours("triton"), "dense": None}
    variants = {n: all_variants[n] for n in args.variants.split(",")}
    meta = {"gpu": torch.cuda.get_device_name() if DEV == "cuda" else DEV, "torch": torch.__version__, "triton": triton.__version__,
            "command": " ".join(sys.argv)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, t0 = [], time.time()
    grid = QUICK if args.quick else GRID
    if args.sizes:
        grid = [tuple(int(v) for v in c.split(",")) for c in args.sizes.split(";")]
    else:  # the headline sizes first, so that a run cut short still has them
        grid = QUICK + [c for c in grid if c not in QUICK]
    for cfg in grid:
        if time.time() - t0 > args.budget_s:
            print(f"budget reached: skipping {cfg} and later", flush=True)
            break
        try:
            row = run_config(*cfg, variants=variants)
            if DEV == "cuda":
                torch.cuda.empty_cache()
        except Exception as exc:  # noqa: BLE001 - report the failure and go on with the other sizes
            print(f"FAILED {cfg}: {type(exc).__name__}: {exc}", flush=True)
            if DEV == "cuda":
                torch.cuda.empty_cache()
            continue
        rows.append(row)
        v = row["variants"]
        print(" ".join(f"{k}={row[k]}" for k in ("T", "D", "H", "E", "k")), " ".join(
            f"{n}:{v[n]['ms']:.2f}ms(host {v[n]['host_ms']:.2f})/{v[n]['peak_extra_mib']:.0f}MiB" for n in v),
            "err:", {n: f"{max(v[n]['rel_err_vs_grouped'].values()):.1e}" for n in v if 'rel_err_vs_grouped' in v[n]},
            flush=True)
        (out / "moe_layer.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = markdown(rows, meta)
    (out / "moe_layer.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
