"""``tiergate feedback export`` and ``tiergate log stats|delete``: the decision log from the command line
(the commands themselves are declared in :mod:`tiergate.cli`).

They read the database the config names (``log.path``) and work while the gateway runs (SQLite's WAL lets
readers and the gateway's writer proceed together).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
from collections.abc import Iterator
from pathlib import Path

import typer

from tiergate.config import load_config
from tiergate.decisionlog.store import DecisionStore, log_path


@contextlib.contextmanager
def _store(config: Path, readonly: bool = True) -> Iterator[DecisionStore]:
    cfg, base = load_config(config)
    store = DecisionStore.open(log_path(cfg, base), readonly=readonly, synchronous=cfg.log.synchronous)
    try:
        yield store
    finally:
        store.close()


def _when(ts: float | None) -> str:
    return "-" if ts is None else _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def export(config: Path, as_json: bool) -> None:
    with _store(config) as store:
        rows = store.feedback_rows()
        rejected = store.rejected_feedback_rows()
    if as_json:
        typer.echo(json.dumps({"n": len(rows), "agreed": sum(r["agreed"] for r in rows), "feedback": rows,
                               "rejected": rejected}, indent=1))
        return
    typer.echo(f"{'request_id':<34} {'given':<14} {'decided':<14} {'tier':<10} {'feedback at (UTC)':<20}")
    for r in rows:
        typer.echo(f"{r['request_id']:<34} {r['label']:<14.14} {r['decided_label']:<14.14} {r['decided_tier']:<10.10} "
                   f"{_when(r['feedback_ts']):<20}")
    typer.echo(f"{len(rows)} feedback rows, {sum(not r['agreed'] for r in rows)} correcting the decision")
    if rejected:
        typer.echo(f"{len(rejected)} refused (label outside the label set), latest: "
                   + ", ".join(f"{r['request_id']} {r['label']!r}" for r in rejected[-5:]))


def stats(config: Path, as_json: bool) -> None:
    with _store(config) as store:
        s = store.stats()
    if as_json:
        typer.echo(json.dumps(s, indent=2))
        return
    typer.echo(f"{s['path']} (schema {s['schema_version']}, {s['bytes'] / 1e6:.1f} MB)")
    typer.echo(f"  decisions {s['decisions']} ({_when(s['oldest_ts'])} .. {_when(s['newest_ts'])} UTC), with text "
               f"{s['with_text']}, shadow-audited {s['shadow_audited']}, feedback {s['feedback']}")
    for tier, n in sorted(s["by_tier"].items()):
        typer.echo(f"  decided by {tier:<12} {n}")


def delete(config: Path, request_id: str) -> bool:
    with _store(config, readonly=False) as store:
        return store.delete(request_id)
