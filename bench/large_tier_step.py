"""The large tier's training step on a GPU: Triton kernels against the plain-PyTorch reference path.

One step is what ``tiergate.training.loop`` does per optimizer step: forward under bf16 autocast (the Runtime's),
cross-entropy + the MoE auxiliary losses, backward, the global-norm clip (one host sync), the optimizer step.
The same model (same seed, same batches) runs twice: with the kernels (``force_backend("triton")``) and with
the reference path forced (``force_backend("reference")``: the per-expert loop, autograd for the backward).

    python bench/large_tier_step.py --out DIR                       # all configs, both paths, one profile each
    python bench/large_tier_step.py --out DIR --configs debian --device cpu --backends reference --steps 2

Configs (``CONFIGS``): ``debian`` is the large tier as ``train_large`` trains it on debian-packages with the
hashed encoder (d_model 128, one MoE block of 8 experts x 256, top-2; the step budget grows the batch to 512),
on real feature rows when the data set is cached, else synthetic rows of the same shape; ``wide`` and ``wider``
are the same architecture scaled to where the expert matmuls dominate the step. Timing: CUDA events around
each step after warm-up, median over the timed steps, two alternating rounds per path (their spread is
reported). Writes ``large_tier_step.json`` and ``profile_<config>_<backend>.txt`` (torch.profiler's top
kernels by device time) under --out and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiergate.kernels import force_backend  # noqa: E402
from tiergate.models.encoder import HashedNgramConfig  # noqa: E402
from tiergate.models.large import LargeConfig, SparseClassifier, preset  # noqa: E402
from tiergate.models.moe import MoEConfig  # noqa: E402
from tiergate.training.loop import build_optimizer, clip_grad_norm  # noqa: E402
from tiergate.training.parallel import Runtime  # noqa: E402

N_CLASSES = 58  # debian-packages' sections


def _debian() -> tuple[LargeConfig, int]:
    cfg = preset("hashed")
    cfg.ghost_size = 64  # what scale_to_budget sets on debian-packages (batch 64 -> 512)
    return cfg, 512


def _scaled(d_model: int, n_blocks: int, n_experts: int, d_hidden: int, batch: int):
    def build() -> tuple[LargeConfig, int]:
        cfg = preset("hashed")
        cfg.d_model, cfg.n_blocks = d_model, n_blocks
        cfg.moe = MoEConfig(d_model=d_model, d_hidden=d_hidden, n_experts=n_experts, top_k=2)
        cfg.bag = HashedNgramConfig(n_buckets=2 ** 17)
        # plain BatchNorm: GhostBatchNorm1d normalises its chunks one by one (at 16k rows and chunks of 64,
        # 256 BatchNorm launches forward and backward per step), which would time the chunk loop rather than
        # the kernels; --ghost-size puts it back
        cfg.ghost_size = None
        return cfg, batch
    return build


CONFIGS = {
    "debian": _debian,
    "wide": _scaled(d_model=1024, n_blocks=2, n_experts=16, d_hidden=2048, batch=16384),
    "wider": _scaled(d_model=512, n_blocks=4, n_experts=32, d_hidden=1024, batch=32768),
}


def real_rows(data: str, device: torch.device):
    """(DeviceTable of debian-packages' training rows, n_classes, avg n-grams per row), or None if not cached."""
    try:
        from tiergate.data import load_dataset
        from tiergate.models.large import prepare_training
        from tiergate.training.data import DeviceTable

        prep = prepare_training(load_dataset(data), preset("hashed"))
    except Exception as e:  # noqa: BLE001 - no cached data: synthetic rows of the same shape instead
        print(f"[data] {data} unavailable ({type(e).__name__}: {e}); synthetic rows", flush=True)
        return None
    table = prep.table.subset(prep.fit_idx)
    return DeviceTable(table, device), len(prep.labels), table.bag.nnz / table.bag.shape[0]


def synthetic_batch(batch: int, n_buckets: int, nnz: float, n_classes: int, device, g: torch.Generator):
    """A batch shaped like the hashed bag's: ~nnz n-gram ids per row (Zipf-like: small ids more frequent),
    TF-IDF-like positive weights, random labels."""
    lengths = torch.randint(max(int(nnz * 0.5), 1), int(nnz * 1.5) + 1, (batch,), generator=g)
    total = int(lengths.sum())
    ids = (torch.rand(total, generator=g) ** 3 * n_buckets).long().clamp_max(n_buckets - 1)
    offsets = torch.cumsum(lengths, 0) - lengths
    return {"y": torch.randint(0, n_classes, (batch,), generator=g).to(device), "bag_ids": ids.to(device),
            "bag_offsets": offsets.to(device), "bag_weights": (torch.rand(total, generator=g) * 0.2).to(device)}


def make_batches(cfg: LargeConfig, batch: int, rows, device, n: int = 4) -> list[dict]:
    """``n`` batches, rotated through the timed steps (so no step reuses the previous one's inputs)."""
    g = torch.Generator().manual_seed(0)
    if rows is not None and batch <= len(rows[0].y_t):
        table = rows[0]
        return [table.batch(np.random.default_rng(i).choice(len(table.y_t), batch, replace=False)) for i in range(n)]
    nnz = rows[2] if rows is not None else 40.0
    return [synthetic_batch(batch, cfg.bag.n_buckets, nnz, N_CLASSES, device, g) for _ in range(n)]


def train_step(model, opt, batch, rt: Runtime, clip: float | None) -> None:
    with rt.autocast():
        logits = model(batch)
        loss = F.cross_entropy(logits.float(), batch["y"]) + model.aux_loss().to(logits.device)
    loss.backward()
    if clip:
        clip_grad_norm(model.parameters(), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(model, opt, batches, rt, clip, steps: int) -> list[float]:
    """Milliseconds per step: CUDA events on a GPU, the host clock after a sync elsewhere."""
    out = []
    for i in range(steps):
        b = batches[i % len(batches)]
        if rt.device.type == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            train_step(model, opt, b, rt, clip)
            e.record()
            e.synchronize()
            out.append(s.elapsed_time(e))
        else:
            t0 = time.perf_counter()
            train_step(model, opt, b, rt, clip)
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def build(cfg: LargeConfig, n_classes: int, rt: Runtime):
    torch.manual_seed(0)
    model = rt.apply(SparseClassifier(cfg, n_classes, 0)).train()
    return model, build_optimizer(model, cfg.train)


def profile_table(model, opt, batches, rt, clip, path: Path) -> dict:
    """Profile 3 steps; write the top kernels by self device time; return the share of MoE kernels."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if rt.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for i in range(3):
            train_step(model, opt, batches[i % len(batches)], rt, clip)
        _sync(rt.device)
    avg = prof.key_averages()
    on_dev = rt.device.type == "cuda"
    key = "self_device_time_total" if on_dev else "self_cpu_time_total"

    def t(evt) -> float:
        return float(getattr(evt, key, 0.0) or getattr(evt, "self_cuda_time_total", 0.0) or 0.0)

    try:
        text = avg.table(sort_by=key, row_limit=30)
    except Exception:  # noqa: BLE001 - older/newer profilers name the sort key differently
        text = avg.table(sort_by="self_cuda_time_total" if on_dev else "self_cpu_time_total", row_limit=30)
    path.write_text(text)
    kernels = [(e.key, t(e) / 3e3, e.count // 3) for e in avg if t(e) > 0]  # ms per step, launches per step
    if on_dev:  # device kernels only: host-side ops (aten::*) also carry device time in the totals
        kernels = [k for k in kernels if not k[0].startswith(("aten::", "autograd::", "Optimizer.", "cuda", "ProfilerStep"))]
    total = sum(k[1] for k in kernels)
    from tiergate.kernels import _moe_triton as km

    names = {n for n, v in vars(km).items() if n.endswith("_kernel") and hasattr(v, "fn")}  # our @triton.jit
    ours = [k for k in kernels if k[0].split("(")[0] in names]
    gmm = [k for k in kernels if "GroupProblemShape" in k[0] or "_gmm" in k[0]]  # cutlass grouped GEMM, ours
    return {"device_ms_per_step": round(total, 3),
            "triton_moe_kernels": {k[0]: round(k[1], 4) for k in sorted(ours, key=lambda k: -k[1])},
            "triton_moe_ms_per_step": round(sum(k[1] for k in ours), 4),
            "grouped_gemm_ms_per_step": round(sum(k[1] for k in gmm), 4),
            "top": [(k[0][:90], round(k[1], 4), k[2]) for k in sorted(kernels, key=lambda k: -k[1])[:12]]}


def run_config(name: str, rows, device, backends, steps: int, warmup: int, profile: bool, out: Path,
               sparse_bag: bool = False, ghost_size: int | None = None) -> dict:
    cfg, batch = CONFIGS[name]()
    if name != "debian" and not sparse_bag:
        # The scaled configs train the bag with dense gradients, as the experiments on the GPU do (LargeConfig:
        # sparse bag "off for LAMB/LARS/DDP on GPU"): at batch 16k x ~40 n-grams x width 1024 the sparse
        # gradient is a 2.7 GB (nnz x D) tensor to coalesce every step, and the first run of this script hit an
        # illegal memory access at that size (in coalesce or before it: not isolated).
        cfg.sparse_bag = False
    if name != "debian" and ghost_size:
        cfg.ghost_size = ghost_size
    n_classes = rows[1] if rows is not None else N_CLASSES
    rt = Runtime(device=device, bf16=device.type == "cuda")
    batches = make_batches(cfg, batch, rows, device)
    rec = {"config": name, "batch": batch, "d_model": cfg.d_model, "n_blocks": cfg.n_blocks,
           "experts": cfg.moe.n_experts, "expert_hidden": cfg.moe.d_hidden, "top_k": cfg.moe.top_k,
           "real_rows": rows is not None and batch <= len(rows[0].y_t), "sparse_bag": cfg.sparse_bag,
           "ghost_size": cfg.ghost_size,
           "model": asdict(cfg)}
    state = {}
    for b in backends:
        with force_backend(b):
            model, opt = build(cfg, n_classes, rt)
            n_params = sum(p.numel() for p in model.parameters())
            time_steps(model, opt, batches, rt, cfg.train.clip_norm, warmup)  # compile, autotune, allocator
            state[b] = (model, opt)
        rec["n_params"] = n_params
    times = {b: [] for b in backends}
    peaks = {}
    for _ in range(2):  # alternate the paths: drift of clocks or temperature hits both alike
        for b in backends:
            model, opt = state[b]
            with force_backend(b):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                times[b].append(time_steps(model, opt, batches, rt, cfg.train.clip_norm, steps))
                if device.type == "cuda":
                    peaks[b] = max(peaks.get(b, 0), torch.cuda.max_memory_allocated() / 2 ** 20)
    for b in backends:
        rounds = [statistics.median(r) for r in times[b]]
        rec[b] = {"ms_median": round(statistics.median(sum(times[b], [])), 3),
                  "ms_round_medians": [round(x, 3) for x in rounds], "peak_mib": round(peaks.get(b, 0.0), 1),
                  "rows_per_s": round(batch / statistics.median(sum(times[b], [])) * 1e3)}
    if "triton" in rec and "reference" in rec:
        rec["reference_over_triton"] = round(rec["reference"]["ms_median"] / rec["triton"]["ms_median"], 3)
    if profile:
        for b in backends:
            with force_backend(b):
                model, opt = state[b]
                rec[b]["profile"] = profile_table(model, opt, batches, rt, cfg.train.clip_norm,
                                                  out / f"profile_{name}_{b}.txt")
    del state
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/bench/large_tier_step")
    ap.add_argument("--data", default="debian-packages")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--backends", default="triton,reference")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per round (two rounds per path)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--sparse-bag", action="store_true", help="keep the sparse bag gradient in the scaled configs")
    ap.add_argument("--ghost-size", type=int, default=None, help="Ghost BN chunk in the scaled configs (default: off)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(a.device)
    rows = real_rows(a.data, device)
    meta = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
            "command": "python " + " ".join(sys.argv), "steps": a.steps, "warmup": a.warmup}
    try:
        import triton
        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None
    results = []
    for name in a.configs.split(","):
        rec = run_config(name, rows, device, a.backends.split(","), a.steps, a.warmup, not a.no_profile, out,
                         a.sparse_bag, a.ghost_size)
        results.append(rec)
        (out / "large_tier_step.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
        print(json.dumps({k: v for k, v in rec.items() if k != "model"}, default=str)[:1500], flush=True)
    print(f"\n{meta['device']}, torch {meta['torch']}, triton {meta['triton']}; ms per training step (median)")
    print("| config | batch | D | blocks | E x H, k | params | triton ms | reference ms | ref / triton "
          "| peak MiB triton / ref | Triton MoE kernels ms/step (share of device time) |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---|---|")
    for r in results:
        tr, rf = r.get("triton", {}), r.get("reference", {})
        p = tr.get("profile", {})
        share = (f"{p['triton_moe_ms_per_step']:.3f} ({p['triton_moe_ms_per_step'] / p['device_ms_per_step']:.0%})"
                 if p.get("device_ms_per_step") else "-")
        print(f"| {r['config']} | {r['batch']} | {r['d_model']} | {r['n_blocks']} | {r['experts']} x "
              f"{r['expert_hidden']}, {r['top_k']} | {r['n_params'] / 1e6:.1f}M | {tr.get('ms_median', '-')} | "
              f"{rf.get('ms_median', '-')} | {r.get('reference_over_triton', '-')} | {tr.get('peak_mib', '-')} / "
              f"{rf.get('peak_mib', '-')} | {share} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
