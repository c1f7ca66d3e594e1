"""`tiergate quickstart`, the README's main command, run as a user runs it: a subprocess on a JSONL it has never
seen (real messages, an explicit split), every tier trained for real, calibrated, evaluated; no server."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from tests.conftest import spam_sample


def _write_jsonl(path, parts: dict[str, int]) -> None:
    with path.open("w") as f:
        for split, n in parts.items():
            src = "test" if split == "test" else "train"
            for ex in spam_sample(n, seed=len(split), split=src):
                f.write(json.dumps({"text": ex.text, "label": ex.label, "split": split}) + "\n")


def test_quickstart_builds_calibrates_and_evaluates_a_cascade_within_its_budget(tmp_path):
    data = tmp_path / "mail.jsonl"
    _write_jsonl(data, {"train": 300, "calibration": 160, "test": 120})
    work = tmp_path / "qs"
    proc = subprocess.run([sys.executable, "-m", "tiergate.cli", "quickstart", "--no-serve", "--data", str(data),
                           "--workdir", str(work), "--epsilon", "0.1"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert step in proc.stdout

    report = json.loads((work / "evaluation.json").read_text())
    assert report["n"] == 120 and report["split"] == "test"
    assert [t["name"] for t in report["tiers"]] == ["small", "large"]  # no rule pack for a data set it doesn't know
    assert abs(sum(t["share"] for t in report["tiers"]) - 1) < 1e-9
    assert report["accuracy"] > 0.8  # 300 real training messages are plenty for spam vs ham

    cfg = yaml.safe_load((work / "tiergate.yaml").read_text())
    cert = cfg["certificate"]
    assert cert["epsilon"] == 0.1 and cert["n"] == 160
    # the default cost target: at most 10% of sending everything to the final tier, on the calibration split
    assert cert["budget"] == 0.1
    if cert["budget_met"]:
        assert 1 - cert["saved_fraction_calibration"] <= 0.1 + 1e-9
    else:
        assert "warning: no setting certified" in proc.stdout  # said, not silently ignored
    assert all(t["cost"]["measured"] for t in cfg["tiers"])  # costs measured on this machine, written in


def test_quickstart_refuses_a_budget_outside_0_1_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tiergate.cli", "quickstart", "--no-serve", "--budget", "1.5",
                           "--workdir", str(tmp_path / "qs")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--budget" in proc.stderr
    assert not (tmp_path / "qs").exists()
