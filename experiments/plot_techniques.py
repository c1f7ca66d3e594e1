"""Figures and a markdown report from ``results.json`` of experiments/train_techniques.py.

    python experiments/plot_techniques.py runs/techniques/debian
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def plot_largebatch(res: dict, out: Path, tag: str) -> tuple[str, list[str]]:
    runs = res["runs"]
    base = next(r for r in runs if r["arm"] == "baseline")
    arms = sorted({r["arm"] for r in runs if r["arm"] != "baseline"})
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for arm in arms:
        rs = sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["batch"])
        a1.plot([r["batch"] for r in rs], [100 * r["test_acc"] for r in rs], "o-", label=arm)
        a2.plot([r["batch"] for r in rs], [r["steps_to_target"] or np.nan for r in rs], "o-", label=arm)
    a1.axhline(100 * base["test_acc"], color="k", ls="--", label=f"baseline (batch {base['batch']})")
    a1.axhspan(100 * base["test_acc"] - 0.2, 100 * base["test_acc"] + 0.2, color="k", alpha=0.08)
    a2.axhline(base["steps_to_target"] or np.nan, color="k", ls="--", label="baseline")
    for a in (a1, a2):
        a.set_xscale("log", base=2)
        a.set_xlabel("batch size")
    a1.set_ylabel("test accuracy (%)")
    a2.set_ylabel("optimizer steps to the held-out target")
    a2.set_yscale("log")
    a1.legend(fontsize=7)
    a1.set_title(f"Large batch ({tag}): accuracy")
    a2.set_title("steps to target (held-out acc)")
    name = _save(fig, out / f"largebatch_{tag}.png")
    lines = ["| arm | batch | lr | test acc | steps | steps to target |", "|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["batch"], r["arm"])):
        lines.append(f"| {r['arm']} | {r['batch']} | {r['config']['train']['lr']:.4g} | {100 * r['test_acc']:.2f} | "
                     f"{r['steps']} | {r.get('steps_to_target')} |")
    return name, lines


def plot_pruning(res: dict, out: Path, tag: str) -> tuple[str, list[str]]:
    runs = res["runs"]
    full = next(r for r in runs if r["metric"] == "full")
    metrics = [m for m in dict.fromkeys(r["metric"] for r in runs) if m not in ("full", "random")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    rnd = defaultdict(list)
    for r in runs:
        if r["metric"] == "random":
            rnd[r["keep"]].append(100 * r["test_acc"])
    ks = sorted(rnd)
    for ax, mode in zip(axes, ("hard", "easy"), strict=True):
        ax.plot(ks + [1.0], [np.mean(rnd[k]) for k in ks] + [100 * full["test_acc"]], "k--o", label="random")
        for m in metrics:
            rs = sorted((r for r in runs if r["metric"] == m and r["mode"] == mode), key=lambda r: r["keep"])
            ax.plot([r["keep"] for r in rs] + [1.0], [100 * r["test_acc"] for r in rs] + [100 * full["test_acc"]],
                    "o-", label=m)
        ax.axhline(100 * full["test_acc"], color="gray", lw=0.8)
        ax.set_title(f"Pruning ({tag}): keep-{mode}")
        ax.set_xlabel("fraction of training data kept")
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=7)
    name = _save(fig, out / f"pruning_{tag}.png")
    lines = ["| metric | mode | " + " | ".join(f"keep {k}" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
    lines.append("| random | - | " + " | ".join(f"{np.mean(rnd[k]):.2f}" for k in ks) + " |")
    for m in metrics:
        for mode in ("hard", "easy"):
            acc = {r["keep"]: 100 * r["test_acc"] for r in runs if r["metric"] == m and r["mode"] == mode}
            lines.append(f"| {m} | {mode} | " + " | ".join(f"{acc[k]:.2f}" if k in acc else "-" for k in ks) + " |")
    lines.append(f"\nFull data: {100 * full['test_acc']:.2f}%.")
    return name, lines


def plot_swat(res: dict, out: Path, tag: str) -> tuple[str, list[str]]:
    runs = res["runs"]
    dense = next(r for r in runs if r["arm"] == "dense")
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, mk in (("swat", "o-"), ("fixed mask", "s--")):
        rs = sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["flops_counted"])
        ax.plot([r["flops_counted"] / dense["flops_dense"] for r in rs], [100 * r["test_acc"] for r in rs], mk, label=arm)
        for r in rs:
            ax.annotate(f"{int(100 * r['sparsity'])}%", (r["flops_counted"] / dense["flops_dense"], 100 * r["test_acc"]),
                        fontsize=7)
    ax.plot([1.0], [100 * dense["test_acc"]], "k*", ms=12, label="dense")
    ax.axhspan(100 * dense["test_acc"] - 0.5, 100 * dense["test_acc"] + 0.5, color="k", alpha=0.08)
    ax.set_xlabel("counted training FLOPs / dense")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"SWAT ({tag})")
    ax.legend(fontsize=8)
    name = _save(fig, out / f"swat_{tag}.png")
    lines = ["| arm | sparsity | test acc | counted FLOPs / dense (all) | linear layers only |", "|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['arm']} | {r['sparsity']} | {100 * r['test_acc']:.2f} | "
                     f"{r['flops_counted'] / dense['flops_dense']:.3f} | "
                     f"{r['linear_flops_counted'] / max(dense['linear_flops_dense'], 1):.3f} |")
    return name, lines


def plot_moe(res: dict, out: Path, tag: str) -> tuple[str, list[str]]:
    runs = res["runs"]
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    means = [np.mean([100 * r["test_acc"] for r in runs if r["arm"] == a]) for a in arms]
    a1.bar(range(len(arms)), means, color=["gray"] + ["C0"] * (len(arms) - 1))
    for i, a in enumerate(arms):
        a1.plot([i] * sum(r["arm"] == a for r in runs), [100 * r["test_acc"] for r in runs if r["arm"] == a], "k.")
    a1.set_xticks(range(len(arms)), [a.replace(" ", "\n", 2) for a in arms], fontsize=6)
    a1.set_ylim(min(means) - 1, max(means) + 0.5)
    a1.set_ylabel("test accuracy (%)")
    a1.set_title(f"MoE vs dense, equal active FFN width ({tag})")
    for r in runs:
        if r.get("load") and r["seed"] == 0:
            load = np.array(r["load"][0])
            a2.plot(np.sort(load)[::-1], "o-", label=r["arm"])
    a2.axhline(1 / 8, color="k", ls="--", lw=0.8, label="uniform")
    a2.set_xlabel("expert (sorted by load)")
    a2.set_ylabel("share of token assignments (held-out)")
    a2.set_title("expert load with / without balancing loss")
    a2.legend(fontsize=7)
    name = _save(fig, out / f"moe_{tag}.png")
    lines = ["| arm | active FFN width | mean test acc | per seed | max expert load |", "|---|---|---|---|---|"]
    for a, m in zip(arms, means, strict=True):
        rs = [r for r in runs if r["arm"] == a]
        load = max(max(r["load"][0]) for r in rs) if rs[0].get("load") else None
        lines.append(f"| {a} | {rs[0]['active_hidden']} | {m:.2f} | " + ", ".join(f"{100 * r['test_acc']:.2f}" for r in rs)
                     + f" | {'' if load is None else f'{load:.2f}'} |")
    return name, lines


def plot_scaling(res: dict, out: Path, tag: str) -> tuple[str, list[str]]:
    from tiergate.training.plan import Fit

    runs, fit, check = res["runs"], Fit(**res["fit"]), res["check"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    flops = np.array([r["flops"] for r in runs])
    levels = np.geomspace(flops.min() * 2, flops.max() / 2, 4)
    N_grid = np.geomspace(min(r["n_params"] for r in runs) / 2, max(r["n_params"] for r in runs) * 2, 100)
    for i, C in enumerate(levels):
        a1.plot(N_grid, fit.loss(N_grid, C / (6 * N_grid)), color=f"C{i}", label=f"C={C:.1e}")
        n_opt, _ = fit.optimum(C)
        a1.plot([n_opt], [fit.loss(n_opt, C / (6 * n_opt))], "o", color=f"C{i}")
    a1.set_xscale("log")
    a1.set_xlabel("active parameters N")
    a1.set_ylabel("held-out loss (fit)")
    a1.set_title(f"Compute-optimal: iso-FLOP curves of the fit ({tag})")
    a1.legend(fontsize=7)
    pred = fit.loss(np.array([r["n_params"] for r in runs]), np.array([r["n_tokens"] for r in runs]))
    a2.scatter(pred, [r["loss"] for r in runs], c=np.log10(flops), cmap="viridis", label="grid runs")
    a2.plot([check["predicted_loss"]], [check["actual_loss"]], "r*", ms=14, label="held-out prediction")
    lo, hi = min(pred.min(), check["actual_loss"]), max(pred.max(), check["actual_loss"])
    a2.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    a2.set_xlabel("predicted loss")
    a2.set_ylabel("measured loss")
    a2.set_title("fit vs runs; one prediction checked")
    a2.legend(fontsize=7)
    name = _save(fig, out / f"compute_optimal_{tag}.png")
    f = res["fit"]
    lines = [f"Fit: L(N, D) = {f['E']:.3f} + {f['A']:.3g}/N^{f['alpha']:.3f} + {f['B']:.3g}/D^{f['beta']:.3f} "
             f"({len(runs)} runs; rmse of log-loss {f['meta'].get('rmse_log_loss', float('nan')):.3f}).",
             f"Check at C = {check['budget_flops']:.3g} FLOPs: N_opt = {check['n_opt']:.3g}, D_opt = {check['d_opt']:.3g}; "
             f"trained width {check['width']} -> loss {check['actual_loss']:.4f} vs predicted "
             f"{check['predicted_loss']:.4f} ({100 * check['relative_error']:.1f}% off)."]
    return name, lines


def _mean(xs) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def plot_largebatch3(res: dict, out: Path, tag: str) -> tuple[str, list[str]]:
    """Seeds of the baseline and of each 8x arm; differences taken between means (and per seed)."""
    runs = res["runs"]
    groups = sorted({r["config"]["train"]["label_smoothing"] for r in runs})
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4.2), sharey=True, squeeze=False)
    lines = ["| label smoothing | arm | batch | steps | seeds | mean test acc | vs baseline (pp) | mean held-out acc "
             "| per seed (test) |", "|---|---|---|---|---|---|---|---|---|"]
    for ax, ls in zip(axes[0], groups, strict=True):
        rs = [r for r in runs if r["config"]["train"]["label_smoothing"] == ls]
        base = {r["seed"]: 100 * r["test_acc"] for r in rs if r["arm"].startswith("baseline")}
        b_mean = _mean(list(base.values()))
        arms = [a for a in dict.fromkeys(r["arm"] for r in rs)]
        arms = [a for a in arms if a.startswith("baseline")] + [a for a in arms if not a.startswith("baseline")]
        for i, arm in enumerate(arms):
            ar = sorted((r for r in rs if r["arm"] == arm), key=lambda r: r["seed"])
            acc = [100 * r["test_acc"] for r in ar]
            d = _mean(acc) - b_mean
            hold = _mean([100 * r["holdout_acc"] for r in ar])
            lines.append(f"| {ls:g} | {arm} | {ar[0]['batch']} | {ar[0]['steps']} | {len(ar)} | {_mean(acc):.2f} | "
                         f"{'' if arm.startswith('baseline') else f'{d:+.2f}'} | {hold:.2f} | "
                         + ", ".join(f"{a:.2f}" for a in acc) + " |")
            if arm.startswith("baseline"):
                continue
            ax.bar(i, d, color="C0" if d > -0.2 else "C3", alpha=0.7)
            ax.plot([i] * len(ar), [100 * r["test_acc"] - base[r["seed"]] for r in ar if r["seed"] in base], "k.")
        ax.axhline(0, color="k", lw=0.8)
        ax.axhline(-0.2, color="k", ls="--", lw=0.8, label="target: -0.2 pp")
        ax.set_xticks(range(len(arms)), [a.replace(" +ls", "\n+ls").replace(" ", "\n", 1) for a in arms], fontsize=6)
        ax.set_title(f"label smoothing {ls:g}: baseline (batch 64) {b_mean:.2f}% over {len(base)} seeds", fontsize=8)
    axes[0][0].set_ylabel("test acc at batch 512 minus baseline mean (pp)\nbar: mean over seeds; dots: per seed")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Large batch, 8x ({tag}): 498 steps (996 for x2) against 4,020", fontsize=9)
    return _save(fig, out / f"largebatch3_{tag}.png"), lines


def plot_moe2(res: dict, out: Path, tag: str) -> tuple[str, list[str]]:
    runs = res["runs"]
    confs = list(dict.fromkeys((r["d_model"], r["n_blocks"]) for r in runs))
    fig, axes = plt.subplots(1, len(confs), figsize=(4 * len(confs), 4), squeeze=False)
    lines = ["| d_model x blocks | arm | active FFN width | seeds | mean test acc | per seed | mean held-out acc "
             "(best loss) | max expert share |", "|---|---|---|---|---|---|---|---|"]
    for ax, (d, nb) in zip(axes[0], confs, strict=True):
        rs = [r for r in runs if r["d_model"] == d and r["n_blocks"] == nb]
        arms = list(dict.fromkeys(r["arm"] for r in rs))
        means = []
        for i, arm in enumerate(arms):
            ar = sorted((r for r in rs if r["arm"] == arm), key=lambda r: r["seed"])
            acc = [100 * r["test_acc"] for r in ar]
            means.append(_mean(acc))
            ax.bar(i, means[-1], color="gray" if arm.startswith("dense") else "C0", alpha=0.7)
            ax.plot([i] * len(acc), acc, "k.")
            load = max(max(x) for r in ar for x in r["load"]) if ar[0].get("load") else None
            lines.append(f"| {d} x {nb} | {arm} | {ar[0]['active_hidden']} | {len(ar)} | {means[-1]:.2f} | "
                         + ", ".join(f"{a:.2f}" for a in acc)
                         + f" | {_mean([100 * r['best_holdout_acc'] for r in ar]):.2f} | "
                         + ("" if load is None else f"{load:.3f}") + " |")
        ax.set_xticks(range(len(arms)), [a.replace(" ", "\n", 2) for a in arms], fontsize=7)
        ax.set_ylim(min(means) - 1, max(means) + 0.6)
        ax.set_title(f"d_model {d}, {nb} block(s)", fontsize=9)
    axes[0][0].set_ylabel("test accuracy (%), bar = mean, dots = seeds")
    fig.suptitle(f"Experts vs dense at equal active FFN width ({tag})", fontsize=9)
    return _save(fig, out / f"moe2_{tag}.png"), lines


def plot_pruning50(res: dict, out: Path, tag: str) -> tuple[str, list[str]]:
    runs = res["runs"]
    scheds = list(dict.fromkeys(r.get("schedule", "equal-epochs") for r in runs))
    fig, axes = plt.subplots(1, len(scheds), figsize=(6 * len(scheds), 4), sharey=True, squeeze=False)
    lines = ["| schedule | metric | keep-hard | keep-easy |", "|---|---|---|---|"]
    for ax, sc in zip(axes[0], scheds, strict=True):
        rs = [r for r in runs if r.get("schedule", "equal-epochs") == sc]
        full = _mean([100 * r["test_acc"] for r in rs if r["metric"] == "full"])
        rnd = [100 * r["test_acc"] for r in rs if r["metric"] == "random"]
        metrics = [m for m in dict.fromkeys(r["metric"] for r in rs) if m not in ("full", "random")]
        lines.append(f"| {sc} | full data ({sum(r['metric'] == 'full' for r in rs)} runs) | {full:.2f} | |")
        lines.append(f"| {sc} | random 50% ({len(rnd)} runs: " + ", ".join(f"{x:.2f}" for x in rnd)
                     + f") | {_mean(rnd):.2f} | |")
        for j, mode in enumerate(("hard", "easy")):
            vals = [_mean([100 * r["test_acc"] for r in rs if r["metric"] == m and r["mode"] == mode]) for m in metrics]
            ax.bar(np.arange(len(metrics)) + 0.4 * j - 0.2, vals, 0.4, label=f"keep-{mode}")
        for m in metrics:
            acc = {mode: _mean([100 * r["test_acc"] for r in rs if r["metric"] == m and r["mode"] == mode])
                   for mode in ("hard", "easy")}
            lines.append(f"| {sc} | {m} | " + " | ".join("-" if np.isnan(acc[k]) else f"{acc[k]:.2f}"
                                                          for k in ("hard", "easy")) + " |")
        ax.axhline(full, color="k", lw=1, label="full data")
        ax.axhspan(full - 0.3, full, color="k", alpha=0.08)
        ax.axhline(_mean(rnd), color="k", ls="--", lw=1, label="random 50%")
        ax.set_xticks(range(len(metrics)), metrics, fontsize=7)
        ax.set_ylim(77, full + 1)
        ax.set_title(f"50% kept, {sc}", fontsize=9)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Pruning at 50% ({tag})", fontsize=9)
    return _save(fig, out / f"pruning50_{tag}.png"), lines


PLOTS = {"largebatch": plot_largebatch, "largebatch3": plot_largebatch3, "pruning": plot_pruning,
         "pruning50": plot_pruning50, "swat": plot_swat, "moe": plot_moe, "moe2": plot_moe2, "scaling": plot_scaling}


def plot_all(folder: Path, tag: str | None = None) -> list[str]:
    res = json.loads((folder / "results.json").read_text())
    tag = tag or folder.name
    report = [f"# Training techniques: {res['meta']['data']} ({res['meta'].get('gpu') or res['meta']['device']})", "",
              f"Command: `{res['meta']['command']}`", ""]
    names = []
    for key, fn in PLOTS.items():
        if key not in res or "error" in res[key]:
            if key in res:
                report += [f"## {key}", "", f"failed: {res[key]['error']}", ""]
            continue
        name, lines = fn(res[key], folder, tag)
        names.append(name)
        report += [f"## {key}", "", f"![{key}]({name})", "", *lines, ""]
    (folder / "report.md").write_text("\n".join(report))
    return names


if __name__ == "__main__":
    print(plot_all(Path(sys.argv[1])))
