"""bench/event_loop.py end to end with tiny settings on a real cascade served by `tiergate serve`: both ways of
refusing answer only 429s, and the accept queue is read under load on both event loops."""

from __future__ import annotations

import json
import os
import shutil

import pytest


@pytest.mark.slow
def test_event_loop_bench_end_to_end(tiny_workdir, tmp_path, monkeypatch):
    if shutil.which("wrk") is None or shutil.which("ss") is None:
        if os.environ.get("TIERGATE_REQUIRE_SERVICES"):
            pytest.fail("wrk or ss is missing (Debian: wrk, iproute2), and TIERGATE_REQUIRE_SERVICES says to fail")
        pytest.skip("wrk or ss is not installed")
    from bench.event_loop import main

    monkeypatch.setenv("TIERGATE_ADMIN_TOKEN", "bench-test")
    assert main(["--config", str(tiny_workdir / "tiergate.yaml"), "--seconds", "1", "--repeats", "1",
                 "--connections", "40", "--load-seconds", "3", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "event_loop.json").read_text())
    door, protocol = report["refusals"]
    assert "door" in door["refused_by"] and "protocol" in protocol["refused_by"]
    assert door["median"] > 0 and protocol["median"] > 0  # every wrk request was refused, at some rate
    assert [r["event_loop"] for r in report["accept"]] == ["asyncio", "uvloop"]
    assert all(r["load_rps"] > 0 and r["samples"] for r in report["accept"])
    assert "New connections under load" in (tmp_path / "event_loop.md").read_text()
