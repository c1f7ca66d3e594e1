"""What batching buys the fine-tuned large tier where it can pay: ms per item against the batch size, on a GPU.

On the 2-core CPU the large tier's cost is GEMMs that one item already fills (docs/benchmarks.md, *Batching the
large tier on this CPU*: 1.2× at most), so the gateway's batcher cannot reach 3× there. This measures the same
tier (``FinetuneTier`` or a ``finetune-ensemble``'s ``EnsembleTier``, loaded from a trained artifact as the
gateway loads it) on the device it was trained on, serving ``--items`` test texts of ``--data`` in batches of each
size in ``--batches``: one warm-up pass, then at least ``--min-s`` seconds per size.

    python3 experiments/gpu_batching.py --artifact /tmp/models/spamR0-ensemble --data spamassassin \\
        --out /tmp/w/gpu_batching.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tiergate.data import load_dataset
from tiergate.data.items import make_item
from tiergate.models.ensemble import EnsembleTier
from tiergate.models.finetune_io import FinetuneTier


def load_tier(artifact: Path, device: str, batch: int):
    one = lambda d: FinetuneTier.load(d, device=device, batch_size=batch)  # noqa: E731
    return EnsembleTier.load(artifact, one) if (artifact / "ensemble.json").is_file() else one(artifact)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifact", required=True)
    ap.add_argument("--data", default="spamassassin")
    ap.add_argument("--items", type=int, default=256)
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--min-s", type=float, default=3.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    items = [make_item(e.text) for e in load_dataset(args.data).split("test")[: args.items]]
    rows, labels = [], None
    for b in (int(x) for x in args.batches.split(",")):
        tier = load_tier(Path(args.artifact), device, b)
        tier.predict_proba(items[: max(b, 8)])
        sync(device)
        n, t0 = 0, time.perf_counter()
        while True:
            proba = tier.predict_proba(items)
            sync(device)
            n += len(items)
            if time.perf_counter() - t0 >= args.min_s:
                break
        ms = 1000 * (time.perf_counter() - t0) / n
        same = None if labels is None else int((proba.argmax(1) != labels).sum())
        labels = proba.argmax(1) if labels is None else labels
        rows.append({"batch": b, "ms_per_item": round(ms, 3), "items_per_s": round(1000 / ms, 1),
                     "labels_differ_from_batch_1": same})
        print(f"batch {b:>3}: {ms:8.3f} ms/item  {1000 / ms:8.1f} items/s  labels differ from batch 1: {same}",
              flush=True)
    base = rows[0]["ms_per_item"]
    for r in rows:
        r["speedup_vs_first"] = round(base / r["ms_per_item"], 2)
    rep = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "artifact": args.artifact,
           "data": args.data, "items": len(items), "rows": rows}
    Path(args.out).write_text(json.dumps(rep, indent=1))
    print(json.dumps(rep))


if __name__ == "__main__":
    main()
