"""`tiergate train|prune|plan ...` commands (filled in by the training-module work)."""

import typer

train_app = typer.Typer(help="Train the large tier.", no_args_is_help=True)
prune_app = typer.Typer(help="Score and select training data (EL2N, GraNd, forgetting, prototypes).", no_args_is_help=True)
plan_app = typer.Typer(help="Compute-optimal model sizing (Chinchilla-style L(N, D) fits).")
