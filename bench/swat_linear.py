"""SWAT / 2:4 sparse linear layers against the dense linear on a GPU (bf16).

Rows per shape (M tokens, N out features, K in features): forward of the dense layer, of the 2:4 layer with the
weight compressed beforehand (inference) and compressed in the step (training, the weight changes every step),
and forward + backward of dense, 2:4 (our _Swat24: sparse forward, dense backward), SWAT top-K through the
Triton masked-operand kernel and through the plain-torch reference. TFLOP/s are dense-equivalent (2*M*N*K per
product), so a sparse speed-up shows as a higher rate.

    python bench/swat_linear.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiergate.kernels.swat import semi_structured_status, swat_linear, topk_threshold, two_four_mask  # noqa: E402

SHAPES = [(16384, 11008, 4096), (8192, 4096, 4096), (16384, 4096, 1024), (65536, 2048, 512)]


def bench(fn, warmup=25, reps=100):
    import triton.testing

    return triton.testing.do_bench(fn, warmup=warmup, rep=reps, return_mode="median")  # ms


def bench_shape(m, n, k, usable):
    from torch.sparse import to_sparse_semi_structured

    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5).requires_grad_()
    dy = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
    fl = 2.0 * m * n * k
    r = {"M": m, "N": n, "K": k}
    with torch.no_grad():
        r["dense_fwd"] = bench(lambda: F.linear(x, w))
        if usable:
            ws = to_sparse_semi_structured(w * two_four_mask(w))
            r["s24_fwd_precompressed"] = bench(lambda ws=ws: F.linear(x, ws))
            r["s24_fwd_with_compress"] = bench(lambda: F.linear(x, to_sparse_semi_structured(w * two_four_mask(w))))
            err = (F.linear(x, ws).float() - F.linear(x, w * two_four_mask(w)).float()).norm() / F.linear(
                x, w * two_four_mask(w)).float().norm()
            r["s24_rel_err"] = err.item()
            del ws

    with torch.no_grad():
        r["two_four_mask"] = bench(lambda: two_four_mask(w))
        r["topk_threshold_x"] = bench(lambda: topk_threshold(x, 0.2))
        if usable:
            r["to_sparse_semi_structured"] = bench(lambda: to_sparse_semi_structured(w * two_four_mask(w)))
            try:  # torch's fused prune + compress (the tile-wise 2:4 rule torchao trains with), for comparison
                from torch.sparse import SparseSemiStructuredTensorCUSPARSELT as Cslt

                r["prune_dense_static_sort"] = bench(lambda: Cslt.prune_dense_static_sort(w))
            except Exception as exc:  # noqa: BLE001
                r["prune_dense_static_sort"] = f"{type(exc).__name__}: {exc}"[:200]

    def fb(fn):
        def step():
            x.grad = w.grad = None
            fn().backward(dy)
        return step

    r["dense_fwdbwd"] = bench(fb(lambda: F.linear(x, w)))
    r["s24_fwdbwd"] = bench(fb(lambda: swat_linear(x, w, mode="2:4")))
    r["swat_triton_fwdbwd"] = bench(fb(lambda: swat_linear(x, w, density=0.2, backend="triton")))
    r["swat_reference_fwdbwd"] = bench(fb(lambda: swat_linear(x, w, density=0.2, backend="reference")))
    y_t = swat_linear(x, w, density=0.2, backend="triton")
    y_r = swat_linear(x, w, density=0.2, backend="reference")
    r["swat_rel_err"] = ((y_t.float() - y_r.float()).norm() / y_r.float().norm()).item()
    for key in [c for c in r if (c.endswith("fwd") or "fwd_" in c or c.endswith("fwdbwd")) and "err" not in c]:
        r[key + "_tflops"] = (fl * (3 if key.endswith("fwdbwd") else 1)) / r[key] / 1e9
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    args = ap.parse_args()
    import triton

    usable, reason = semi_structured_status("cuda")
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "semi_structured": reason, "command": " ".join(sys.argv)}
    print(meta, flush=True)
    rows = []
    for m, n, k in SHAPES:
        r = bench_shape(m, n, k, usable)
        rows.append(r)
        print({c: (round(v, 3) if isinstance(v, float) else v) for c, v in r.items()}, flush=True)
        torch.cuda.empty_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "swat_linear.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"{meta['gpu']}; torch {meta['torch']}; triton {meta['triton']}; 2:4: {reason}", "",
             "| M | N | K | dense fwd ms | 2:4 fwd ms (precompressed) | 2:4 fwd ms (+compress) | dense fwd+bwd ms "
             "| 2:4 fwd+bwd ms | SWAT Triton fwd+bwd ms | SWAT torch fwd+bwd ms |", "|" + "---|" * 10]
    for r in rows:
        cells = [r["M"], r["N"], r["K"], r["dense_fwd"], r.get("s24_fwd_precompressed", float("nan")),
                 r.get("s24_fwd_with_compress", float("nan")), r["dense_fwdbwd"], r["s24_fwdbwd"],
                 r["swat_triton_fwdbwd"], r["swat_reference_fwdbwd"]]
        lines.append("| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |")
    md = "\n".join(lines) + "\n"
    (out / "swat_linear.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
