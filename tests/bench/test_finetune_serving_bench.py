"""bench/finetune_serving.py runs end to end (tiny settings) and writes the table's figures to its report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[2]


def test_the_bench_measures_both_runtimes_and_writes_its_report(tmp_path):
    out = tmp_path / "report.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "finetune_serving.py"), "--tokens", "16",
                        "--threads", "1", "--batches", "1,2", "--min-s", "0.05", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(row["threads"], row["batch"]) for row in rows] == [(1, 1), (1, 2)]
    assert all(row["torch_ms"] > 0 and row["onnx_ms"] > 0 for row in rows)
    assert "| 1 | 2 | 16 |" in r.stdout


def test_the_ensemble_preset_times_each_member_and_reports_their_sum(tmp_path):
    out = tmp_path / "report.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "finetune_serving.py"), "--preset", "finetune-ensemble",
                        "--tokens", "16", "--threads", "1", "--batches", "1", "--min-s", "0.05", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    members = row["members"]
    assert set(members) == {"finetune", "finetune-dense-hashed"}
    assert row["torch_ms"] == pytest.approx(sum(m["torch_ms"] for m in members.values()))
    # the hashed member has no ONNX graph: runtime auto serves it in torch, so its onnx time is its torch time
    assert members["finetune-dense-hashed"]["onnx_ms"] == members["finetune-dense-hashed"]["torch_ms"]
