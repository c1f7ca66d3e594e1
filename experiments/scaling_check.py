"""Fit L(N, D) to the H200 grid (runs/gpu/debA/results.json), ship it as the default fit, and check one
held-out prediction with one more run (CPU):

    python experiments/scaling_check.py runs/gpu/debA/results.json --out runs/cpu/scaling
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiergate.data import load_dataset  # noqa: E402
from tiergate.models.large import prepare_training, preset  # noqa: E402
from tiergate.training.plan import fit_runs  # noqa: E402
from tiergate.training.scaling import check_prediction, held_out_budget  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--out", default="runs/cpu/scaling")
    ap.add_argument("--ship", action="store_true", help="write tiergate/training/default_fit.json")
    a = ap.parse_args(argv)
    res = json.loads(Path(a.results).read_text())
    runs = res["scaling"]["runs"]
    fit = fit_runs(runs, source=f"H200 grid of {len(runs)} single-pass runs of the hashed head on debian-packages "
                                "(experiments/train_techniques.py --only scaling); N = active parameters per row, "
                                "D = training rows seen, loss = held-out cross-entropy")
    cfg = preset("hashed")
    prep = prepare_training(load_dataset(res["meta"]["data"]), cfg, seed=0)
    budget = held_out_budget(fit, runs, len(prep.fit_idx))
    check = check_prediction(prep, fit, budget, device="cpu")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"fit": fit.__dict__, "check": check, "runs": runs}
    (out / "results.json").write_text(json.dumps(doc, indent=2))
    if a.ship:
        fit.meta.update(check_relative_error=check["relative_error"], check_budget_flops=budget)
        Path("tiergate/training/default_fit.json").write_text(json.dumps(fit.__dict__, indent=2) + "\n")
    print(json.dumps({"fit": fit.__dict__, "check": {k: v for k, v in check.items() if k != "run"}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
