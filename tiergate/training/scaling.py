"""`tiergate plan fit`: a small grid of runs, the L(N, D) fit, and one held-out prediction checked.

Each run trains the hashed-encoder head at width ``d_model`` on ``rows`` training rows for one pass (so
D = rows seen, no repetition, as in Chinchilla), and records the held-out cross-entropy. N counts the
parameters one row activates: every dense weight of the head plus the ``nnz * d_model`` bag entries it reads
(the rest of the 2^17-row bag is never touched by that row). The fit's prediction for a budget outside the
grid is then checked by training the predicted N_opt once at that budget.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np

from tiergate.errors import ConfigError
from tiergate.training.plan import Fit, fit_runs


def active_params(model, avg_nnz: float) -> float:
    dense = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("bag."))
    if hasattr(model, "ffns") and model.ffns and hasattr(model.ffns[0], "cfg"):  # MoE: only top-k experts act
        for f in model.ffns:
            per_expert = f.w1[0].numel() + f.b1[0].numel() + f.w2[0].numel() + f.b2[0].numel()
            dense -= per_expert * (f.cfg.n_experts - f.cfg.top_k)
    return float(dense + avg_nnz * model.bag.embedding_dim)


def grid_run(prep, d_model: int, rows: int, *, seed: int = 0, device: str = "cpu", batch_size: int = 64,
             lr: float = 2e-3) -> dict:
    """Train one run of the grid and return ``{"d_model", "rows", "n_params", "n_tokens", "flops", "loss", "acc"}``."""
    from tiergate.models.large import SparseClassifier
    from tiergate.models.moe import MoEConfig
    from tiergate.training.loop import train
    from tiergate.training.parallel import Runtime

    cfg = copy.deepcopy(prep.cfg)
    cfg.d_model = d_model
    cfg.moe = MoEConfig(d_model=d_model, d_hidden=2 * d_model, n_experts=cfg.moe.n_experts, top_k=cfg.moe.top_k)
    cfg.dense_hidden = 2 * d_model
    cfg.train.seed = seed
    cfg.train.batch_size = batch_size
    cfg.train.lr = lr
    rng = np.random.default_rng(seed)
    fit_rows = prep.fit_idx if rows >= len(prep.fit_idx) else rng.choice(prep.fit_idx, rows, replace=False)
    train_t = prep.table.subset(np.sort(fit_rows))
    hold_t = prep.table.subset(prep.hold_idx)
    if device.startswith("cuda"):
        from tiergate.training.data import DeviceTable
        train_t, hold_t = DeviceTable(train_t, device), DeviceTable(hold_t, device)
    cfg.train.epochs = 1.0 if rows <= len(prep.fit_idx) else rows / len(prep.fit_idx)
    cfg.train.keep_best = False
    import torch
    torch.manual_seed(seed)
    model = SparseClassifier(cfg, len(prep.labels), prep.featurizer.emb_dim)
    rt = Runtime(device=torch.device(device), bf16=device.startswith("cuda"))
    model = rt.apply(model)
    t0 = time.perf_counter()
    res = train(model, train_t, hold_t, cfg.train, runtime=rt)
    avg_nnz = prep.table.bag.nnz / max(prep.table.bag.shape[0], 1)
    n = active_params(model, avg_nnz)
    d = res.steps * batch_size
    return {"d_model": d_model, "rows": int(len(fit_rows)), "n_params": n, "n_tokens": float(d),
            "flops": 6 * n * d, "loss": res.history[-1]["val_loss"], "acc": res.history[-1]["val_acc"],
            "seconds": round(time.perf_counter() - t0, 2)}


def fit_command(data: str, out, *, results=None, quick: bool = True, device: str | None = None) -> dict:
    """Run (or read) the grid, fit, check one prediction; writes runs.jsonl, fit.json and check.json."""
    from tiergate.data import load_dataset
    from tiergate.models.large import prepare_training, preset

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if results is not None:
        runs = [json.loads(line) for line in Path(results).read_text().splitlines() if line.strip()]
        if not runs:
            raise ConfigError(f"{results}: no runs")
        fit = fit_runs(runs, source=f"{results}")
        (out / "fit.json").write_text(json.dumps(fit.__dict__, indent=2))
        return {"fit": fit.__dict__, "n_runs": len(runs)}
    import torch
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = preset("hashed")
    prep = prepare_training(load_dataset(data), cfg, seed=0)
    widths = (8, 16, 32, 64) if quick else (8, 16, 32, 64, 128, 256)
    row_grid = (2000, 6000, 18000) if quick else (2500, 5000, 10000, 20000, 40000)
    runs = []
    with (out / "runs.jsonl").open("w") as f:
        for w in widths:
            for r in row_grid:
                rec = grid_run(prep, w, r, device=device)
                runs.append(rec)
                f.write(json.dumps(rec) + "\n")
                f.flush()
    fit = fit_runs(runs, source=f"tiergate plan fit --data {data} ({len(runs)} runs, hashed head)")
    (out / "fit.json").write_text(json.dumps(fit.__dict__, indent=2))
    check = check_prediction(prep, fit, budget=held_out_budget(fit, runs, len(prep.fit_idx)), device=device)
    (out / "check.json").write_text(json.dumps(check, indent=2))
    return {"fit": fit.__dict__, "check": check, "n_runs": len(runs)}


def held_out_budget(fit: Fit, runs: list[dict], n_rows: int) -> float:
    """A budget between the grid's FLOP levels whose D_opt fits in one pass over the data (single-pass runs
    are what the fit describes), as large as possible: the prediction is then an interpolation in C that no
    grid run sampled at its optimum."""
    flops = sorted(r["flops"] for r in runs)
    for c in np.geomspace(flops[-1], flops[0], 60):
        if fit.optimum(c)[1] <= 0.8 * n_rows and all(abs(np.log(c / f)) > 0.1 for f in flops):
            return float(c)
    return float(np.sqrt(flops[0] * flops[-1]))


def check_prediction(prep, fit: Fit, budget: float, *, device: str = "cpu") -> dict:
    """Train N_opt(budget) once and compare the loss with the fit's prediction."""
    n_opt, d_opt = fit.optimum(budget)
    # the width whose active parameters come closest to N_opt
    best_w, best_gap = None, np.inf
    avg_nnz = prep.table.bag.nnz / max(prep.table.bag.shape[0], 1)
    for w in (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512):
        from tiergate.models.large import SparseClassifier
        c = copy.deepcopy(prep.cfg)
        c.d_model, c.dense_hidden = w, 2 * w
        c.moe.d_model, c.moe.d_hidden = w, 2 * w
        n = active_params(SparseClassifier(c, len(prep.labels), prep.featurizer.emb_dim), avg_nnz)
        gap = abs(np.log(n / n_opt))
        if gap < best_gap:
            best_w, best_gap = w, gap
    rows = int(round(d_opt))
    rec = grid_run(prep, best_w, rows, device=device)
    return {"budget_flops": budget, "n_opt": n_opt, "d_opt": d_opt, "width": best_w, "run": rec,
            "predicted_loss": float(fit.loss(rec["n_params"], rec["n_tokens"])), "actual_loss": rec["loss"],
            "relative_error": float(abs(fit.loss(rec["n_params"], rec["n_tokens"]) - rec["loss"]) / rec["loss"])}
