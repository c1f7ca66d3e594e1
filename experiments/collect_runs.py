"""Merge the ``results.json`` of several experiment folders (one per process of a device call) into one.

    python experiments/collect_runs.py --out experiments/results/h200_debian_lb3 --key largebatch3 \
        --as largebatch3 /tmp/r1/lb0 /tmp/r1/ls0 ...

Each run keeps its own exact config; ``source`` records the folder it came from. With ``--set k=v`` every run
of this merge gets that field (e.g. ``--set schedule=equal-steps``). An existing ``--out/results.json`` is
extended, not replaced, so several calls can feed one figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--key", required=True, help="experiment key to read from each folder")
    ap.add_argument("--as", dest="as_key", default=None, help="key to write under (default: --key)")
    ap.add_argument("--set", action="append", default=[], help="k=v added to every merged run")
    ap.add_argument("--command", default=None, help="the device command(s) that produced the folders")
    ap.add_argument("folders", nargs="+")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    merged = json.loads(path.read_text()) if path.exists() else {}
    key = a.as_key or a.key
    runs = merged.setdefault(key, {"runs": []})["runs"]
    extra = dict(kv.split("=", 1) for kv in a.set)
    for folder in a.folders:
        res = json.loads((Path(folder) / "results.json").read_text())
        if "error" in res.get(a.key, {}):
            print(f"{folder}: {a.key} failed: {res[a.key]['error']}", file=sys.stderr)
            continue
        merged.setdefault("meta", {k: v for k, v in res["meta"].items() if k != "command"})
        for r in res[a.key]["runs"]:
            r.pop("curve", None)
            runs.append({**r, **extra, "source": f"{Path(folder).name}: {res['meta']['command']}"})
    if a.command:
        merged["meta"]["command"] = a.command
    path.write_text(json.dumps(merged, default=float))
    print(f"{path}: {key} has {len(runs)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
