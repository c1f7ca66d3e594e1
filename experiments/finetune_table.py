"""The finetune preset's side-by-side table, read from experiments/results/finetune/*.json (finetune_eval.py,
ngram_member.py and finetune_cpu_eval.py write them).

The second table is the wide path's (issue 16's lead: a frozen LR over the hashed n-gram bag, which the
fine-tuned encoder corrects; ``*-wide`` runs): the LR alone (``*-wide-lr``) and the whole model, upcycled and
dense, each against the small tier fitted in the same device call.

``--seeds`` prints the seed-spread table of the vocabulary-path recipe (headers + 512 tokens, 8 epochs, lr 1e-4):
every run of a variant found under its name pattern (``spamU<seed>-upcycled-vocab``, ``spamD<seed>-dense-vocab``,
...), its test errors, their mean and range, and accuracy on the items the small tier escalates.

``--pairs`` prints every two of those single runs averaged (what ``--preset finetune-ensemble`` serves; the
ensemble's own runs, ``*E<seed>-ensemble``, are seed rows, and their members ``-m0``/``-m1`` single runs).

``--combine OUT A B`` writes ``OUT.json``: runs A and B averaged, the ensemble of two members trained in separate
device calls (``spamR0b-ensemble``: spamR0's member 0 with ft13's retrained member 1).

``--average`` first writes ``NAME-avg-char.json``: the fine-tuned tier's probabilities averaged with the
independent character n-gram member's (both files must hold ``proba``), then moves ``proba`` out of files over
1 MB into a compressed fp16 ``NAME.proba.npz`` beside them (``--shrink`` does only that) so the results stay
small in git. Without it, prints the markdown table of docs/benchmarks.md.

    python experiments/finetune_table.py --average && python experiments/finetune_table.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

R = Path(__file__).resolve().parent / "results" / "finetune"
# (row label, run prefix of the default recipe, run prefix of the tuned recipe averaged with the char member)
SETS = [("spamassassin", "spamassassin", "spamassassin"), ("debian-packages", "debian", "debian8"),
        ("five groups (JSONL)", "groups", "groupsH8")]
TUNED = {"spamassassin": "spam8", "debian": "debian8", "groups": "groupsH8"}
ESCALATE_BELOW = 0.95  # the small tier's confidence under which the cascade escalates
# the wide-path runs, one row per recipe: (data, recipe, small tier of the same call, wide LR alone, upcycled + wide,
# dense + wide). The LR alone is one per data set: the same bag, C and fit rows in every run (identical predictions).
WIDE_ROWS = [
    ("spamassassin", "256 tokens, 4 epochs, lr 5e-5", "spamassassin", "spamassassin-upcycled-wide", None),
    ("spamassassin", "256 tokens, 8 epochs, lr 1e-4", "spamassassin", "spam8-upcycled-wide", "spam8d-dense-wide"),
    ("spamassassin", "headers + 512 tokens, 8 epochs, lr 1e-4", "spamassassin", "spamH8-upcycled-wide",
     "spamH8d-dense-wide"),
    ("debian-packages", "256 tokens, 4 epochs, lr 5e-5", "debianW", "debianWu-upcycled-wide", "debianWd-dense-wide"),
    ("five groups (JSONL)", "headers + 512 tokens, 4 epochs, lr 5e-5", "groupsH8", "groupsHw-upcycled-wide", None),
    ("five groups (JSONL)", "headers + 512 tokens, 8 epochs, lr 1e-4", "groupsH8", "groupsH8-upcycled-wide",
     "groupsH8d-dense-wide"),
]
LR_ALONE = {"spamassassin": "spamassassin-upcycled-wide-lr", "debianW": "debianWu-upcycled-wide-lr",
            "groupsH8": "groupsH8-upcycled-wide-lr"}


def load(name: str) -> dict | None:
    """A run's record; test probabilities kept beside a large record (``NAME.proba.npz``, fp16) are put back."""
    p = R / f"{name}.json"
    if not p.is_file():
        return None
    rec = json.loads(p.read_text())
    if "proba" not in rec and (side := R / f"{name}.proba.npz").is_file():
        rec["proba"] = np.load(side)["proba"].astype(np.float32)
    return rec


def shrink(limit: int = 1_000_000) -> None:
    """Records over ``limit`` bytes keep their test probabilities as a compressed fp16 sidecar (``--pairs`` reads
    it), except the wide path alone's (``-lr``), whose probabilities nothing reads."""
    for p in R.glob("*.json"):
        if p.stat().st_size <= limit:
            continue
        d = json.loads(p.read_text())
        proba = d.pop("proba", None)
        if proba is not None and not p.stem.endswith("-lr"):
            np.savez_compressed(R / f"{p.stem}.proba.npz", proba=np.asarray(proba, dtype=np.float16))
        p.write_text(json.dumps(d))


def aligned(rec: dict, ids: list[str], labels: list[str]) -> np.ndarray:
    """rec's predicted label per id of ``ids``, as an index into ``labels``."""
    by_id = dict(zip(rec["ids"], rec["pred"], strict=True))
    return np.array([labels.index(rec["labels"][by_id[i]]) for i in ids])


def average(ft_name: str, char_name: str, out_name: str) -> None:
    a, b = load(ft_name), load(char_name)
    cols = [b["labels"].index(lab) for lab in a["labels"]]
    pb = dict(zip(b["ids"], np.asarray(b["proba"])[:, cols], strict=True))
    proba = 0.5 * (np.asarray(a["proba"]) + np.stack([pb[i] for i in a["ids"]]))
    pred = proba.argmax(1)
    y = np.array(a["y"])
    rec = {k: a[k] for k in ("dataset", "labels", "n_test", "ids", "y")}
    rec.update(variant=f"{ft_name} + {char_name}, averaged", accuracy=float((pred == y).mean()),
               errors=int((pred != y).sum()), pred=pred.tolist(), conf=np.round(proba.max(1), 5).tolist())
    (R / f"{out_name}.json").write_text(json.dumps(rec))


def cells(small: str, names, digits: int = 2) -> list[str]:
    """Per run: test accuracy (errors; x the small tier's errors) / accuracy on the items the small tier escalates."""
    s = load(small)
    if s is None:  # not run yet
        return ["—"] * (len(names) + 1)
    labels, ids = s["labels"], s["ids"]
    y = np.array([labels.index(a) if a in labels else -1 for a in (s["labels"][v] for v in s["y"])])
    esc = np.array(s["conf"]) < ESCALATE_BELOW
    small_err = max(int((aligned(s, ids, labels) != y).sum()), 1)
    out = [f"{esc.sum()}"]
    for name in names:
        rec = load(name) if name else None
        if rec is None:
            out.append("—")
            continue
        pred = aligned(rec, ids, labels)
        err = int((pred != y).sum())
        out.append(f"{(pred == y).mean():.2%} ({err}; {err / small_err:.{digits}f}×) / {(pred[esc] == y[esc]).mean():.1%}")
    return out


def row(label: str, base: str, ft: str) -> list[str]:
    small = f"{base}-small"
    return [label, *cells(small, (small, f"{base}-dense", f"{base}-upcycled", f"{TUNED[base]}-upcycled",
                                  f"{ft}-avg-char"))]


def run_line(p: Path) -> str:
    d = json.loads(p.read_text())
    c = d["config"]
    wide = f", wide LR C={d['wide_C']:g} fit in {d['wide_fit_seconds']} s" if d.get("wide_C") is not None else ""
    return (f"| {p.stem} (tokens {c['max_tokens']}, headers {c['read_headers']}, epochs {c['train']['epochs']:g}, "
            f"lr {c['train']['lr']:g}, batch {c['train']['batch_size']}{wide}) | {d['train_seconds']} | "
            f"{d.get('best_step')} of {d['steps']} | {d['serve_ms_per_item']} | {d['n_params'] / 1e6:.1f}M | "
            f"{d['active_params_per_token'] / 1e6:.1f}M |")


# the seed-spread rows: (data, small tier's run, [(variant label, glob of its runs)])
SEED_ROWS = [
    ("spamassassin", "spamassassin-small", [("upcycled + vocab", "spamU*-upcycled-vocab|spamE[0-9]*-ensemble-m0|spamR0-ensemble-m0"),
                                            ("upcycled + vocab, cross-fitted LR (ft15)", "spamK*-upcycled-vocab"),
                                            ("upcycled + vocab, cascade focus w = 8 (ft17, ft18)", "spamF[0-9]-upcycled-vocab|spamEF*-ensemble-m0"),
                                            ("upcycled + vocab, cascade focus w = 24 (ft17)", "spamFF*-upcycled-vocab"),
                                            ("dense + vocab", "spamD*-dense-vocab"),
                                            ("upcycled + hashed", "spamH[0-9]*-upcycled-wide"),
                                            ("dense + hashed", "spamH[0-9]*d-dense-wide|spamE[0-9]*-ensemble-m1|spamEF*-ensemble-m1|spamR0-ensemble-m1|spamR0m1-dense-wide"),
                                            ("finetune-ensemble", "spamE[0-9]*-ensemble|spamR0-ensemble|spamR0b-ensemble"),
                                            ("finetune-ensemble, focus w = 8 on member 0 (ft18)", "spamEF*-ensemble"),
                                            ("upcycled + vocab, focus w = 8, header_tokens = 128 (ft21)", "spamEB[0-9]-ensemble-m0"),
                                            ("dense + hashed, header_tokens = 128 (ft21)", "spamEB[0-9]-ensemble-m1"),
                                            ("finetune-ensemble, header_tokens = 128 (ft21)", "spamEB[0-9]-ensemble"),
                                            ("upcycled + vocab, focus w = 8, header_tokens = 64 (ft21)", "spamEB64x*-ensemble-m0"),
                                            ("dense + hashed, header_tokens = 64 (ft21)", "spamEB64x*-ensemble-m1"),
                                            ("finetune-ensemble, header_tokens = 64 (ft21)", "spamEB64x*-ensemble")]),
    ("five groups (JSONL)", "groupsH8-small", [("upcycled + vocab", "groups[AU]*-upcycled-vocab|groupsE[0-9]*-ensemble-m0"),
                                              ("upcycled + vocab, cross-fitted LR (ft16)", "groupsK*-upcycled-vocab"),
                                              ("upcycled + vocab, cascade focus w = 8 (ft20)", "groupsEF*-ensemble-m0"),
                                              ("dense + vocab", "groupsD*-dense-vocab"),
                                              ("dense + hashed", "groupsH8d-dense-wide|groupsE[0-9]*-ensemble-m1|groupsEF*-ensemble-m1"),
                                              ("finetune-ensemble", "groupsE[0-9]*-ensemble"),
                                              ("finetune-ensemble, focus w = 8 on member 0 (ft20)", "groupsEF*-ensemble"),
                                              ("upcycled + vocab, focus w = 8, header_tokens = 128 (ft21)", "groupsEB[0-9]-ensemble-m0"),
                                              ("dense + hashed, header_tokens = 128 (ft21)", "groupsEB[0-9]-ensemble-m1"),
                                              ("finetune-ensemble, header_tokens = 128 (ft21)", "groupsEB[0-9]-ensemble")]),
    ("debian-packages", "debianW-small", [("upcycled + vocab", "debianU[0-9]*-upcycled-vocab|debianV*-upcycled-vocab"),
                                         ("upcycled + vocab, cascade focus w = 8 (ft20)", "debianUF*-upcycled-vocab"),
                                         ("dense + vocab", "debian[DV]*-dense-vocab"),
                                         ("dense + hashed", "debianH*-dense-wide"),
                                         ("finetune-ensemble, focus w = 8 on member 0 (ft20 + ft10, `--combine`)",
                                          "debianUF*H*-ensemble")]),
]


def matching(pattern: str) -> list[str]:
    """The runs whose names match any ``|``-separated glob of ``pattern`` (wide-path-alone ``-lr`` files left out)."""
    return sorted({p.stem for g in pattern.split("|") for p in R.glob(f"{g}.json") if not p.stem.endswith("-lr")})


def seed_rows() -> None:
    print("| data | variant | runs | test errors per run [seed] | mean (× small) | range | escalated: mean acc "
          "(small) |")
    print("|---|---|---|---|---|---|---|")
    for label, small, variants in SEED_ROWS:
        s = load(small)
        if s is None:
            continue
        labels, ids = s["labels"], s["ids"]
        y = np.array(s["y"])
        esc = np.array(s["conf"]) < ESCALATE_BELOW
        small_err = int((aligned(s, ids, labels) != y).sum())
        small_esc = (aligned(s, ids, labels)[esc] == y[esc]).mean()
        for name, pattern in variants:
            runs = matching(pattern)
            errs, accs, cells_ = [], [], []
            for r in runs:
                pred = aligned(load(r), ids, labels)
                errs.append(int((pred != y).sum()))
                accs.append((pred[esc] == y[esc]).mean())
                seed = load(r).get("seed", r.split("-")[0])
                cells_.append(f"{errs[-1]} [{seed}]")
            if not runs:
                continue
            mean = float(np.mean(errs))
            print(f"| {label} | {name} | {len(runs)} | {', '.join(cells_)} | {mean:.1f} ({mean / max(small_err, 1):.2f}×; "
                  f"small {small_err}) | {min(errs)}-{max(errs)} | {np.mean(accs):.1%} ({small_esc:.1%}, "
                  f"{esc.sum()} items) |")


def pair_rows() -> None:
    """Every two runs of a data set's seed rows averaged (the ``finetune-ensemble`` question): test errors and
    accuracy on the items the small tier escalates."""
    import itertools

    print("| data | member A | member B | errors A / B | averaged: errors (× small) | escalated acc (small) |")
    print("|---|---|---|---|---|---|")
    for label, small, variants in SEED_ROWS:
        s = load(small)
        if s is None:
            continue
        y, ids = np.array(s["y"]), s["ids"]
        esc = np.array(s["conf"]) < ESCALATE_BELOW
        small_err = int((aligned(s, ids, s["labels"]) != y).sum())
        small_esc = (aligned(s, ids, s["labels"])[esc] == y[esc]).mean()
        runs = sorted({r for name, pat in variants if name != "finetune-ensemble" for r in matching(pat)})
        proba = {}
        for r in runs:
            rec = load(r)
            if "proba" in rec:
                cols = [rec["labels"].index(lab) for lab in s["labels"]]
                by_id = dict(zip(rec["ids"], np.asarray(rec["proba"])[:, cols], strict=True))
                proba[r] = np.stack([by_id[i] for i in ids])
        for a, b in itertools.combinations(sorted(proba), 2):
            ea, eb = (int((proba[r].argmax(1) != y).sum()) for r in (a, b))
            pred = (proba[a] + proba[b]).argmax(1)
            err = int((pred != y).sum())
            print(f"| {label} | {a} | {b} | {ea} / {eb} | {err} ({err / max(small_err, 1):.2f}×; small {small_err}) "
                  f"| {(pred[esc] == y[esc]).mean():.1%} ({small_esc:.1%}) |")


def floor_rows() -> None:
    """What the escalated-items target can reach: per data set, over every final-tier run of its seed rows, the
    escalated items that all of them get wrong (and that the small tier gets wrong too), so the best accuracy any
    of these models could reach there, against the small tier's and the target's (+5 pp)."""
    print("| data | runs | escalated items | small tier right | wrong in every run | of those, small wrong too | "
          "best reachable | +5 pp needs | runs' mean | best run |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, small, variants in SEED_ROWS:
        s = load(small)
        if s is None:
            continue
        y, ids = np.array(s["y"]), s["ids"]
        esc = np.array(s["conf"]) < ESCALATE_BELOW
        small_right = aligned(s, ids, s["labels"])[esc] == y[esc]
        runs = sorted({r for _, pat in variants for r in matching(pat)})
        if not runs:
            continue
        right = np.stack([aligned(load(r), ids, s["labels"])[esc] == y[esc] for r in runs])
        never = ~right.any(0)
        n, accs = int(esc.sum()), right.mean(1)
        print(f"| {label} | {len(runs)} | {n} | {small_right.sum()} ({small_right.mean():.1%}) | {never.sum()} | "
              f"{(never & ~small_right).sum()} | {1 - never.mean():.1%} | {small_right.mean() + 0.05:.1%} | "
              f"{accs.mean():.1%} | {accs.max():.1%} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--average", action="store_true")
    ap.add_argument("--seeds", action="store_true")
    ap.add_argument("--pairs", action="store_true")
    ap.add_argument("--floor", action="store_true", help="escalated items that every final-tier run gets wrong")
    ap.add_argument("--shrink", action="store_true", help="move large records' probabilities into .proba.npz")
    ap.add_argument("--combine", nargs=3, metavar=("OUT", "A", "B"), help="write OUT.json: runs A and B averaged")
    args = ap.parse_args()
    if args.combine:
        out, a, b = args.combine
        average(a, b, out)
        print(f"{R / out}.json: {load(out)['errors']} test errors")
        return
    if args.seeds:
        seed_rows()
        return
    if args.pairs:
        pair_rows()
        return
    if args.floor:
        floor_rows()
        return
    if args.average:
        for _, char, ft in SETS:
            average(f"{ft}-upcycled", f"{char}-char", f"{ft}-avg-char")
        shrink()
        return
    if args.shrink:
        shrink()
        return
    print("| data | escalated (small p < 0.95) | small alone | finetune dense | finetune upcycled | upcycled, tuned "
          "recipe | tuned + char n-grams, averaged |")
    print("|---|---|---|---|---|---|---|")
    for label, base, ft in SETS:
        print("| " + " | ".join(row(label, base, ft)) + " |")
    print("\nEach cell: test accuracy (errors; errors relative to the small tier) / accuracy on the escalated items.")
    print("\n| data | recipe | escalated (small p < 0.95) | small alone | wide LR alone | upcycled + wide | "
          "dense + wide |")
    print("|---|---|---|---|---|---|---|")
    for label, recipe, base, up, dense in WIDE_ROWS:
        small = f"{base}-small"
        print("| " + " | ".join([label, recipe, *cells(small, (small, LR_ALONE[base], up, dense), 3)]) + " |")
    print("\n| run | H200 train s | best step of steps | H200 serve ms/item | params | active params/token |")
    print("|---|---|---|---|---|---|")
    for p in (sorted(R.glob("*-upcycled.json")) + sorted(R.glob("*-dense.json")) + sorted(R.glob("*-upcycled-wide.json"))
              + sorted(R.glob("*-dense-wide.json"))):
        print(run_line(p))
    for p in sorted(R.glob("*-cpu*.json")):
        d = json.loads(p.read_text())
        print(f"\nCPU ({p.stem}): accuracy {d['accuracy']:.2%} ({d['errors']} errors; GPU {d['gpu_accuracy']:.2%}, "
              f"{d['labels_differing_from_gpu']} labels differ), {d['cpu_ms_per_item']} ms/item at "
              f"{d['torch_threads']} thread(s), batch {d['batch']}")


if __name__ == "__main__":
    main()
