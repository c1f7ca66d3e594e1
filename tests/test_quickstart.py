"""`tiergate quickstart`, the README's main command, run as a user runs it: a subprocess on a JSONL it has never
seen (real messages, an explicit split), every tier trained for real, calibrated, evaluated; no server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import spam_sample


def _write_jsonl(path, parts: dict[str, int]) -> None:
    with path.open("w") as f:
        for split, n in parts.items():
            src = "test" if split == "test" else "train"
            for ex in spam_sample(n, seed=len(split), split=src):
                f.write(json.dumps({"text": ex.text, "label": ex.label, "split": split}) + "\n")


def _quickstart(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tiergate.cli", "quickstart", "--no-serve", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One quickstart on a 580-message JSONL: (data, work directory, its output)."""
    tmp = tmp_path_factory.mktemp("quickstart")
    data = tmp / "mail.jsonl"
    _write_jsonl(data, {"train": 300, "calibration": 160, "test": 120})
    work = tmp / "qs"
    proc = _quickstart("--data", str(data), "--workdir", str(work), "--epsilon", "0.1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return data, work, proc


def test_quickstart_builds_calibrates_and_evaluates_a_cascade_within_its_budget(first_run):
    data, work, proc = first_run
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


def _tree(d) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_quickstart_large_model_serves_a_large_tier_trained_elsewhere(first_run, tmp_path):
    """``--large-model``: the path from a GPU-trained model to a served cascade. The first run's large tier,
    handed to a second quickstart, is checked, copied whole and used as it is (not retrained): the same
    bytes, and the same final-tier-alone accuracy on the same test split."""
    data, first, _ = first_run
    work = tmp_path / "qs2"
    proc = _quickstart("--data", str(data), "--workdir", str(work), "--epsilon", "0.1",
                       "--large-model", str(first / "large"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checked and copied" in proc.stdout and "sparse mixture-of-experts" not in proc.stdout
    assert _tree(work / "large") == _tree(first / "large")
    a = json.loads((first / "evaluation.json").read_text())
    b = json.loads((work / "evaluation.json").read_text())
    assert b["final_tier_accuracy"] == a["final_tier_accuracy"]
    assert yaml.safe_load((work / "tiergate.yaml").read_text())["tiers"][-1]["path"] == "large"


def test_quickstart_large_model_for_other_labels_is_refused_before_any_work(first_run, tmp_path):
    data, first, _ = first_run
    other = tmp_path / "other.jsonl"
    with other.open("w") as f:  # the same messages under labels the large tier was not trained for
        for line in data.read_text().splitlines():
            row = json.loads(line)
            f.write(json.dumps({**row, "label": {"ham": "keep", "spam": "junk"}[row["label"]]}) + "\n")
    work = tmp_path / "qs3"
    proc = _quickstart("--data", str(other), "--workdir", str(work), "--large-model", str(first / "large"),
                       timeout=120)
    assert proc.returncode == 2
    assert "trained for the labels ham, spam, but the data set has junk, keep" in proc.stderr
    assert not work.exists()


@pytest.mark.parametrize("args, message", [
    (["--large-model", "{missing}"], "not a folder"),
    (["--large-model", "{first}", "--large-preset", "finetune"], "takes no --large-preset"),
    (["--large-model", "{small}"], "--large-model"),  # a folder, but an ONNX small tier, not a large one
])
def test_quickstart_large_model_that_cannot_be_used_changes_nothing(first_run, tmp_path, args, message):
    data, first, _ = first_run
    paths = {"missing": tmp_path / "nope", "first": first / "large", "small": first / "small"}
    work = tmp_path / "qs4"
    proc = _quickstart("--data", str(data), "--workdir", str(work), *[a.format(**paths) for a in args], timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert not work.exists()
