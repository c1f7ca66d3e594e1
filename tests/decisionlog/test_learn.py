"""Retraining the small tier from the log: the log's lessons join the train split, the tier gets a new version
(the old folder kept), the certificate reads stale; a log without text is refused with the fix."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import spam_sample
from tiergate.calibration.ltt import certificate_status
from tiergate.cascade import Cascade
from tiergate.decisionlog.learn import retrain_small_from_log
from tiergate.decisionlog.store import DECISION_COLUMNS, DecisionStore
from tiergate.errors import ConfigError

TIERGATE = Path(sys.executable).with_name("tiergate")


@pytest.fixture
def workdir(tmp_path, tiny_workdir) -> Path:
    """Two tiers copied from tiny_workdir, a data file of 200 real rows, a certificate for the current versions."""
    for name in ("small", "final"):
        shutil.copytree(tiny_workdir / name, tmp_path / name)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in spam_sample(200, seed=3)))
    cfg = {"dataset": str(data), "labels": ["ham", "spam"],
           "tiers": [{"name": "small", "kind": "onnx", "path": "small", "threshold": {"default": 0.9}},
                     {"name": "final", "kind": "onnx", "path": "final"}],
           "log": {"store_text": "all"}}
    (tmp_path / "tiergate.yaml").write_text(yaml.safe_dump(cfg))
    c = Cascade.from_config(tmp_path / "tiergate.yaml")
    cfg["certificate"] = {"epsilon": 0.01, "delta": 0.05, "versions": c.versions(),
                          "thresholds": {tc.name: tc.threshold.model_dump() for tc in c.config.tiers}}
    c.close()
    (tmp_path / "tiergate.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def log_rows(d: Path, rows: list[tuple[str, str, str, str]]) -> None:
    """(request_id, deciding tier, label, text) into the config's log."""
    store = DecisionStore.open(d / "decisions.db")
    vid = store.version_id("{}")
    values = []
    for rid, tier, label, text in rows:
        v = {"request_id": rid, "ts": 1e9, "tier": tier, "label": label, "confidence": 0.6, "path": f"small,{tier}",
             "reason": "r", "cost_usd": 0.0, "baseline_cost_usd": 0.0, "degraded": None, "final_only": 0,
             "versions_id": vid, "text_sha256": "0" * 64, "text": text}
        values.append(tuple(v[c] for c in DECISION_COLUMNS))
    store.insert_decisions(values)
    store.close()


def test_retraining_from_the_log_makes_a_new_version_and_the_certificate_stale(workdir):
    spam = spam_sample(120, seed=11, split="calibration")
    log_rows(workdir, [(f"r{i}", "final", e.label, e.text) for i, e in enumerate(spam)])
    old = json.loads((workdir / "small" / "manifest.json").read_text())
    out = retrain_small_from_log(workdir / "tiergate.yaml", progress=False)
    new = json.loads((workdir / "small" / "manifest.json").read_text())
    assert out["log_rows"] == {"final_tier": 120} and out["tiers"]["small"]["version"] == new["version"]
    assert new["version"] != old["version"] and new["train_items"] == out["train_split"] + 120
    assert new["trained_from"]["previous_version"] == old["version"]
    assert (workdir / f"small.prev-{old['version']}" / "model.onnx").is_file(), "the old model is kept"
    assert not (workdir / "small.new").exists()
    c = Cascade.from_config(workdir / "tiergate.yaml")  # the new tier loads (hashes verified)
    status = certificate_status(c, c.config.certificate)
    c.close()
    assert status["stale"] and any("small" in r for r in status["stale_reasons"])
    assert out["next"].startswith("the certificate is now stale")


def test_a_log_without_text_is_refused_with_the_setting_that_fixes_it(workdir):
    log_rows(workdir, [("r1", "final", "spam", None)])
    with pytest.raises(ConfigError, match="log.store_text"):
        retrain_small_from_log(workdir / "tiergate.yaml", progress=False)
    cli = subprocess.run([str(TIERGATE), "train", "small", "--config", str(workdir / "tiergate.yaml"), "--from-log"],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and "holds no text" in cli.stderr
    old = json.loads((workdir / "small" / "manifest.json").read_text())["version"]
    assert not list(workdir.glob("small.prev-*")) and old, "nothing changed"


def test_cheap_answers_alone_teach_nothing(workdir):
    log_rows(workdir, [("r1", "small", "spam", "some text")])
    with pytest.raises(ConfigError, match="none has a label from the final tier"):
        retrain_small_from_log(workdir / "tiergate.yaml", progress=False)
