import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tiergate.cli import app
from tiergate.evaluate import format_table


def test_evaluate_json_contract(tiny_workdir):
    r = CliRunner().invoke(app, ["evaluate", "--config", str(tiny_workdir / "tiergate.yaml"), "--data", "spamassassin",
                                 "--split", "test", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["n"] == 769 and d["dataset"] == "spamassassin" and d["split"] == "test"
    assert [t["name"] for t in d["tiers"]] == ["small", "final"]
    assert abs(sum(t["share"] for t in d["tiers"]) - 1) < 1e-9
    assert 0.8 < d["accuracy"] <= 1 and 0.8 < d["final_tier_accuracy"] <= 1
    small_share = d["tiers"][0]["share"]
    # cost: small on every item (1 ms) + final on escalated items (20 ms), baseline 20 ms per item
    expected = 1 - (0.001 + (1 - small_share) * 0.02) / 0.02
    assert abs(d["cost"]["saved_fraction"] - expected) < 1e-9
    assert d["on_escalated"]["n"] == round((1 - small_share) * 769)
    assert "saved" in format_table(d)


def test_classify_offline(tiny_workdir, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"text": "Subject: win money\n\nclick now"}) + "\n\n" + json.dumps({"text": "hello"}) + "\n")
    out = tmp_path / "out.jsonl"
    r = CliRunner().invoke(app, ["classify", "--config", str(tiny_workdir / "tiergate.yaml"), str(inp), "--output", str(out)])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 2 and all(row["label"] in ("ham", "spam") and row["tier"] in ("small", "final") for row in rows)


def test_classify_bad_input_is_a_clear_error(tiny_workdir, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"txt": 1}\n')
    r = CliRunner().invoke(app, ["classify", "--config", str(tiny_workdir / "tiergate.yaml"), str(inp)])
    assert r.exit_code == 2 and "expected a JSON object with 'text'" in r.output


def test_data_info_json():
    r = CliRunner().invoke(app, ["data", "info", "spamassassin", "--json"])
    assert r.exit_code == 0
    assert json.loads(r.stdout)["splits"]["test"]["n"] == 769


@pytest.fixture
def tiny_copy(tiny_workdir, tmp_path) -> Path:
    """A private copy of the tiny cascade's work directory, for tests that calibrate it (calibrate writes the config)."""
    import shutil

    work = tmp_path / "w"
    shutil.copytree(tiny_workdir, work)
    return work


def test_calibrate_measures_costs_and_sets_thresholds(tiny_copy):
    import yaml

    work = tiny_copy
    r = CliRunner().invoke(app, ["calibrate", "--config", str(work / "tiergate.yaml"), "--data", "spamassassin",
                                 "--method", "plain", "--epsilon", "0.02"])
    assert r.exit_code == 0, r.output
    cfg = yaml.safe_load((work / "tiergate.yaml").read_text())
    for t in cfg["tiers"]:
        # batch_size 32 is the default, so the file leaves it out; the note says what was measured
        assert t["cost"]["seconds_per_item"] > 0 and t["cost"].get("batch_size", 32) == 32
        assert "batches of 32" in t["cost"]["measured"] and "cores" in t["cost"]["measured"]
    assert cfg["tiers"][0]["threshold"]["default"] <= 1.0  # the plain search found a threshold
    assert cfg["calibration"]["method"] == "plain" and cfg["calibration"]["disagreement"] <= 0.02


def test_calibrate_with_a_budget_records_it_and_needs_learn_then_test(tiny_copy):
    import yaml

    work = tiny_copy
    args = ["calibrate", "--config", str(work / "tiergate.yaml"), "--data", "spamassassin", "--no-measure",
            "--epsilon", "0.05", "--budget", "0.5", "--json"]
    before = (work / "tiergate.yaml").read_text()
    r = CliRunner().invoke(app, [*args, "--method", "plain"])
    assert r.exit_code != 0 and "needs the Learn-then-Test method" in r.output
    assert (work / "tiergate.yaml").read_text() == before  # a refused calibration changes nothing
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    cfg = yaml.safe_load((work / "tiergate.yaml").read_text())
    assert cfg["calibration"]["budget"] == 0.5 and cfg["certificate"]["budget"] == 0.5
    assert out["budget"] == 0.5
    if out["budget_met"]:
        assert 1 - cfg["certificate"]["saved_fraction_calibration"] <= 0.5

    # recalibrating without --budget keeps the budget the config was calibrated with; --budget 0 removes it
    plain = [a for a in args if a not in ("--budget", "0.5")]
    r = CliRunner().invoke(app, plain)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["budget"] == 0.5
    r = CliRunner().invoke(app, [*plain, "--method", "plain"])  # the kept budget is named, with the way out
    assert r.exit_code != 0 and "last calibrated with" in r.output and "--budget 0" in r.output
    r = CliRunner().invoke(app, [*plain, "--budget", "0"])
    assert r.exit_code == 0, r.output
    cfg = yaml.safe_load((work / "tiergate.yaml").read_text())
    assert "budget" not in json.loads(r.stdout) and "budget" not in cfg["calibration"]
    assert "budget" not in cfg["certificate"]


def test_calibrate_warns_when_the_final_tier_is_worse_than_a_cheaper_one():
    from tiergate.config import TierConfig
    from tiergate.evaluate import tier_checks
    from tiergate.tiers import TierOutput

    y = ["a", "b", "a", "b"]
    tiers = [TierConfig(name="rules", kind="rules", path="r.yaml"), TierConfig(name="small", kind="onnx", path="s"),
             TierConfig(name="large", kind="torch", path="l")]
    rules = [TierOutput(None)] * 4
    small = [TierOutput(v, 0.9) for v in ["a", "b", "a", "b"]]         # 4 / 4
    large = [TierOutput(v, 0.9) for v in ["a", "b", "b", "b"]]         # 3 / 4
    (msg,) = tier_checks(tiers, [rules, small, large], y)
    assert "'large' alone is less accurate (75.00%) than 'small' alone (100.00%)" in msg
    assert tier_checks(tiers, [rules, large, small], y) == []          # final better: nothing to say


def test_calibrate_summary_line_carries_the_warnings():
    from tiergate.cli import _short

    out = _short({"method": "ltt", "epsilon": 0.01, "ladder": [], "warnings": ["final tier is worse"]})
    assert out.splitlines() == ["calibrated: method=ltt, epsilon=0.01", "warning: final tier is worse"]


def test_calibrate_keeps_its_own_warnings_beside_the_tier_checks(tiny_copy, monkeypatch):
    import tiergate.pipeline as pipeline

    work = tiny_copy
    monkeypatch.setattr(pipeline, "tier_checks", lambda tiers, outputs, y: ["a tier check"])
    res = pipeline.calibrate(work / "tiergate.yaml", "spamassassin", epsilon=0.05, measure=False, progress=False,
                             budget=1e-4)
    assert res["budget_met"] is False
    assert "a tier check" in res["warnings"] and any("budget" in w for w in res["warnings"])
