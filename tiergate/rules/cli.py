"""`tiergate rules ...` commands (filled in by the rules-language work)."""

import typer

app = typer.Typer(help="Lint, test, evaluate, explain and benchmark YAML rule sets.", no_args_is_help=True)
