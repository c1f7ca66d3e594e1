"""`tiergate rules ...` commands: lint, test, eval, explain, bench, pack, schema.

Exit status 1 for any lint error or failing example, and for a domain error
(:class:`~tiergate.errors.TiergateError`, printed as one message with its problems on stderr): never a
traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from tiergate.errors import TiergateError

app = typer.Typer(help="Lint, test, evaluate, explain and benchmark YAML rule sets.", no_args_is_help=True)

PathArg = Annotated[Path, typer.Argument(help="a rule file, or a directory of .yaml rule files")]
DataOpt = Annotated[str, typer.Option(help="spamassassin, debian-packages, or a JSONL/CSV path")]
SplitOpt = Annotated[str, typer.Option(help="train, calibration, test or all")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
TimeoutOpt = Annotated[float, typer.Option(help="time budget of one item's regex evaluations, seconds")]


def _fail(message: str, code: int = 1) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _guard(fn):
    """Domain errors become a clear message and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TiergateError as e:
            problems = getattr(e, "problems", None) or []
            for p in problems:
                typer.echo(p, err=True)
            _fail(f"error: {e}")
        except OSError as e:
            _fail(f"error: {e}")

    return wrapper


def _engine(path: Path, timeout: float, max_chars: int | None = None):
    from tiergate.data.items import DEFAULT_MAX_CHARS
    from tiergate.rules.engine import Engine
    from tiergate.rules.loader import load_path

    src = load_path(path)
    if src.errors:
        from tiergate.rules.lint import lint

        for p in lint(src):
            typer.echo(str(p), err=True)
        _fail(f"error: {path}: the rule set has errors; `tiergate rules lint {path}` lists them")
    return Engine(src, item_budget_s=timeout, max_chars=max_chars or DEFAULT_MAX_CHARS)


@app.command("lint")
@_guard
def lint_cmd(path: PathArg,
             json_out: JsonOpt = False) -> None:
    """Report every problem at once as `file:line:column: rule-id: message (what to do)`."""
    from tiergate.rules.lint import lint
    from tiergate.rules.loader import load_path

    src = load_path(path)
    problems = lint(src)
    errors = [p for p in problems if p.severity == "error"]
    if json_out:
        typer.echo(json.dumps([{"file": p.file, "line": p.line, "column": p.column, "rule": p.rule_id,
                                "check": p.check, "severity": p.severity, "message": p.message,
                                "hint": p.hint} for p in problems], indent=2))
    else:
        for p in problems:
            typer.echo(str(p))
        n_rules = len(src.entries)
        typer.echo(f"{path}: {n_rules} rules, {len(errors)} error(s), {len(problems) - len(errors)} warning(s)",
                   err=True)
    if errors:
        raise typer.Exit(1)


@app.command("test")
@_guard
def test_cmd(path: PathArg) -> None:
    """Run every rule's examples (must match / must not match); name each failing rule and example."""
    from tiergate.rules.examples import count_examples, run_examples

    engine = _engine(path, 1.0)
    failures = run_examples(engine)
    for f in failures:
        typer.echo(str(f))
    total = count_examples(engine)
    typer.echo(f"{path}: {total - len(failures)}/{total} examples pass in {len(engine.all_by_id)} rules",
               err=bool(failures))
    if failures:
        raise typer.Exit(1)


@app.command("eval")
@_guard
def eval_cmd(path: PathArg,
             data: DataOpt, split: SplitOpt = "calibration", json_out: JsonOpt = False,
             timeout: TimeoutOpt = 0.05) -> None:
    """Per-rule hits, precision and coverage on labelled data; the set's coverage, precision and conflicts."""
    from tiergate.data import load_dataset
    from tiergate.rules.evaluate import evaluate

    engine = _engine(path, timeout)
    report = evaluate(engine, load_dataset(data).split(split))
    report.update({"data": data, "split": split})
    if json_out:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"{'rule':<40} {'action':<9} {'hits':>6} {'precision':>9} {'coverage':>8} {'matched':>7} "
               f"{'alone':>6}")
    for r in report["rules"]:
        prec = "-" if r["precision"] is None else f"{r['precision']:.3f}"
        alone = "-" if r["match_precision"] is None else f"{r['match_precision']:.3f}"
        typer.echo(f"{r['id']:<40} {(r['label'] or r['action']):<9} {r['hits']:>6} {prec:>9} "
                   f"{r['coverage']:>8.3f} {r['matched']:>7} {alone:>6}")
    prec = "-" if report["precision"] is None else f"{report['precision']:.4f}"
    typer.echo(f"\nset: {report['n']} items, coverage {report['coverage']:.3f}, precision {prec}, "
               f"escalated {report['escalated']}")
    for c in report["conflicts"]:
        typer.echo(f"conflict: {c['rules'][0]} ({c['labels'][0]}) vs {c['rules'][1]} ({c['labels'][1]}) "
                   f"on {c['items']} item(s), e.g. {', '.join(c['examples'])}")


@app.command("explain")
@_guard
def explain_cmd(path: PathArg,
                text: Annotated[str | None, typer.Option(help="the input text (default: read stdin)")] = None,
                json_out: JsonOpt = False, timeout: TimeoutOpt = 0.05) -> None:
    """Which rules match the text and why (sub-condition, field, span), and what the set decides."""
    from tiergate.data import make_item

    engine = _engine(path, timeout)
    if text is None:
        text = sys.stdin.read()
    report = engine.explain(make_item(text, max_chars=engine.max_chars))
    if json_out:
        typer.echo(json.dumps(report, indent=2))
        return
    d = report["decision"]
    what = {"label": f"label {d['label']} (confidence {d['confidence']:.3f})",
            "escalate": f"escalate to {d['escalate_to']}", "abstain": "abstain",
            "none": "no rule decides"}[d["kind"]]
    typer.echo(f"decision: {what}" + (f" by {d['rule']}" if d["rule"] else ""))
    for m in report["matched"]:
        typer.echo(f"  {m['id']}{' [shadow]' if m['shadow'] else ''} (priority {m['priority']}): "
                   f"{m['condition']}")
        for ev in m["evidence"]:
            span = f" at {ev['span'][0]}-{ev['span'][1]} {ev['matched']!r}" if ev["span"] else ""
            typer.echo(f"      {ev['condition']} on {ev['field']}{span}")
    if report["timeouts"]:
        typer.echo(f"regex time-outs (counted as no match): {', '.join(report['timeouts'])}")


@app.command("bench")
@_guard
def bench_cmd(path: PathArg,
              data: DataOpt, split: SplitOpt = "test", json_out: JsonOpt = False,
              repeat: Annotated[int, typer.Option(help="passes; the best one is reported")] = 3,
              timeout: TimeoutOpt = 0.05) -> None:
    """Messages per second of the rules tier alone, parsing included (one thread)."""
    from tiergate.data import load_dataset
    from tiergate.rules.evaluate import bench

    engine = _engine(path, timeout)
    examples = load_dataset(data).split(split)
    report = bench(engine, [e.text for e in examples], repeat=repeat)
    report.update({"data": data, "split": split})
    if json_out:
        typer.echo(json.dumps(report, indent=2))
    else:
        typer.echo(f"{report['n']} messages in {report['seconds']:.3f} s: {report['messages_per_second']:.0f} "
                   f"messages/s (parsing {report['parse_seconds']:.3f} s, rules {report['match_seconds']:.3f} s)")


@app.command("pack")
@_guard
def pack_cmd(name: Annotated[str, typer.Argument(help="spamassassin or debian-packages")]) -> None:
    """Print the path of a shipped rule pack."""
    from tiergate.rules.tier import pack_path

    typer.echo(str(pack_path(name)))


@app.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema of a rule file."""
    from tiergate.rules.schema import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))
