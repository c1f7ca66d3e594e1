"""The money /metrics reports is the money `tiergate evaluate` computes: the test split of a real data set,
streamed through the real gateway, costs and saves what the offline evaluation of the same split says."""

from __future__ import annotations

import json

import httpx
import pytest
import yaml

from tests.conftest import running_server
from tests.gateway.test_app import scrape
from tiergate.data import load_dataset
from tiergate.gateway.app import create_app
from tiergate.pipeline import evaluate


@pytest.mark.slow
def test_the_cost_saved_on_metrics_equals_what_evaluate_reports(calibrated_config, labelled_data):
    cfg = yaml.safe_load(calibrated_config.read_text())
    cfg["shadow_audit"] = {"share": 0.0}  # audits are charged against the savings; evaluate has none
    config = calibrated_config.with_name("cost-accounting.yaml")
    config.write_text(yaml.safe_dump(cfg))
    texts = [e.text for e in load_dataset(str(labelled_data)).split("test")]
    with running_server(create_app(config)) as base:
        before = scrape(base)
        for s in range(0, len(texts), 50):
            r = httpx.post(base + "/v1/classify", json={"texts": texts[s:s + 50]}, timeout=60)
            assert r.status_code == 200, r.text
            assert not any(d["degraded"] for d in r.json()["results"])
        after = scrape(base)

    def delta(name):
        return after.get(name, 0.0) - before.get(name, 0.0)

    baseline, cost, saved = (delta("tiergate_baseline_cost_usd_total"), delta("tiergate_cost_usd_total"),
                             delta("tiergate_cost_saved_usd"))
    report = evaluate(config, str(labelled_data), "test", progress=False)
    assert report["n"] == len(texts)
    assert baseline == pytest.approx(report["cost"]["final_tier_only_usd"], rel=1e-6)
    assert saved == pytest.approx(baseline - cost, rel=1e-9)
    # within 1% of the baseline: what the issue asks; in fact the two agree to rounding
    assert abs(saved - report["cost"]["saved_usd"]) <= 0.01 * baseline, json.dumps(report["cost"])
    assert saved / baseline == pytest.approx(report["cost"]["saved_fraction"], abs=1e-6)
