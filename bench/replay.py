"""Learning from the log, measured (issue 13): does one retrain on the final tier's answers make the cascade
cheaper at the same certified epsilon?

    python bench/replay.py --data spamassassin          # ~10 min on 2 cores
    python bench/replay.py --data debian-packages

1. The train split is cut in two halves by a hash of each item's id: A and B.
2. A cascade is built on A alone (rules pack of the data set, small tier, large tier, as quickstart builds),
   calibrated at epsilon on the calibration split, evaluated on test: **before**.
3. B is streamed through the real gateway (``tiergate serve``, loopback) with ``log.store_text: escalated`` and the
   default shadow audits, as production traffic would be; B's labels are never sent.
4. ``tiergate train small --from-log`` retrains the small tier on A plus the log's final-tier answers.
5. Recalibrated at the same epsilon on the calibration split (neither training saw it), evaluated on test: **after**.
6. Reference, same run: the small tier retrained on A plus *all* of B with its true labels (what a fully labelled
   B would give; the log's retrain needs no labels at all).

The calibration uses ``--budget 0`` (save the most the certificate allows) in every step: under a cost budget the
calibration spends the budget, and the final tier's share would stay pinned to it whatever the small tier learns.
Report: bench/reports/replay_<data>.{json,md}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serving_procs import free_port  # noqa: E402
from tiergate.config import load_config, save_config  # noqa: E402
from tiergate.data import load_dataset, make_item  # noqa: E402
from tiergate.decisionlog.learn import LOG_WEIGHT, retrain_small_from_log, small_tiers  # noqa: E402
from tiergate.decisionlog.store import DecisionStore, log_path  # noqa: E402
from tiergate.models.small import SmallConfig, train_small  # noqa: E402
from tiergate.pipeline import build, calibrate, evaluate, rules_pack_for  # noqa: E402

TIERGATE = Path(sys.executable).with_name("tiergate")


def half_of(example_id: str) -> str:
    return "A" if int(hashlib.md5(example_id.encode()).hexdigest(), 16) % 2 == 0 else "B"


def write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps({"id": e.id, "text": e.text, "label": e.label, "split": split}) + "\n"
                            for e, split in rows), encoding="utf-8")


def figures(report: dict, final: str) -> dict:
    share = {t["name"]: t["share"] for t in report["tiers"]}
    return {"accuracy": report["accuracy"], "macro_f1": report.get("macro_f1"), "final_share": share.get(final),
            "shares": share, "saved_fraction": report["cost"]["saved_fraction"],
            "disagreement": report.get("disagreement_with_final_tier"),
            "certificate_epsilon": (report.get("certificate") or {}).get("epsilon"),
            "certificate_stale": (report.get("certificate") or {}).get("stale")}


def stream(config: Path, texts: list[str], work: Path, batch: int) -> dict:
    """Send ``texts`` through ``tiergate serve`` in batches; stop it with SIGTERM (the log is flushed)."""
    port = free_port()
    log = (work / "serve.log").open("wb")
    proc = subprocess.Popen([str(TIERGATE), "serve", "--config", str(config), "--host", "127.0.0.1", "--port",
                             str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError(f"the gateway did not get ready: {(work / 'serve.log').read_text()[-2000:]}")
        by_tier: dict[str, int] = {}
        t0 = time.perf_counter()
        with httpx.Client(base_url=base, timeout=600) as c:
            for s in range(0, len(texts), batch):
                r = c.post("/v1/classify", json={"texts": texts[s:s + batch], "deadline_ms": 600_000},
                           headers={"X-Tiergate-Deadline-Ms": "600000"})
                r.raise_for_status()
                for d in r.json()["results"]:
                    by_tier[d["tier"]] = by_tier.get(d["tier"], 0) + 1
            # let the shadow audits of the last batches finish
            time.sleep(2)
            live = c.get("/readyz").json().get("live_guarantee")
        seconds = time.perf_counter() - t0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(120)
        log.close()
    return {"items": len(texts), "by_tier": by_tier, "seconds": round(seconds, 1), "live_guarantee": live}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="spamassassin")
    ap.add_argument("--epsilon", type=float, default=0.01)
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--batch", type=int, default=32, help="items per request while streaming B")
    ap.add_argument("--log-weight", type=float, default=LOG_WEIGHT, help="train rows each logged lesson weighs")
    ap.add_argument("--work", default="", help="scratch folder (default: a fresh one under /tmp)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "reports"))
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    work = Path(args.work or f"/tmp/tiergate-replay-{args.data}")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ds = load_dataset(args.data)
    train = ds.split("train")
    a = [e for e in train if half_of(e.id) == "A"]
    b = [e for e in train if half_of(e.id) == "B"]
    data_a = work / "data-A.jsonl"
    write_jsonl(data_a, [(e, "train") for e in a] + [(e, "calibration") for e in ds.split("calibration")]
                + [(e, "test") for e in ds.split("test")])
    print(f"[1/6] {args.data}: train {len(train)} -> A {len(a)} (trains), B {len(b)} (streamed, labels unused)")

    print("[2/6] build and calibrate on A")
    config = build(str(data_a), work / "cascade", rules_pack=rules_pack_for(args.data), say=lambda m: print("   ", m))
    final = load_config(config)[0].tiers[-1].name
    calibrate(config, str(data_a), epsilon=args.epsilon, delta=args.delta, budget=0)
    before = evaluate(config, str(data_a), "test")
    print(f"      before: {json.dumps(figures(before, final))}")

    cfg, base = load_config(config)
    cfg.log.store_text = "escalated"
    save_config(cfg, config)
    print(f"[3/6] stream B ({len(b)} items) through tiergate serve, log.store_text: escalated")
    streamed = stream(config, [e.text for e in b], work, args.batch)
    store = DecisionStore.open(log_path(cfg, base), readonly=True)
    log_stats = store.stats()
    store.close()
    print(f"      {json.dumps(streamed['by_tier'])} in {streamed['seconds']} s; log: {log_stats['decisions']} decisions, "
          f"{log_stats['with_text']} with text, {log_stats['shadow_audited']} audited")

    # the reference: a copy of the cascade whose small tier sees all of B with true labels; and a copy that
    # learns from the log with every lesson weighing as one train row (the default weighs more: LOG_WEIGHT)
    ref_dir, w1_dir = work / "reference", work / "weight-1"
    shutil.copytree(work / "cascade", ref_dir, ignore=shutil.ignore_patterns("decisions.db*"))
    shutil.copytree(work / "cascade", w1_dir)
    print(f"[4/6] train small --from-log (lessons weigh {args.log_weight:g} train rows; and 1, for comparison)")
    retrained = retrain_small_from_log(config, progress=False, log_weight=args.log_weight)
    retrain_small_from_log(w1_dir / "tiergate.yaml", progress=False, log_weight=1.0)
    print(f"      {json.dumps(retrained['log_rows'])} logged rows added; versions "
          f"{ {k: (v['previous_version'], v['version']) for k, v in retrained['tiers'].items()} }")
    stale = evaluate(config, str(data_a), "test", progress=False)["certificate"]
    print("[5/6] recalibrate at the same epsilon, evaluate")
    calibrate(config, str(data_a), epsilon=args.epsilon, delta=args.delta, budget=0)
    after = evaluate(config, str(data_a), "test")
    calibrate(w1_dir / "tiergate.yaml", str(data_a), epsilon=args.epsilon, delta=args.delta, budget=0)
    after_w1 = evaluate(w1_dir / "tiergate.yaml", str(data_a), "test")

    print("[6/6] reference: small tier on A + all of B with true labels")
    ref_cfg = ref_dir / "tiergate.yaml"
    rcfg, rbase = load_config(ref_cfg)
    texts = [make_item(e.text).model_text for e in a + b]
    labels = [e.label for e in a + b]
    for name, folder, man in small_tiers(rcfg, rbase):
        shutil.rmtree(folder)
        train_small(texts, labels, folder, SmallConfig(**man["config"]), name=name)
    calibrate(ref_cfg, str(data_a), epsilon=args.epsilon, delta=args.delta, budget=0)
    reference = evaluate(ref_cfg, str(data_a), "test")

    fb, fa, fr, f1 = figures(before, final), figures(after, final), figures(reference, final), figures(after_w1, final)
    fall = 1 - fa["final_share"] / fb["final_share"] if fb["final_share"] else float("nan")
    report = {"command": "python bench/replay.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "data": args.data, "epsilon": args.epsilon, "delta": args.delta, "train_A": len(a), "streamed_B": len(b),
              "streamed": streamed, "log": log_stats, "retrained": retrained, "stale_after_retrain": stale,
              "log_weight": args.log_weight, "before": fb, "after": fa, "after_log_weight_1": f1,
              "reference_all_of_B_labelled": fr,
              "final_share_relative_fall": fall, "target_met": bool(fall >= 0.2 and fa["accuracy"] >= fb["accuracy"]),
              "seconds": round(time.perf_counter() - t_start), "machine": {"cores": os.cpu_count()}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"replay_{args.data}.json").write_text(json.dumps(report, indent=2, default=str))
    md = markdown(report, final)
    (out / f"replay_{args.data}.md").write_text(md)
    print(md)
    return 0


def markdown(r: dict, final: str) -> str:
    def row(name, f):
        return (f"| {name} | {100 * f['accuracy']:.2f}% | {100 * f['final_share']:.2f}% | "
                f"{100 * f['saved_fraction']:.2f}% | {100 * f['disagreement']:.2f}% |")

    lines = [f"## Learning from the log: {r['data']}", "",
             f"`{r['command']}`: A = {r['train_A']} train items build the cascade; B = {r['streamed_B']} are streamed "
             f"through `tiergate serve` (labels unused); epsilon {r['epsilon']}, delta {r['delta']}, budget 0; test split.",
             "", f"| cascade | accuracy | share to {final} | cost saved | disagreement with {final} |", "|---|---|---|---|---|",
             row("before (built on A)", r["before"]),
             row(f"after one retrain from the log (lessons weigh {r['log_weight']:g})", r["after"]),
             row("after one retrain from the log (lessons weigh 1)", r["after_log_weight_1"]),
             row("reference: A + all of B with true labels", r["reference_all_of_B_labelled"]), "",
             f"Final tier's share: {100 * r['before']['final_share']:.2f}% -> {100 * r['after']['final_share']:.2f}%, a "
             f"relative fall of {100 * r['final_share_relative_fall']:.1f}% (target >= 20%, accuracy no lower): "
             + ("met" if r["target_met"] else "NOT met") + ".",
             f"Log rows learnt from: {json.dumps(r['retrained']['log_rows'])}; streamed decisions by tier: "
             f"{json.dumps(r['streamed']['by_tier'])}; after the retrain and before recalibrating the certificate read "
             f"stale: {r['stale_after_retrain'].get('stale') if r['stale_after_retrain'] else None}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
