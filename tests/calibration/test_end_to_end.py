"""calibrate -> evaluate -> serve on a real (tiny) two-tier ONNX cascade and the real spamassassin splits: the
certificate reaches the config, the evaluation report, /readyz, /metrics and per-request epsilons, and goes
stale when what it was computed for changes."""

from __future__ import annotations

import shutil

import httpx
import pytest
import yaml

from tests.conftest import running_server
from tiergate.config import load_config, save_config
from tiergate.gateway.app import create_app
from tiergate.pipeline import calibrate, evaluate

HAM = "Subject: meeting notes\n\nHi Bob, attached are the notes from Tuesday's design review."


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, tiny_workdir):
    d = tmp_path_factory.mktemp("e2e") / "w"
    shutil.copytree(tiny_workdir, d)
    result = calibrate(d / "tiergate.yaml", "spamassassin", epsilon=0.02, delta=0.05, measure=False, progress=False)
    return d, result


def test_calibrate_writes_certificate_thresholds_and_report(calibrated):
    d, result = calibrated
    cfg, _ = load_config(d / "tiergate.yaml")
    cert = cfg.certificate
    assert result["method"] == "ltt" and cert["n"] == 780 and cert["epsilon"] == 0.02
    assert cert["bound"] <= 0.02 and cert["data_hash"] and set(cert["versions"]) == {"small", "final"}
    assert cert["thresholds"]["small"] == cfg.tiers[0].threshold.model_dump()
    for name in ("frontier.png", "frontier.md", "frontier.json"):
        assert (d / "calibration" / name).stat().st_size > 200
    assert "Certificate" in (d / "calibration" / "frontier.md").read_text()


def test_evaluate_carries_the_certificate_beside_the_realised_disagreement(calibrated):
    d, _ = calibrated
    report = evaluate(d / "tiergate.yaml", "spamassassin", "test", progress=False)
    cert = report["certificate"]
    assert cert["stale"] is False and cert["stale_reasons"] == []
    assert {"epsilon", "delta", "n", "bound", "risk", "data_hash", "created"} <= set(cert)
    assert 0 <= report["disagreement_with_final_tier"] <= 1


def test_served_certificate_metrics_and_per_request_epsilon(calibrated, tmp_path):
    d, _ = calibrated
    raw = yaml.safe_load((d / "tiergate.yaml").read_text())
    raw.setdefault("server", {})["anonymous_privileges"] = ["epsilon"]  # a per-request epsilon is a privilege
    (d / "open.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    with running_server(create_app(d / "open.yaml", watch_rules=False)) as base:
        ready = httpx.get(base + "/readyz").json()
        assert ready["certificate"]["epsilon"] == 0.02 and ready["certificate"]["stale"] is False
        metrics = httpx.get(base + "/metrics").text
        assert "tiergate_certificate_epsilon 0.02" in metrics and "tiergate_certificate_stale 0.0" in metrics
        strict = httpx.post(base + "/v1/classify", json={"text": HAM, "epsilon": 1e-5}).json()
        assert strict["tier"] == "final" and strict["applied"]["mode"] == "final_only"
        loose = httpx.post(base + "/v1/classify", json={"text": HAM, "epsilon": 0.5}).json()
        assert loose["applied"]["mode"] == "certified"
    # A hand-edited threshold: the next start reports the certificate stale, with the reason.
    cfg, _ = load_config(d / "tiergate.yaml")
    cfg.tiers[0].threshold.default = 0.51
    save_config(cfg, tmp_path / "edited.yaml")
    for sub in ("small", "final"):
        shutil.copytree(d / sub, tmp_path / sub)
    with running_server(create_app(tmp_path / "edited.yaml", watch_rules=False)) as base:
        cert = httpx.get(base + "/readyz").json()["certificate"]
        assert cert["stale"] and any("small" in r for r in cert["stale_reasons"])
        assert "tiergate_certificate_stale 1.0" in httpx.get(base + "/metrics").text
