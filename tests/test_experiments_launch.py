"""experiments/launch.py: every preset builds its commands, and held-out targets come from earlier results."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def launch():
    spec = importlib.util.spec_from_file_location("launch", ROOT / "experiments" / "launch.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["launch"] = mod  # dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop("launch", None)


def test_every_preset_builds_and_prints_its_commands(launch, capsys):
    for name in launch.PRESETS:
        launch.main([name, "--dry-run"])
        lines = capsys.readouterr().out.strip().splitlines()
        assert lines and all(" python3 " in ln for ln in lines), name
    launch.main(["--list"])
    assert len(capsys.readouterr().out.strip().splitlines()) == len(launch.PRESETS)


def test_targets_are_read_from_the_earlier_call_s_results(launch):
    runs = json.loads((ROOT / "experiments/results/h200_debian_lb10/results.json").read_text())["largebatch3"]["runs"]
    want = {r["seed"]: r["target_holdout_acc"] for r in runs if r["arm"] == launch.LS_BASELINE}
    assert launch.baseline_targets("h200_debian_lb10", list(range(10))) == {s: want[s] for s in range(10)}
    jobs = launch.call8().jobs
    assert [j.cmd[j.cmd.index("--lb-target") + 1] for j in jobs] == [repr(want[s]) for s in range(10)]
    with pytest.raises(SystemExit, match="seed"):
        launch.baseline_targets("h200_debian_lb10", [42])


def test_only_runs_the_named_jobs_and_refuses_unknown_names(launch, capsys, monkeypatch):
    monkeypatch.setenv("ONLY", "spamE0,groupsE2")
    launch.main(["ft9", "--dry-run"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split("--name ")[1].split()[0] for ln in lines] == ["spamE0", "groupsE2"]
    monkeypatch.setenv("ONLY", "spamE0,nosuchjob")
    with pytest.raises(SystemExit, match="nosuchjob"):
        launch.main(["ft9", "--dry-run"])
