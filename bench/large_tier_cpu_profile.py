"""Where the large tier's CPU inference time goes in the gateway path (``LargeTier.predict_proba``).

    python bench/large_tier_cpu_profile.py --data spamassassin --n 256 [--minilm 16] [--threads 1]

Builds the large tier as the "hashed" preset configures it (hashed word + char n-gram bag, d_model 128, one MoE
block of 8 experts, the wide path) with its idf fitted on training texts; the head's weights are untrained
(inference cost does not depend on their values) and the ensemble's linear member is left out (it is the small
tier's ONNX model, measured with the small tier). Times, per item, at the gateway's batch of 32: the n-gram
counting (tokenise + crc32 hashing), the TF-IDF transform, the CSR build, the head's forward (EmbeddingBag +
BatchNorm + MoE + heads), and the whole ``predict_proba``; then cProfile's top functions over one pass; with
``--minilm N``, the frozen MiniLM encoder (what quickstart's large tier also runs) on N of the same texts.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiergate.data import load_dataset, make_item  # noqa: E402
from tiergate.models.large import Featurizer, LargeTier, SparseClassifier, preset, texts_for  # noqa: E402
from tiergate.training.data import bag_to_csr  # noqa: E402


def _per_item_ms(fn, batches, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            fn(b)
        ts.append((time.perf_counter() - t0) / sum(len(b) for b in batches) * 1e3)
    return statistics.median(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="spamassassin")
    ap.add_argument("--n", type=int, default=256, help="test items profiled")
    ap.add_argument("--fit", type=int, default=1000, help="training texts the idf is fitted on")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the gateway's workers use few)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--minilm", type=int, default=0, help="also time the MiniLM encoder on this many texts")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    ds = load_dataset(a.data)
    cfg = preset("hashed")
    train = ds.split("train")[: a.fit]
    test = ds.split("test")[: a.n]
    labels = sorted({e.label for e in ds.split("train")})
    feat = Featurizer(cfg).fit([make_item(e.text) for e in train])
    torch.manual_seed(0)
    model = SparseClassifier(cfg, len(labels), 0)
    tier = LargeTier(model, feat, labels, manifest={})
    items = [make_item(e.text) for e in test]
    batches = [items[s: s + a.batch] for s in range(0, len(items), a.batch)]
    bag_texts = [[texts_for(it)[1] for it in b] for b in batches]
    counts = [feat.bag.counts(t) for t in bag_texts]
    trans = [feat.bag.transform_counts(c) for c in counts]
    tables = [feat.table(b) for b in batches]
    model.eval()

    def forward(table):
        with torch.inference_mode():
            return torch.softmax(model(table.batch(np.arange(len(table)))).float(), -1)

    tier.predict_proba(batches[0])  # warm-up (allocator, first-call paths)
    it = iter(range(10 ** 9))
    stages = {
        "make_item (parse mail)": _per_item_ms(lambda b: [make_item(e.text) for e in b],
                                               [test[s: s + a.batch] for s in range(0, len(test), a.batch)], a.repeats),
        "n-gram counting (tokenise + crc32)": _per_item_ms(feat.bag.counts, bag_texts, a.repeats),
        "TF-IDF transform": _per_item_ms(feat.bag.transform_counts, counts, a.repeats),
        "CSR build": _per_item_ms(lambda t: bag_to_csr(*t, len(t[1]), cfg.bag.n_buckets), trans, a.repeats),
        "head forward (bag + BN + MoE + heads)": _per_item_ms(forward, tables, a.repeats),
        "predict_proba total": _per_item_ms(tier.predict_proba, batches, a.repeats),
    }
    del it
    nnz = [len(t[0]) / max(len(t[1]), 1) for t in trans]
    prof = cProfile.Profile()
    prof.enable()
    for b in batches:
        tier.predict_proba(b)
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(12)
    top = "\n".join(line for line in s.getvalue().splitlines() if line.strip())
    out = {"data": a.data, "n_items": len(items), "batch": a.batch, "torch_threads": a.threads,
           "mean_chars": round(float(np.mean([len(texts_for(i)[1]) for i in items])), 1),
           "mean_ngrams_per_item": round(float(np.mean(nnz)), 1), "ms_per_item": {k: round(v, 4) for k, v in stages.items()},
           "command": "python " + " ".join(sys.argv)}
    if a.minilm:
        from tiergate.models.encoder import MiniLMEncoder

        enc = MiniLMEncoder.from_package(max_tokens=cfg.chunk_tokens, max_chunks=2)
        sem = [texts_for(i)[0] for i in items[: a.minilm]]
        enc.encode(sem[:2])
        t0 = time.perf_counter()
        enc.encode(sem)
        out["ms_per_item"]["MiniLM encoder (2 chunks of 128 tokens), quick preset"] = round(
            (time.perf_counter() - t0) / len(sem) * 1e3, 2)
    print(json.dumps(out, indent=1))
    print(top[-3000:])
    if a.out:
        Path(a.out).write_text(json.dumps({**out, "cprofile_top": top}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
