"""`tiergate train|prune|plan ...` commands.

``tiergate train large --data D --out DIR [--nproc N] [--selection SEL] [--preset P] [--max-steps N]`` trains the
large tier (``--preset finetune``: :mod:`tiergate.training.finetune_run`);
``tiergate prune score|select`` scores and selects training data; ``tiergate plan --compute-flops C`` and
``tiergate plan fit`` size a model for a compute budget. Library errors become exit code 2 with the message.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from tiergate.errors import TiergateError

train_app = typer.Typer(help="Train the large tier, or retrain the small ones from the decision log.",
                        no_args_is_help=True)
prune_app = typer.Typer(help="Score and select training data (EL2N, GraNd, forgetting, prototypes).", no_args_is_help=True)
plan_app = typer.Typer(help="Compute-optimal model sizing (Chinchilla-style L(N, D) fits).")


def _fail(e: Exception) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(2)


@train_app.command("large")
def train_large_cmd(
    data: str = typer.Option(..., "--data", help="spamassassin, debian-packages or a JSONL/CSV path"),
    out: Path = typer.Option(..., "--out", help="output folder (model.safetensors, config.json, manifest.json)"),
    preset: str = typer.Option("quick", "--preset", help="quick | full | hashed | finetune | finetune-dense (a -nowide "
                               "or -hashed suffix changes the wide path) | finetune-ensemble"),
    set_: list[str] = typer.Option([], "--set", help="KEY=VALUE: change a fine-tuned preset's setting (repeatable; "
                                   "max_tokens=512, read_headers=true, train.epochs=8, train.lr=1e-4: the mail "
                                   "recipe docs/benchmarks.md measured); every member's in an ensemble, after "
                                   "the member's own (member 0: focus_weight=8)"),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="stop after this many optimizer steps"),
    nproc: int = typer.Option(1, "--nproc", min=1, help="training processes (torch.distributed; gloo on CPU)"),
    selection: Path | None = typer.Option(None, "--selection", help="a selection file from `tiergate prune select`"),
    seed: int = typer.Option(0, "--seed"),
    checkpoint_every: int = typer.Option(200, "--checkpoint-every", help="steps between checkpoints"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="resume from DIR/checkpoint.pt if present"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train the large tier on the train split (early stopping on a held-out slice of it)."""
    from tiergate.training.run import run_training

    try:
        manifest = run_training(data, out, preset=preset, nproc=nproc, selection=selection, seed=seed,
                                checkpoint_every=checkpoint_every, resume=resume, progress=progress,
                                max_steps=max_steps, overrides=set_)
    except TiergateError as e:
        _fail(e)
    typer.echo(json.dumps({"out": str(out), "metrics": manifest.get("metrics", {}),
                           "weights_sha256": manifest.get("weights_sha256")}, indent=2))


@train_app.command("small")
def train_small_cmd(
    config: Path = typer.Option(..., "--config", help="tiergate.yaml"),
    from_log: bool = typer.Option(False, "--from-log", help="Add the decision log's items labelled by the final "
                                  "tier or by feedback to the train split (needs log.store_text)"),
    data: str | None = typer.Option(None, "--data", help="The data set whose train split to start from "
                                    "(default: the config's dataset)"),
    tier: list[str] = typer.Option([], "--tier", help="Only these small tiers (default: every one tiergate trained)"),
    log_weight: float = typer.Option(10.0, "--log-weight", min=0.0, help="How many train rows each logged item "
                                     "weighs (measured in bench/replay.py)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Retrain the small tier(s) in place (the old folder is kept as NAME.prev-VERSION); the certificate reads
    stale until `tiergate calibrate` runs again."""
    from tiergate.decisionlog.learn import retrain_small_from_log

    if not from_log:
        _fail(ValueError("only --from-log is supported: the first training is `tiergate quickstart`'s; "
                         "say --from-log to add what the decision log holds"))
    try:
        out = retrain_small_from_log(config, data=data, tiers=tier or None, progress=progress, log_weight=log_weight)
    except TiergateError as e:
        _fail(e)
    typer.echo(json.dumps(out, indent=2))


@prune_app.command("score")
def prune_score_cmd(
    data: str = typer.Option(..., "--data"),
    metric: str = typer.Option("el2n", "--metric", help="el2n | grand | forgetting | prototypes | uncertainty | random"),
    out: Path = typer.Option(..., "--out", help="scores file (JSON)"),
    encoder: str = typer.Option("hashed", "--encoder", help="hashed (fast) or minilm"),
    seeds: int = typer.Option(3, "--seeds", help="runs averaged (el2n, grand)"),
    epochs: float = typer.Option(6.0, "--epochs", help="length of the scoring runs (el2n/grand use 20% of it)"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Score every training example (higher = harder)."""
    from tiergate.training.run import score_dataset

    try:
        doc = score_dataset(data, metric, out, encoder=encoder, n_seeds=seeds, epochs=epochs, seed=seed)
    except TiergateError as e:
        _fail(e)
    typer.echo(json.dumps({"out": str(out), "metric": metric, "n": len(doc["scores"])}))


@prune_app.command("select")
def prune_select_cmd(
    scores: Path = typer.Option(..., "--scores"),
    keep: float = typer.Option(..., "--keep", help="fraction of each class kept, in (0, 1]"),
    out: Path = typer.Option(..., "--out"),
    mode: str = typer.Option("hard", "--mode", help="hard (data abundant) | easy (data scarce) | random"),
    per_class: bool = typer.Option(True, "--per-class/--global"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Keep a fraction of the scored examples; `tiergate train large --selection OUT` trains on them."""
    from tiergate.training.run import select_from_scores

    try:
        doc = select_from_scores(scores, keep, out, mode=mode, per_class=per_class, seed=seed)
    except TiergateError as e:
        _fail(e)
    typer.echo(json.dumps({"out": str(out), "kept": len(doc["ids"]), "of": doc["n_scored"]}))


@plan_app.callback(invoke_without_command=True)
def plan_cmd(
    ctx: typer.Context,
    compute_flops: float | None = typer.Option(None, "--compute-flops", help="training budget C in FLOPs"),
    fit_file: Path | None = typer.Option(None, "--fit", help="a fit JSON (default: the one shipped)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """N_opt and D_opt for a compute budget, from L(N, D) = E + A/N^a + B/D^b."""
    if ctx.invoked_subcommand is not None:
        return
    from tiergate.training.plan import default_fit, load_fit, plan

    if compute_flops is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    try:
        res = plan(compute_flops, load_fit(fit_file) if fit_file else default_fit())
    except TiergateError as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps(res))
        return
    f = res["fit"]
    typer.echo(f"compute {compute_flops:.3g} FLOPs -> n_params {res['n_params']:,}  n_tokens {res['n_tokens']:,} "
               f"({res['tokens_per_param']:.1f} tokens/param), predicted loss {res['predicted_loss']:.4f}\n"
               f"fit: L = {f['E']:.4g} + {f['A']:.4g}/N^{f['alpha']:.3f} + {f['B']:.4g}/D^{f['beta']:.3f}  ({f['source']})")


@plan_app.command("fit")
def plan_fit_cmd(
    data: str = typer.Option("debian-packages", "--data"),
    results: Path | None = typer.Option(None, "--results", help="read runs from this JSONL instead of training"),
    out: Path = typer.Option(Path("runs/plan"), "--out", help="folder for runs.jsonl, fit.json, check.json"),
    quick: bool = typer.Option(True, "--quick/--full", help="a 3x3 grid on 20k rows (minutes) or a larger one"),
) -> None:
    """Run a small grid (or read one), fit L(N, D), and check one prediction with one more run."""
    from tiergate.training.scaling import fit_command

    try:
        doc = fit_command(data, out, results=results, quick=quick)
    except TiergateError as e:
        _fail(e)
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")
