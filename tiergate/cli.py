"""The ``tiergate`` command. Commands parse arguments, call :mod:`tiergate.pipeline` (or a sub-package's
own CLI) and print; a :class:`~tiergate.errors.TiergateError` becomes one line on stderr and exit code 2."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path

import typer

# Progress bars redraw many times a second; into a log file (no terminal) that is megabytes of carriage
# returns. tqdm reads TQDM_* variables as defaults when it is first imported, hence before
# anything else of tiergate: redraw every 30 s there (a user's own setting wins).
if not sys.stderr.isatty():
    os.environ.setdefault("TQDM_MININTERVAL", "30")

from tiergate.errors import TiergateError  # noqa: E402
from tiergate.rules.cli import app as rules_app  # noqa: E402
from tiergate.training.cli import plan_app, prune_app, train_app  # noqa: E402

# quickstart's cost target: the cascade may cost up to 10% of sending everything to the final tier (BRIEF's
# ">= 90% saved"); within that, the certified setting that sends the final tier the most uncertain items wins,
# so the escalation path and the learning loop that feeds on escalations see real traffic (docs/calibration.md).
QUICKSTART_BUDGET = 0.1

app = typer.Typer(help="tiergate: an inference cascade gateway (rules -> small ONNX models -> large sparse model).",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Fetch and inspect data sets.", no_args_is_help=True)
feedback_app = typer.Typer(help="Feedback given through POST /v1/feedback.", no_args_is_help=True)
log_app = typer.Typer(help="The decision log: what is kept, and removing a decision.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(feedback_app, name="feedback")
app.add_typer(log_app, name="log")
app.add_typer(rules_app, name="rules")
app.add_typer(train_app, name="train")
app.add_typer(prune_app, name="prune")
app.add_typer(plan_app, name="plan")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def clean_errors(fn):
    """Turn tiergate's errors into one clear line and exit code 2 (no traceback for expected failures)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TiergateError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper


@data_app.command("fetch")
@clean_errors
def data_fetch(name: str = typer.Argument(..., help="spamassassin or debian-packages"),
               force: bool = typer.Option(False, help="Fetch again even if cached")) -> None:
    """Fetch a built-in corpus into the cache ($TIERGATE_HOME/datasets)."""
    from tiergate.data.datasets import fetch_dataset

    typer.echo(str(fetch_dataset(name, force=force)))


@data_app.command("info")
@clean_errors
def data_info(name: str = typer.Argument(..., help="a built-in name or a JSONL/CSV path"),
              as_json: bool = typer.Option(False, "--json", help="Print JSON")) -> None:
    """Counts per split and label."""
    from tiergate.data import load_dataset

    info = load_dataset(name).info()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(f"{info['name']}: {info['n']} items, {info['n_labels']} labels")
    for split, s in info["splits"].items():
        top = ", ".join(f"{k} {v}" for k, v in sorted(s["labels"].items(), key=lambda kv: -kv[1])[:8])
        typer.echo(f"  {split:<12} {s['n']:>7}   {top}{' ...' if len(s['labels']) > 8 else ''}")


@feedback_app.command("export")
@clean_errors
def feedback_export(config: Path = typer.Option(..., help="tiergate.yaml (its log.path is read)"),
                    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout")) -> None:
    """Every feedback row with its request id and the decision it is about."""
    from tiergate.decisionlog.cli import export

    export(config, as_json)


@log_app.command("stats")
@clean_errors
def log_stats(config: Path = typer.Option(..., help="tiergate.yaml"),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """How many decisions the log holds, over what time, with how much text, feedback and audits."""
    from tiergate.decisionlog.cli import stats

    stats(config, as_json)


@log_app.command("delete")
@clean_errors
def log_delete(config: Path = typer.Option(..., help="tiergate.yaml"),
               request_id: str = typer.Option(..., "--request-id", help="The request_id of the decision")) -> None:
    """Remove one decision, its text and its feedback (a person's request to be forgotten)."""
    from tiergate.decisionlog.cli import delete
    from tiergate.errors import NotFoundError

    if not delete(config, request_id):
        raise NotFoundError(f"no decision with request_id {request_id!r} in the log")
    typer.echo(f"deleted {request_id}")


@app.command()
@clean_errors
def calibrate(config: Path = typer.Option(..., help="tiergate.yaml"),
              data: str = typer.Option(..., help="data set name or path (its calibration split is used)"),
              epsilon: float = typer.Option(0.01, help="Allowed risk (share of items)"),
              delta: float = typer.Option(0.05, help="Allowed probability that the risk bound fails"),
              risk: str = typer.Option("disagreement", help="disagreement | error, or class-conditional: disagreement@LABEL | error@LABEL (counted on items the final tier calls LABEL)"),
              method: str = typer.Option("auto", help="auto (Learn-then-Test when available) | ltt | plain"),
              no_measure: bool = typer.Option(False, "--no-measure", help="Keep the costs already in the config"),
              budget: float | None = typer.Option(
                  None, min=0.0, max=1.0,
                  help="Spend up to this share of the all-to-final-tier cost (e.g. 0.1) on agreeing with the "
                       "final tier: the most conservative certified setting that fits, not the cheapest. "
                       "Default: the budget CONFIG was last calibrated with; 0 saves the most"),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Measure tier costs and choose thresholds on the calibration split; writes them into CONFIG."""
    _setup_logging()
    from tiergate.pipeline import KEEP
    from tiergate.pipeline import calibrate as run

    result = run(config, data, epsilon=epsilon, delta=delta, risk=risk, method=method, measure=not no_measure,
                 budget=KEEP if budget is None else budget)
    typer.echo(json.dumps(result, indent=2, default=str) if as_json else _short(result))


def _short(result: dict) -> str:
    line = "calibrated: " + ", ".join(f"{k}={v}" for k, v in result.items() if not isinstance(v, (dict, list)))
    return "\n".join([line, *(f"warning: {w}" for w in result.get("warnings", []))])


@app.command()
@clean_errors
def evaluate(config: Path = typer.Option(..., help="tiergate.yaml"),
             data: str = typer.Option(..., help="data set name or path"),
             split: str = typer.Option("test", help="train | calibration | test"),
             as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout")) -> None:
    """Run every tier on a split and report accuracy, shares and cost saved."""
    from tiergate.evaluate import format_table
    from tiergate.pipeline import evaluate as run

    report = run(config, data, split, progress=not as_json)
    typer.echo(json.dumps(report, indent=2) if as_json else format_table(report))


@app.command()
@clean_errors
def classify(input: Path = typer.Argument(..., help="JSONL with a 'text' per line (or plain lines of text)"),
             config: Path = typer.Option(..., help="tiergate.yaml"),
             output: Path | None = typer.Option(None, help="Write decisions here (default: stdout)"),
             batch_size: int = typer.Option(64)) -> None:
    """Classify a file offline: one decision per input line."""
    from tiergate.cascade import Cascade
    from tiergate.data.items import make_item
    from tiergate.errors import InputError

    cascade = Cascade.from_config(config)
    out = output.open("w", encoding="utf-8") if output else sys.stdout
    try:
        lines = input.read_text(encoding="utf-8").splitlines()
        texts = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                text = obj["text"] if isinstance(obj, dict) else obj
            except (json.JSONDecodeError, KeyError) as e:
                raise InputError(f"{input}:{n}: expected a JSON object with 'text'") from e
            if not isinstance(text, str):
                raise InputError(f"{input}:{n}: 'text' must be a string")
            texts.append(text)
        for s in range(0, len(texts), batch_size):
            for d in cascade.classify([make_item(t) for t in texts[s : s + batch_size]]):
                out.write(json.dumps(d.to_dict()) + "\n")
    finally:
        if output:
            out.close()
        cascade.close()


@app.command()
@clean_errors
def serve(config: Path = typer.Option(..., help="tiergate.yaml"),
          host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8080),
          workers: int = typer.Option(1, min=1, help="Worker processes (each loads the models; metrics are merged)"),
          log_level: str = typer.Option("info"),
          access_log: bool = typer.Option(False, "--access-log/--no-access-log", help=(
              "One uvicorn log line per request (off by default: the decision log records every answer, and "
              "at thousands of requests a second the lines cost about 6% of the event loop)")),
          tier: str | None = typer.Option(None, help="Serve only this tier of the config, to other gateways "
                                          "(kind: remote), over --protocol"),
          protocol: str = typer.Option("kserve-v2", help="With --tier: kserve-v2 (the Open Inference Protocol)"),
          engine: str = typer.Option("uvicorn", help="With --tier: uvicorn (one process) or ray (Ray Serve: "
                                     "replicas, GPUs, autoscaling from the config's `ray:`; extra tiergate[ray])")) -> None:
    """Serve the cascade over HTTP (FastAPI on uvicorn), or one tier of it over the KServe v2 protocol."""
    from tiergate.config import load_config
    from tiergate.errors import ConfigError
    from tiergate.gateway.server import run

    _setup_logging()
    cfg, _ = load_config(config)  # fail fast, with the config's own error, before uvicorn starts
    if tier is not None:
        if protocol != "kserve-v2":
            raise ConfigError(f"--protocol {protocol!r}: only kserve-v2 is served")
        if tier not in {t.name for t in cfg.tiers}:
            raise ConfigError(f"--tier {tier!r}: not a tier of {config} (tiers: {[t.name for t in cfg.tiers]})")
        if workers != 1:
            raise ConfigError("--tier serves one process; run several behind a load balancer instead of --workers")
        if engine == "ray":
            try:
                from tiergate.models import ray_serve
            except ImportError as e:
                raise ConfigError("--engine ray needs Ray Serve: pip install 'tiergate[ray]'") from e
            ray_serve.run(config, tier, host=host, port=port)
            return
        if engine != "uvicorn":
            raise ConfigError(f"--engine {engine!r}: use uvicorn or ray")
    run(config, host=host, port=port, workers=workers, log_level=log_level, tier=tier, access_log=access_log)


@app.command("keys")
@clean_errors
def keys(name: str = typer.Option(..., help="Who the key is for (shown in logs and metrics)"),
         privilege: list[str] = typer.Option([], help="final_only and/or epsilon")) -> None:
    """Make an API key for /v1/*: prints the key (give it to the client) and the config entry (its hash)."""
    import yaml

    from tiergate.gateway.auth import new_key

    bad = set(privilege) - {"final_only", "epsilon"}
    if bad:
        raise typer.BadParameter(f"unknown privilege(s) {sorted(bad)}: use final_only, epsilon")
    key, digest = new_key()
    typer.echo(f"key (shown once, keep it secret): {key}\n\nadd to server.api_keys in tiergate.yaml:")
    typer.echo(yaml.safe_dump([{"name": name, "sha256": digest, "privileges": list(privilege)}], sort_keys=False))


@app.command()
@clean_errors
def quickstart(data: str = typer.Option("spamassassin", help="spamassassin, debian-packages, or a JSONL/CSV path"),
               workdir: Path = typer.Option(Path("tiergate-quickstart"), help="Where models and config go"),
               no_serve: bool = typer.Option(False, "--no-serve", help="Stop after evaluating"),
               host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8080),
               epsilon: float = typer.Option(0.01, help="Calibration risk bound: the cascade disagrees with the "
                                             "final tier on at most this share of items (with prob. >= 1 - delta)"),
               delta: float = typer.Option(0.05),
               large_preset: str = typer.Option("quick", "--large-preset", help="quick (2 CPU cores, minutes) or "
                                                "finetune (MiniLM fine-tuned end to end: on a GPU when present)"),
               large_set: list[str] = typer.Option([], "--large-set", help="KEY=VALUE for a finetune* large preset, "
                                                   "as `train large --set` (repeatable)"),
               large_model: Path | None = typer.Option(None, "--large-model", help="A large tier trained elsewhere "
                                                       "(`tiergate train large --out DIR`, on a GPU say): checked, "
                                                       "copied in and used instead of training one"),
               budget: float = typer.Option(
                   QUICKSTART_BUDGET, min=0.0, max=1.0, help="Spend up to this share of the all-to-final-tier cost on agreeing with "
                   "the final tier (0.1: save at least 90%, and send the final tier the most uncertain items that "
                   "fit); 0 saves the most the certificate allows")) -> None:
    """From nothing to a served cascade: fetch, train, install rules, calibrate, evaluate, serve."""
    import time

    from tiergate.evaluate import format_table
    from tiergate.pipeline import build, write_json
    from tiergate.pipeline import calibrate as run_calibrate
    from tiergate.pipeline import evaluate as run_evaluate

    t0 = time.perf_counter()
    path = build(data, workdir, large_preset=large_preset, large_overrides=large_set, large_model=large_model)
    typer.echo("[4/5] calibrate: measure costs, choose thresholds on the calibration split")
    result = run_calibrate(path, data, epsilon=epsilon, delta=delta, budget=budget)  # 0: save the most
    typer.echo("      " + _short(result))
    typer.echo("[5/5] evaluate on the test split")
    report = run_evaluate(path, data, "test")
    write_json(workdir / "evaluation.json", report)
    typer.echo(format_table(report))
    typer.echo(f"\nconfig: {path}   (total {time.perf_counter() - t0:.0f} s)")
    if not no_serve:
        typer.echo(f"serving on http://{host}:{port}  (try: curl -s localhost:{port}/v1/classify "
                   "-H 'content-type: application/json' -d '{\"text\": \"Subject: FREE money!!! Click here now\\n\\nYou have "
                   "been selected to receive $1,000,000. Act now: http://example.com/win\"}')")
        # A fresh process: training left gigabytes behind in this one, which a server does not need.
        import os
        import sys

        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-m", "tiergate.cli", "serve", "--config", str(path),
                                  "--host", host, "--port", str(port)])


if __name__ == "__main__":
    app()
