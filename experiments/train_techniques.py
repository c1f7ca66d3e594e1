"""The training-technique experiments of issue 5, each with its baseline in the same run and figure.

    python experiments/train_techniques.py --data debian-packages --out runs/techniques/debian \
        --only largebatch,pruning,swat,moe,scaling [--device cuda] [--budget-s 400]
    python experiments/train_techniques.py --plot runs/techniques/debian      # figures from results.json

Every run uses the hashed-encoder head (no pretrained weights travel to the GPU host). Rows: the train split
minus a stratified 10% held-out slice (targets, early stopping and any choice of hyper-parameter use it);
test accuracy is measured and reported, never used to choose. Writes ``results.json`` (every run with its exact
config) and, with ``--plot``, one PNG per experiment plus ``report.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiergate.data import load_dataset, make_item  # noqa: E402
from tiergate.models.large import SparseClassifier, prepare_training, preset  # noqa: E402
from tiergate.models.moe import MoEFFN  # noqa: E402
from tiergate.training.data import DeviceTable  # noqa: E402
from tiergate.training.loop import evaluate, train  # noqa: E402
from tiergate.training.parallel import Runtime  # noqa: E402
from tiergate.training.schedule import scale_lr  # noqa: E402


class Bench:
    """Features computed once; ``run(cfg)`` trains one head and measures it on held-out and test rows."""

    def __init__(self, data: str, device: str, seed: int = 0, smoke: bool = False):
        self.data = data
        self.smoke = smoke  # one epoch per run: exercises every code path in minutes on a CPU
        self.device = torch.device(device)
        ds = load_dataset(data)
        cfg = preset("hashed")
        cfg.sparse_bag = False  # LAMB/LARS and SWAT need dense gradients; on a GPU a dense bag step is cheap
        cfg.wide = False  # the deep head the H200 runs measured (the wide path came later)
        t0 = time.perf_counter()
        self.prep = prepare_training(ds, cfg, seed=seed)
        lab = {c: i for i, c in enumerate(self.prep.labels)}
        test = ds.split("test")
        y_test = np.array([lab.get(e.label, -1) for e in test])
        test_t = self.prep.featurizer.table([make_item(e.text) for e in test], np.maximum(y_test, 0))
        self.test_unknown = y_test < 0  # labels never seen in train: always wrong
        self.feature_seconds = time.perf_counter() - t0
        self.base_cfg = cfg
        self.full = self.prep.table
        self.hold = self._dev(self.full.subset(self.prep.hold_idx))
        self.test = self._dev(test_t)
        self.n_test = len(test)
        self.avg_nnz = self.full.bag.nnz / self.full.bag.shape[0]

    def _dev(self, table):
        return DeviceTable(table, self.device) if self.device.type == "cuda" else table

    def rows(self, idx=None):
        idx = self.prep.fit_idx if idx is None else np.asarray(idx)
        return self._dev(self.full.subset(np.sort(idx)))

    def run(self, cfg, *, rows=None, tag: str = "", swat=None, eval_every: int = 0, target: float | None = None,
            collect_load: bool = False) -> dict:
        cfg = copy.deepcopy(cfg)
        if self.smoke:
            cfg.train.epochs = min(cfg.train.epochs, 1.0)
        if eval_every:
            cfg.train.eval_every = eval_every
        rt = Runtime(device=self.device, bf16=self.device.type == "cuda", swat=swat)
        torch.manual_seed(cfg.train.seed)
        model = rt.apply(SparseClassifier(cfg, len(self.prep.labels), 0))
        table = rows if rows is not None else self.rows()
        t0 = time.perf_counter()
        res = train(model, table, self.hold, cfg.train, runtime=rt)
        seconds = time.perf_counter() - t0
        te = evaluate(model, self.test, device=self.device)
        test_acc = te["acc"] * len(self.test) / self.n_test
        if self.test_unknown.any():  # rows whose label the model cannot know count as errors
            test_acc = self._test_acc_known(model)
        rec = {"tag": tag, "test_acc": test_acc, "holdout_acc": res.history[-1].get("val_acc"),
               "best_holdout_acc": res.best.get("val_acc"), "steps": res.steps, "seconds": round(seconds, 2),
               "rows": len(table), "config": asdict(cfg),
               "curve": [(h["step"], h.get("val_acc")) for h in res.history]}
        if target is not None:
            rec["steps_to_target"] = next((s for s, a in rec["curve"] if a is not None and a >= target), None)
        if swat is not None:
            from tiergate.training.swat import flop_counts
            dense, counted = flop_counts(model)
            other = self._other_flops(cfg, res.steps * cfg.train.batch_size)
            rec.update(linear_flops_dense=dense, linear_flops_counted=counted, other_flops=other,
                       flops_dense=dense + other, flops_counted=counted + other)
        if collect_load:
            rec["load"] = self._expert_load(model)
        return rec

    def _test_acc_known(self, model) -> float:
        model.eval()
        correct = 0
        with torch.no_grad():
            for s in range(0, len(self.test), 2048):
                idx = np.arange(s, min(s + 2048, len(self.test)))
                b = self.test.batch(idx, self.device)
                pred = model(b).argmax(1).cpu().numpy()
                correct += int(((pred == self.test.y[idx]) & ~self.test_unknown[idx]).sum())
        return correct / self.n_test

    def _other_flops(self, cfg, rows_seen: int) -> float:
        """Training FLOPs outside the SWAT layers: the bag (forward + dense backward) and the dense head."""
        per_row = 6 * self.avg_nnz * cfg.d_model + 6 * cfg.d_model * len(self.prep.labels)
        return float(per_row * rows_seen)

    def _expert_load(self, model) -> list[list[float]]:
        model.eval()
        loads = [torch.zeros(f.cfg.n_experts) for f in model.ffns if isinstance(f, MoEFFN)]
        with torch.no_grad():
            for s in range(0, len(self.hold), 2048):
                model(self.hold.batch(np.arange(s, min(s + 2048, len(self.hold))), self.device))
                for i, f in enumerate(f for f in model.ffns if isinstance(f, MoEFFN)):
                    loads[i] += f.stats["load"].float().cpu()
        return [(load / load.sum()).tolist() for load in loads]


def _cfg(b: Bench, **train_kw):
    cfg = copy.deepcopy(b.base_cfg)
    for k, v in train_kw.items():
        setattr(cfg.train, k, v)
    return cfg


# ------------------------------------------------------------------------------------------- experiments
def exp_largebatch(b: Bench, budget_s: float) -> dict:
    """Accuracy and steps to a target against batch size; arms of BRIEF §3."""
    t_end = time.perf_counter() + budget_s
    B0, E, lr0 = 64, 6.0, 2e-3
    base = b.run(_cfg(b, batch_size=B0, epochs=E, lr=lr0, keep_best=False), tag="baseline",
                 eval_every=max(len(b.prep.fit_idx) // B0 // 6, 1))
    target = base["holdout_acc"] - 0.005
    base["steps_to_target"] = next((s for s, a in base["curve"] if a >= target), None)
    runs = [dict(base, batch=B0, arm="baseline")]
    for B in (512, 4096):
        k = B / B0
        ev = max(len(b.prep.fit_idx) // B // 6, 1)
        arms = {
            "naive": dict(lr=lr0),
            "linear+warmup": dict(lr=scale_lr(lr0, B, B0, "linear"), warmup_frac=0.3),
            "sqrt+ghostbn": dict(lr=scale_lr(lr0, B, B0, "sqrt"), warmup_frac=0.1),
        }
        for arm, kw in arms.items():
            if time.perf_counter() > t_end:
                break
            cfg = _cfg(b, batch_size=B, epochs=E, keep_best=False, **kw)
            if arm == "sqrt+ghostbn":
                cfg.ghost_size = B0
            runs.append(dict(b.run(cfg, tag=f"{arm}@{B}", eval_every=ev, target=target), batch=B, arm=arm))
        # LARS and LAMB: the learning rate is chosen on the held-out slice from three values
        for opt, lrs in (("lars", (0.5, 2.0, 8.0)), ("lamb", (3e-3, 1e-2, 3e-2))):
            best = None
            for lr in lrs:
                if time.perf_counter() > t_end:
                    break
                cfg = _cfg(b, batch_size=B, epochs=E, keep_best=False, optimizer=opt, lr=lr, warmup_frac=0.1,
                           weight_decay=0.01 if opt == "lamb" else 1e-4)
                r = b.run(cfg, tag=f"{opt}@{B} lr={lr}", eval_every=ev, target=target)
                if best is None or r["holdout_acc"] > best["holdout_acc"]:
                    best = r
            if best is not None:
                runs.append(dict(best, batch=B, arm=opt))
        if B == 512 and time.perf_counter() < t_end:  # regime adaptation: as many updates as the baseline
            cfg = _cfg(b, batch_size=B, epochs=E * k, keep_best=False, lr=scale_lr(lr0, B, B0, "sqrt"),
                       warmup_frac=0.1)
            cfg.ghost_size = B0
            runs.append(dict(b.run(cfg, tag=f"regime@{B}", eval_every=ev * 8, target=target), batch=B,
                             arm="regime adaptation"))
    return {"target_holdout_acc": target, "baseline_batch": B0, "runs": runs}


def exp_largebatch2(b: Bench, budget_s: float) -> dict:
    """Second large-batch run (CPU): the baseline again, and the arms the first run's budget did not reach:
    LAMB at a fixed a-priori learning rate, longer training at 8x (regime adaptation by 2x: still 4x fewer
    steps), and batch 4096."""
    t_end = time.perf_counter() + budget_s
    B0, E, lr0 = 64, 6.0, 2e-3
    if ARGS and ARGS.lb_target:  # the baseline was run before (same machine, same config): reuse its target
        target, runs = ARGS.lb_target, []
    else:
        base = b.run(_cfg(b, batch_size=B0, epochs=E, lr=lr0, keep_best=False), tag="baseline",
                     eval_every=max(len(b.prep.fit_idx) // B0 // 6, 1))
        target = base["holdout_acc"] - 0.005
        base["steps_to_target"] = next((s for s, a in base["curve"] if a >= target), None)
        runs = [dict(base, batch=B0, arm="baseline")]
    plan = [
        (512, "sqrt+ghostbn", dict(lr=scale_lr(lr0, 512, B0, "sqrt"), warmup_frac=0.1), E, True),
        (512, "regime x2 (sqrt+ghostbn)", dict(lr=scale_lr(lr0, 512, B0, "sqrt"), warmup_frac=0.1), 2 * E, True),
        (512, "regime x2 (linear+warmup)", dict(lr=scale_lr(lr0, 512, B0, "linear"), warmup_frac=0.3), 2 * E, False),
        (512, "lamb", dict(optimizer="lamb", lr=1e-2, warmup_frac=0.1), E, False),
        (4096, "sqrt+ghostbn", dict(lr=scale_lr(lr0, 4096, B0, "sqrt"), warmup_frac=0.1), E, True),
        (4096, "lamb", dict(optimizer="lamb", lr=1e-2, warmup_frac=0.1), E, False),
        (4096, "linear+warmup", dict(lr=scale_lr(lr0, 4096, B0, "linear"), warmup_frac=0.3), E, False),
    ]
    if ARGS and ARGS.lb_arms:
        wanted = set(ARGS.lb_arms.split(","))
        plan = [p for p in plan if f"{p[1]}@{p[0]}" in wanted]
    for B, arm, kw, epochs, ghost in plan:
        if time.perf_counter() > t_end:
            break
        cfg = _cfg(b, batch_size=B, epochs=epochs, keep_best=False, **kw)
        if ghost:
            cfg.ghost_size = B0
        ev = max(len(b.prep.fit_idx) // B // 6, 1)
        runs.append(dict(b.run(cfg, tag=f"{arm}@{B}", eval_every=ev, target=target), batch=B, arm=arm))
    return {"target_holdout_acc": target, "baseline_batch": B0, "runs": runs}


def exp_largebatch3(b: Bench, budget_s: float) -> dict:
    """Third large-batch run (H200), one seed per process (``--seeds``): the baseline and the arms at 8x the
    batch that came closest before, plus LAMB with Ghost BN and a longer warm-up, and LAMB + Ghost BN trained
    2x longer (996 steps: still 4.04x fewer than the baseline's 4,020). ``--label-smoothing`` applies to the
    baseline and every arm alike. Seeds are compared by their means (the seed spread is about +-0.2 pp)."""
    t_end = time.perf_counter() + budget_s
    B0, E, lr0, B = 64, 6.0, 2e-3, 512
    ls = ARGS.label_smoothing if ARGS else 0.0
    suffix = f" +ls{ls:g}" if ls else ""
    seeds = tuple(int(x) for x in ARGS.seeds.split(",")) if ARGS and ARGS.seeds else (0,)
    sqrt_lr = scale_lr(lr0, B, B0, "sqrt")
    plan = [
        ("sqrt+ghostbn", dict(lr=sqrt_lr, warmup_frac=0.1), E, True),
        ("lamb", dict(optimizer="lamb", lr=1e-2, warmup_frac=0.1), E, False),
        ("lamb+ghostbn wu0.25", dict(optimizer="lamb", lr=1e-2, warmup_frac=0.25), E, True),
        ("sqrt+ghostbn wu0.25", dict(lr=sqrt_lr, warmup_frac=0.25), E, True),
        ("lamb+ghostbn wu0.25 lr0.02", dict(optimizer="lamb", lr=2e-2, warmup_frac=0.25), E, True),
        ("lamb+ghostbn wu0.25 x2 epochs", dict(optimizer="lamb", lr=1e-2, warmup_frac=0.25), 2 * E, True),
        ("lamb lr0.02", dict(optimizer="lamb", lr=2e-2, warmup_frac=0.1), E, False),
        ("lamb x2 epochs", dict(optimizer="lamb", lr=1e-2, warmup_frac=0.1), 2 * E, False),
        ("lamb lr0.005", dict(optimizer="lamb", lr=5e-3, warmup_frac=0.1), E, False),
        ("lamb lr0.003", dict(optimizer="lamb", lr=3e-3, warmup_frac=0.1), E, False),
        # seventh call: LAMB's own schedule (linear warm-up, then linear decay: You et al. 2020), a shorter warm-up
        ("lamb poly", dict(optimizer="lamb", lr=1e-2, warmup_frac=0.1, schedule="poly"), E, False),
        ("lamb wu0.05", dict(optimizer="lamb", lr=1e-2, warmup_frac=0.05), E, False),
    ]
    if ARGS and ARGS.lb_arms:
        wanted = set(ARGS.lb_arms.split(","))
        plan = [p for p in plan if p[0] in wanted]
    runs = []
    for seed in seeds:
        if ARGS and ARGS.lb_target:  # this seed's baseline ran before (same machine and config): its target
            target = ARGS.lb_target
        else:
            base = b.run(_cfg(b, batch_size=B0, epochs=E, lr=lr0, keep_best=False, seed=seed, label_smoothing=ls),
                         tag=f"baseline{suffix}/{seed}", eval_every=max(len(b.prep.fit_idx) // B0 // 6, 1))
            target = base["holdout_acc"] - 0.005
            base["steps_to_target"] = next((s for s, a in base["curve"] if a >= target), None)
            runs.append(dict(base, batch=B0, arm="baseline" + suffix, seed=seed, target_holdout_acc=target))
        for arm, kw, epochs, ghost in plan:
            if time.perf_counter() > t_end:
                break
            cfg = _cfg(b, batch_size=B, epochs=epochs, keep_best=False, seed=seed, label_smoothing=ls, **kw)
            if ghost:
                cfg.ghost_size = B0
            ev = max(len(b.prep.fit_idx) // B // 6, 1)
            r = b.run(cfg, tag=f"{arm}{suffix}@{B}/{seed}", eval_every=ev, target=target)
            runs.append(dict(r, batch=B, arm=arm + suffix, seed=seed, target_holdout_acc=target))
    return {"baseline_batch": B0, "label_smoothing": ls, "runs": runs}


def exp_pruning(b: Bench, budget_s: float, metrics=("el2n", "grand", "forgetting", "prototypes", "uncertainty"),
                fractions=(0.5, 0.3, 0.7, 0.1)) -> dict:
    metrics = ARGS.metrics.split(",") if ARGS and ARGS.metrics else metrics
    fractions = tuple(float(f) for f in ARGS.fractions.split(",")) if ARGS and ARGS.fractions else fractions
    from tiergate.training import pruning

    t_end = time.perf_counter() + budget_s
    cfg = _cfg(b, batch_size=128, epochs=8.0, lr=3e-3, keep_best=False)
    equal_steps = bool(ARGS and ARGS.prune_equal_steps)

    def cfg_at(f: float):
        """Equal epochs (default), or with --prune-equal-steps as many optimizer steps as the full run (the
        subset is read 1/f times as often), for random and every metric alike."""
        if not equal_steps:
            return cfg
        c = copy.deepcopy(cfg)
        c.train.epochs = cfg.train.epochs / f
        return c

    fit_table = b.full.subset(b.prep.fit_idx)
    ids = np.array([str(i) for i in b.prep.fit_idx])
    labels = fit_table.y

    def make_model():
        return SparseClassifier(cfg, len(b.prep.labels), 0).to(b.device)

    dev_fit = b._dev(fit_table)
    scores, score_seconds = {}, {}
    for m in metrics:
        t0 = time.perf_counter()
        if m in ("el2n", "grand"):
            scores[m] = _score_dev(pruning.score_el2n_grand, make_model, dev_fit, cfg, b, n_seeds=3, metric=m)
        elif m == "forgetting":
            scores[m] = _score_dev(pruning.score_forgetting, make_model, dev_fit, cfg, b)
        elif m == "prototypes":
            scores[m] = pruning.score_prototypes(fit_table)
        elif m == "uncertainty":
            scores[m] = pruning.score_uncertainty_linear(fit_table, device=b.device)
        score_seconds[m] = round(time.perf_counter() - t0, 2)
    full = b.run(cfg, tag="full")
    runs = [dict(full, metric="full", mode="all", keep=1.0)]
    for f in fractions:
        for seed in (0, 1)[: 1 if ARGS and ARGS.metrics else 2]:
            sel = pruning.select(ids, labels, np.zeros(len(ids)), f, mode="random", seed=seed)
            r = b.run(cfg_at(f), rows=b.rows(np.array(sel, dtype=int)), tag=f"random@{f}/{seed}")
            runs.append(dict(r, metric="random", mode="random", keep=f, seed=seed))
    for f in fractions:  # 0.5 first: the acceptance figure; a spent budget drops the other fractions
        for m in metrics:
            for mode in ("hard", "easy"):
                if time.perf_counter() > t_end:
                    break
                sel = pruning.select(ids, labels, scores[m], f, mode=mode)
                r = b.run(cfg_at(f), rows=b.rows(np.array(sel, dtype=int)), tag=f"{m}/{mode}@{f}")
                runs.append(dict(r, metric=m, mode=mode, keep=f))
    for r in runs:
        r.pop("curve", None)
    return {"runs": runs, "score_seconds": score_seconds, "equal_steps": equal_steps}


def _score_dev(fn, make_model, table, cfg, b: Bench, **kw):
    return fn(make_model, table, cfg.train, runtime=Runtime(device=b.device, bf16=b.device.type == "cuda"), **kw)


def exp_swat(b: Bench, budget_s: float) -> dict:
    from tiergate.training.swat import SwatConfig

    t_end = time.perf_counter() + budget_s
    cfg = _cfg(b, batch_size=256, epochs=6.0, lr=4e-3, keep_best=False)
    cfg.ffn, cfg.n_blocks, cfg.dense_hidden = "dense", 2, 512
    steps = cfg.train.epochs * len(b.prep.fit_idx) // cfg.train.batch_size
    warm = int(0.1 * steps)
    arms = ((0.8, "swat", False), (0.8, "fixed mask", True), (0.5, "swat", False),
            (0.9, "swat", False), (0.7, "swat", False), (0.9, "fixed mask", True), (0.5, "fixed mask", True))
    if ARGS and ARGS.swat_arms:  # e.g. "fixed mask@0.8,swat@0.9": only these, no dense run
        chosen = [a.split("@") for a in ARGS.swat_arms.split(",")]
        arms = tuple((float(s), a, a == "fixed mask") for a, s in chosen)
        runs = []
    else:
        runs = [dict(b.run(cfg, tag="dense", swat=SwatConfig(0.0, 0.0)), arm="dense", sparsity=0.0)]
    for s, arm, fixed in arms:
        if time.perf_counter() > t_end:  # most telling arms first: a spent budget drops the rest
            break
        sw = SwatConfig(weight_sparsity=s, act_sparsity=s, warmup_steps=warm, fixed_mask=fixed)
        runs.append(dict(b.run(cfg, tag=f"{arm}@{s}", swat=sw), arm=arm, sparsity=s))
    for r in runs:
        r.pop("curve", None)
    return {"runs": runs, "warmup_steps": warm}


def exp_moe(b: Bench, budget_s: float) -> dict:
    from tiergate.models.moe import MoEConfig

    t_end = time.perf_counter() + budget_s
    runs = []
    H = 256
    seeds = tuple(int(x) for x in ARGS.seeds.split(",")) if ARGS and ARGS.seeds else (0, 1)
    arms = ((8, 1, H, 0.01), (8, 2, H // 2, 0.01), (8, 1, H, 0.0))[: (1 if ARGS and ARGS.seeds else 3)]
    for seed in seeds:
        base = _cfg(b, batch_size=128, epochs=8.0, lr=3e-3, keep_best=False, seed=seed)
        d = copy.deepcopy(base)
        d.ffn, d.dense_hidden = "dense", H
        runs.append(dict(b.run(d, tag=f"dense H={H}/{seed}"), arm="dense", seed=seed, active_hidden=H))
        for E, k, h, coef in arms:
            if time.perf_counter() > t_end:
                break
            m = copy.deepcopy(base)
            m.ffn = "moe"
            m.moe = MoEConfig(d_model=m.d_model, d_hidden=h, n_experts=E, top_k=k, aux_loss_coef=coef)
            arm = f"moe E={E} top-{k} h={h}" + ("" if coef else " no balance loss")
            runs.append(dict(b.run(m, tag=f"{arm}/{seed}", collect_load=True), arm=arm, seed=seed,
                             active_hidden=k * h, balance=coef))
    for r in runs:
        r.pop("curve", None)
    return {"runs": runs}


def exp_moe2(b: Bench, budget_s: float) -> dict:
    """Experts against dense where the feed-forward's capacity can matter: a narrow residual stream
    (``--moe-d``), several blocks (``--moe-blocks``), many experts at the dense layer's active width.
    ``--moe-arms``: "dense:H" and "moe:E:k:h" items (active width k*h = H for equal active parameters per row).
    Early stopping on the held-out slice (keep_best) for every arm: more total parameters must not win or lose
    by over- or under-training at a fixed epoch count."""
    from tiergate.models.moe import MoEConfig

    t_end = time.perf_counter() + budget_s
    D, n_blocks = ARGS.moe_d, ARGS.moe_blocks
    seeds = tuple(int(x) for x in ARGS.seeds.split(",")) if ARGS.seeds else (0,)
    runs = []
    for seed in seeds:
        base = _cfg(b, batch_size=128, epochs=8.0, lr=3e-3, keep_best=True, seed=seed)
        base.d_model, base.n_blocks = D, n_blocks
        for spec in ARGS.moe_arms.split(","):
            if time.perf_counter() > t_end:
                break
            kind, *nums = spec.split(":")
            c = copy.deepcopy(base)
            if kind == "dense":
                c.ffn, c.dense_hidden = "dense", int(nums[0])
                arm, active, load = f"dense H={nums[0]}", int(nums[0]), False
            else:
                E, k, h = (int(x) for x in nums)
                c.ffn = "moe"
                c.moe = MoEConfig(d_model=D, d_hidden=h, n_experts=E, top_k=k)
                arm, active, load = f"moe E={E} top-{k} h={h}", k * h, True
            r = b.run(c, tag=f"{arm} D={D} x{n_blocks}/{seed}", collect_load=load)
            runs.append(dict(r, arm=arm, seed=seed, active_hidden=active, d_model=D, n_blocks=n_blocks))
    for r in runs:
        r.pop("curve", None)
    return {"runs": runs}


def exp_scaling(b: Bench, budget_s: float) -> dict:
    from tiergate.training.plan import fit_runs
    from tiergate.training.scaling import check_prediction, grid_run

    t_end = time.perf_counter() + budget_s
    runs = []
    widths, rows = ((8, 16), (500, 1000, 2000)) if b.smoke else ((8, 16, 32, 64, 128), (2500, 5000, 10000, 20000, 40000))
    for w in widths:
        for r in rows:
            if time.perf_counter() > t_end:
                break
            runs.append(grid_run(b.prep, w, r, device=str(b.device)))
    fit = fit_runs(runs, source=f"experiments/train_techniques.py scaling on {b.data} ({len(runs)} runs)")
    budget = max(r["flops"] for r in runs) * 2
    check = check_prediction(b.prep, fit, budget, device=str(b.device))
    return {"runs": runs, "fit": fit.__dict__, "check": check}


ARGS = None

EXPERIMENTS = {"largebatch": exp_largebatch, "largebatch2": exp_largebatch2, "largebatch3": exp_largebatch3,
               "pruning": exp_pruning, "swat": exp_swat, "moe": exp_moe, "moe2": exp_moe2, "scaling": exp_scaling}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="debian-packages")
    ap.add_argument("--out", default="runs/techniques")
    ap.add_argument("--only", default=",".join(EXPERIMENTS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--budget-s", type=float, default=120.0, help="wall-clock budget per experiment")
    ap.add_argument("--smoke", action="store_true", help="one epoch per run, small grids")
    ap.add_argument("--plot", default=None, help="draw figures from DIR/results.json and stop")
    ap.add_argument("--metrics", default=None, help="pruning: metrics to run (default all)")
    ap.add_argument("--fractions", default=None, help="pruning: fractions kept (default 0.5,0.3,0.7,0.1)")
    ap.add_argument("--swat-arms", default=None, help='swat: only these arms, e.g. "fixed mask@0.8"')
    ap.add_argument("--lb-arms", default=None, help='largebatch2: only these arms, e.g. "lamb@512"')
    ap.add_argument("--lb-target", type=float, default=None,
                    help="largebatch2/3: skip the baseline, use this held-out target")
    ap.add_argument("--seeds", default=None, help="moe: seeds (then only the dense and top-1 arms); moe2, largebatch3")
    ap.add_argument("--label-smoothing", type=float, default=0.0, help="largebatch3: for the baseline and every arm")
    ap.add_argument("--prune-equal-steps", action="store_true", help="pruning: as many steps as the full run")
    ap.add_argument("--moe-d", type=int, default=64, help="moe2: residual width")
    ap.add_argument("--moe-blocks", type=int, default=2, help="moe2: blocks")
    ap.add_argument("--moe-arms", default="dense:128,moe:16:1:128,moe:32:2:64", help="moe2: dense:H, moe:E:k:h")
    a = ap.parse_args(argv)
    global ARGS
    ARGS = a
    if a.plot:
        from experiments.plot_techniques import plot_all
        plot_all(Path(a.plot))
        return 0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    b = Bench(a.data, a.device, smoke=a.smoke)
    results["meta"] = {"data": a.data, "device": a.device, "gpu": torch.cuda.get_device_name() if
                       torch.cuda.is_available() else None, "torch": torch.__version__,
                       "n_fit": len(b.prep.fit_idx), "n_holdout": len(b.prep.hold_idx), "n_test": b.n_test,
                       "feature_seconds": round(b.feature_seconds, 1), "avg_nnz": b.avg_nnz,
                       "command": " ".join(sys.argv)}
    for name in a.only.split(","):
        t0 = time.perf_counter()
        try:
            results[name] = EXPERIMENTS[name](b, a.budget_s)
        except Exception as e:  # noqa: BLE001 - keep the other experiments' results
            import traceback
            results[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
        path.write_text(json.dumps(results, default=float))
        print(f"{name}: {results[name]['seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

