"""The study behind the figures in docs/calibration.md: how the calibrated cascade does on the test split, for
each risk and each order of settings, with everything chosen on the calibration split only.

    python -m tiergate.calibration.study --config W/tiergate.yaml --data spamassassin --out W/study.md

Every tier scores both splits once (cached as ``scored-<split>.pkl`` beside the config); then each variant is
calibrated on a fresh copy of the config and *checked* on test. Nothing here writes the served config.
"""

from __future__ import annotations

import argparse
import copy
import pickle
from pathlib import Path

import numpy as np

from tiergate.calibration.ltt import calibrate_cascade, evaluate_settings, fixed_sequence
from tiergate.calibration.paths import modelled_path, shared_path
from tiergate.calibration.replay import movable_tiers, scored_from_outputs, thresholds_matrix
from tiergate.calibration.risk import Risk
from tiergate.evaluate import summarize


def scored_splits(config: Path, data: str) -> dict[str, tuple[list, list[str]]]:
    """``{split: (outputs, labels)}`` for calibration and test, scored once and cached beside the config."""
    from tiergate.cascade import Cascade
    from tiergate.data import load_dataset
    from tiergate.evaluate import score_tiers
    from tiergate.pipeline import items_of

    out, cascade = {}, None
    for split in ("calibration", "test"):
        cache = config.parent / f"scored-{split}.pkl"
        if cache.is_file():
            out[split] = pickle.loads(cache.read_bytes())
            continue
        cascade = cascade or Cascade.from_config(config)
        items, y = items_of(load_dataset(data), split)
        out[split] = (score_tiers(cascade, items, progress=False), y)
        cache.write_bytes(pickle.dumps(out[split]))
    return out


class _Replay:
    """A cascade stand-in for calibration on cached outputs (tiers never run; rules are kept as they are)."""

    def __init__(self, config):
        from tiergate.tiers import FunctionTier

        self.config = config
        self.tiers = [FunctionTier(t.name, config.labels, lambda texts: None) for t in config.tiers]
        self.base = None

    def versions(self) -> dict[str, str]:
        return {t.name: "" for t in self.config.tiers}


def risk_rows(config, scored, risks, epsilon: float, delta: float) -> list[dict]:
    (outs, y), (touts, ty) = scored["calibration"], scored["test"]
    rows = []
    for risk in risks:
        cfg = copy.deepcopy(config)
        cfg.certificate = None  # keep cfg.calibration: it says which rules a previous run switched off
        res = calibrate_cascade(_Replay(cfg), outs, y, epsilon=epsilon, delta=delta, risk=risk, report=False)
        rep = summarize(touts, ty, cfg.tiers, dataset="", split="test")
        rows.append({"risk": risk, "n": res["n"], "losses": res["losses"], "bound": res["bound"],
                     "thresholds": {t.name: t.threshold.default for t in cfg.tiers[:-1]},
                     "test_disagreement": rep["disagreement_with_final_tier"],
                     "test_saved": rep["cost"]["saved_fraction"], "test_accuracy": rep["accuracy"],
                     "final_accuracy": rep["final_tier_accuracy"]})
    return rows


def path_rows(config, scored, epsilon: float, delta: float, seeds=(0, 1, 2)) -> list[dict]:
    """Cost saved certified on the test *part* of the calibration split, shared against modelled orders."""
    outs, y = scored["calibration"]
    s = scored_from_outputs(outs, y, config.tiers, extra_labels=config.labels)
    rk = Risk("disagreement")
    base = thresholds_matrix(config.tiers, s.labels)
    movable = movable_tiers(config.tiers)

    def certified(part, settings):
        fr = evaluate_settings(part, settings, rk)
        j, _, _ = fixed_sequence(fr, int(rk.mask(part).sum()), epsilon, delta)
        return fr[j]["saved_fraction"] if j >= 0 else None

    rows = [{"path": "shared, every item testing", "seed": None, "saved": certified(s, shared_path(base, movable))}]
    for seed in seeds:
        perm = np.random.default_rng(seed).permutation(s.n)
        n_sel = int(0.3 * s.n)
        sel, test = s.subset(np.sort(perm[:n_sel])), s.subset(np.sort(perm[n_sel:]))
        rows.append({"path": "shared, 70% testing", "seed": seed, "saved": certified(test, shared_path(base, movable))})
        rows.append({"path": "modelled", "seed": seed,
                     "saved": certified(test, modelled_path(sel, base, movable, lambda p, sel=sel: rk.loss(sel, p)))})
    return rows


def main(argv=None) -> None:
    from tiergate.config import load_config
    from tiergate.registry import capabilities_of

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--epsilon", type=float, default=0.01)
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--risks", default="disagreement,error")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    config, _ = load_config(a.config)
    for t in config.tiers:  # rules a previous calibration switched off are part of the cascade being studied
        if not capabilities_of(t).distribution and t.name in (config.calibration or {}).get("rules_off", []):
            t.threshold.default = 0.0
    scored = scored_splits(a.config, a.data)
    lines = [f"# Calibration study: {a.data}, epsilon {a.epsilon}, delta {a.delta}", "",
             "| risk | n | losses | bound | thresholds | test disagreement | test saved | test accuracy | final alone |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in risk_rows(config, scored, a.risks.split(","), a.epsilon, a.delta):
        lines.append(f"| {r['risk']} | {r['n']} | {r['losses']} | {r['bound']:.4f} | {r['thresholds']} | "
                     f"{r['test_disagreement']:.4f} | {r['test_saved']:.4f} | {r['test_accuracy']:.4f} | "
                     f"{r['final_accuracy']:.4f} |")
    lines += ["", "| order of settings | seed | cost saved certified (calibration test part) |", "|---|---:|---:|"]
    for r in path_rows(config, scored, a.epsilon, a.delta):
        saved = "-" if r["saved"] is None else f"{r['saved']:.4f}"
        lines.append(f"| {r['path']} | {'' if r['seed'] is None else r['seed']} | {saved} |")
    a.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
