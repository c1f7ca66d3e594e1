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
