"""Compute-optimal planning: the closed-form optimum, the fit recovering known coefficients, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tiergate.training.cli import plan_app
from tiergate.training.plan import Fit, default_fit, fit_runs, plan


def test_optimum_lies_on_the_iso_flop_line_and_minimises_loss():
    f = Fit(E=0.5, A=100.0, B=300.0, alpha=0.4, beta=0.3)
    C = 1e15
    n, d = f.optimum(C)
    assert 6 * n * d == pytest.approx(C)
    grid = np.geomspace(n / 30, n * 30, 201)
    losses = f.loss(grid, C / (6 * grid))
    assert grid[losses.argmin()] == pytest.approx(n, rel=0.05)


def test_fit_recovers_coefficients_from_noiseless_runs():
    true = Fit(E=0.4, A=30.0, B=80.0, alpha=0.35, beta=0.3)
    runs = [{"n_params": n, "n_tokens": d, "loss": float(true.loss(n, d))}
            for n in (1e4, 3e4, 1e5, 3e5) for d in (1e5, 1e6, 1e7)]
    got = fit_runs(runs)
    for n, d in ((5e4, 5e6), (2e5, 3e5)):
        assert got.loss(n, d) == pytest.approx(true.loss(n, d), rel=0.02)


def test_shipped_default_fit_and_cli():
    f = default_fit()
    assert f.alpha > 0 and f.beta > 0 and f.source
    res = plan(1e15)
    assert res["n_params"] > 0 and res["n_tokens"] > 0
    r = CliRunner().invoke(plan_app, ["--compute-flops", "1e15", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["n_params"] == res["n_params"] and d["fit"]["alpha"] == f.alpha
    r = CliRunner().invoke(plan_app, ["--compute-flops", "1e15"])
    assert r.exit_code == 0 and "n_params" in r.output
    r = CliRunner().invoke(plan_app, ["--compute-flops", "-1"])
    assert r.exit_code == 2


def test_plan_fit_reads_a_results_file(tmp_path):
    true = Fit(E=0.3, A=20.0, B=50.0, alpha=0.4, beta=0.35)
    runs = [{"n_params": n, "n_tokens": d, "loss": float(true.loss(n, d))} for n in (1e3, 1e4, 1e5) for d in (1e4, 1e5)]
    (tmp_path / "runs.jsonl").write_text("\n".join(json.dumps(r) for r in runs))
    r = CliRunner().invoke(plan_app, ["fit", "--results", str(tmp_path / "runs.jsonl"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    fit = json.loads((tmp_path / "o" / "fit.json").read_text())
    assert Fit(**fit).loss(3e4, 3e4) == pytest.approx(true.loss(3e4, 3e4), rel=0.03)
    r = CliRunner().invoke(plan_app, ["--compute-flops", "1e12", "--fit", str(tmp_path / "o" / "fit.json"), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["n_params"] > 0
