"""The cost–quality frontier of a calibration: every candidate setting on the items that tested it, with the
certified ones, the chosen point and the bound, as ``frontier.png`` and ``frontier.md`` (plus the raw rows as
``frontier.json``) in one folder next to the config."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(folder: Path, frontier: list[dict], cert: dict, *, title: str = "cascade") -> Path:
    """Write the figure, the summary and the rows; returns the markdown's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "frontier.json").write_text(json.dumps({"certificate": cert, "settings": frontier}, indent=1))
    plot_frontier(frontier, cert, folder / "frontier.png", title=title)
    md = folder / "frontier.md"
    md.write_text(summary_markdown(frontier, cert, png="frontier.png", title=title), encoding="utf-8")
    return md


def plot_frontier(frontier: list[dict], cert: dict, path: Path, *, title: str = "cascade") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps, bound = cert["epsilon"], cert["bound"]
    saved = [r["saved_fraction"] for r in frontier]
    risk = [r["risk"] for r in frontier]
    ok = [r["certified"] for r in frontier]
    chosen = [r for r in frontier if r["chosen"]]
    has_acc = bool(frontier) and frontier[0].get("accuracy") is not None
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(11 if has_acc else 6, 4.2), squeeze=False)
    ax = axes[0][0]
    ax.scatter([r for r, c in zip(risk, ok, strict=True) if not c], [s for s, c in zip(saved, ok, strict=True) if not c],
               s=9, c="#bbbbbb", label="not certified")
    ax.scatter([r for r, c in zip(risk, ok, strict=True) if c], [s for s, c in zip(saved, ok, strict=True) if c],
               s=9, c="#1f77b4", label="certified (p <= delta)")
    ax.axvline(eps, color="#d62728", ls="--", lw=1, label=f"epsilon = {eps:g}")
    if cert.get("budget") is not None:
        ax.axhline(1 - cert["budget"], color="#2ca02c", ls=":", lw=1, label=f"budget: cost <= {cert['budget']:g}")
    for r in chosen:
        ax.scatter([r["risk"]], [r["saved_fraction"]], s=90, marker="*", c="#ff7f0e", zorder=5, label="chosen")
        ax.plot([r["risk"], bound], [r["saved_fraction"]] * 2, color="#ff7f0e", lw=2,
                label=f"upper bound {bound:.4f} (1 - delta = {1 - cert['delta']:g})")
    ax.set_xlim(0, max(3 * eps, min(max(risk, default=eps), 6 * eps)))
    ax.set_xlabel(f"{cert['risk']} on calibration (n = {cert['n']})")
    ax.set_ylabel("cost saved vs all-to-final")
    ax.set_title(f"{title}: cost saved against risk")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    if has_acc:
        ax2 = axes[0][1]
        acc = [r["accuracy"] for r in frontier]
        ax2.scatter(saved, acc, s=9, c=["#1f77b4" if c else "#bbbbbb" for c in ok])
        for r in chosen:
            ax2.scatter([r["saved_fraction"]], [r["accuracy"]], s=90, marker="*", c="#ff7f0e", zorder=5)
        if cert.get("final_tier_accuracy_calibration") is not None:
            ax2.axhline(cert["final_tier_accuracy_calibration"], color="#555555", ls=":", lw=1, label="final tier alone")
        if acc:
            pad = 0.05 * (max(acc) - min(acc)) + 1e-4
            ax2.set_ylim(max(min(acc), max(acc) - 0.1) - pad, max(acc) + pad)
        ax2.set_xlabel("cost saved vs all-to-final")
        ax2.set_ylabel("accuracy on calibration")
        ax2.set_title("accuracy against cost saved")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_markdown(frontier: list[dict], cert: dict, *, png: str, title: str) -> str:
    chosen = next((r for r in frontier if r["chosen"]), None)
    certified = [r for r in frontier if r["certified"]]
    lines = [
        f"# Calibration of {title}", "",
        f"![cost–quality frontier]({png})", "",
        f"Learn-then-Test, fixed-sequence testing down {len(frontier)} settings ordered from the most conservative "
        f"({cert['path']} path), exact {cert['pvalue']} p-values on n = {cert['n']} calibration items "
        f"({cert['n_selection']} more were used to learn the order and the rules to shadow).", "",
        f"**Certificate**: P({cert['risk']} <= {cert['epsilon']:g}) >= 1 - {cert['delta']:g}; "
        f"{cert['losses']} losses in {cert['n']} items (empirical {cert['empirical_risk']:.4f}), "
        f"upper bound {cert['bound']:.4f}; {len(certified)} settings certified before the first that was not.", "",
    ]
    if chosen:
        acc = "" if chosen.get("accuracy") is None else f", accuracy {chosen['accuracy']:.4f}"
        lines.append(f"**Chosen**: setting {chosen['index']}: cost saved {chosen['saved_fraction']:.4f}, "
                     f"{chosen['early_share']:.3f} of items decided before the final tier, disagreement with the "
                     f"final tier {chosen['disagreement']:.4f}{acc}.")
    else:
        lines.append("**Chosen**: nothing was certified; every item goes to the final tier (risk 0 by definition).")
    if cert.get("budget") is not None:
        lines += ["", f"**Budget**: up to {cert['budget']:g} of the all-to-final-tier cost, spent on agreeing with the "
                      "final tier: the chosen setting is the most conservative certified one that fits it"
                      + ("." if cert.get("budget_met") else "; no certified setting fits it, so the cheapest certified "
                         "one was taken.")]
    shadow = {k: v for k, v in (cert.get("shadow_rules") or {}).items() if v}
    lines += ["", "Rules in shadow mode: " + ("; ".join(f"{k}: {', '.join(v)}" for k, v in shadow.items()) or "none"), ""]
    if cert.get("ladder"):
        lines += ["Stricter epsilons a request may ask for:", "", "| epsilon | bound | cost saved | final tier only |",
                  "|---:|---:|---:|:---:|"]
        lines += [f"| {r['epsilon']:g} | {r['bound']:.4f} | {r['saved_fraction']:.4f} | {'yes' if r['final_only'] else ''} |"
                  for r in cert["ladder"]]
        lines.append("")
    lines += ["Some settings along the path (all are in `frontier.json`):", "",
              "| # | losses | risk | disagreement | accuracy | cost saved | p-value | certified |",
              "|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    step = max(1, len(frontier) // 20)
    shown = sorted({*range(0, len(frontier), step), *(r["index"] for r in frontier if r["chosen"])})
    for j in shown:
        r = frontier[j]
        acc = "-" if r.get("accuracy") is None else f"{r['accuracy']:.4f}"
        lines.append(f"| {j}{' *' if r['chosen'] else ''} | {r['losses']} | {r['risk']:.4f} | {r['disagreement']:.4f} | "
                     f"{acc} | {r['saved_fraction']:.4f} | {r['p_value']:.3g} | {'yes' if r['certified'] else ''} |")
    return "\n".join(lines) + "\n"
