"""A data set the project was never tuned on: docstrings of installed Python packages, labelled by package.

Each function or class docstring longer than 200 characters (tests skipped, cut at 4,000 characters) of
numpy, scipy, sklearn, torch, matplotlib, sympy and networkx, at most 800 per package, shuffled with seed 0,
written as JSONL of ``{"text", "label"}`` (tiergate assigns the splits).

    python experiments/docstrings_dataset.py --out runs/docstrings.jsonl
    python experiments/final_tier_candidates.py --data runs/docstrings.jsonl --only small,head
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import random
from pathlib import Path

PACKAGES = ["numpy", "scipy", "sklearn", "torch", "matplotlib", "sympy", "networkx"]


def docstrings(root: Path, min_chars: int = 200, max_chars: int = 4000) -> list[str]:
    out = []
    for f in sorted(root.rglob("*.py")):
        if f.name.startswith("test") or "test" in f.parent.name:
            continue
        try:
            tree = ast.parse(f.read_text(errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                d = ast.get_docstring(node)
                if d and len(d) > min_chars:
                    out.append(d[:max_chars])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/docstrings.jsonl"))
    ap.add_argument("--per-package", type=int, default=800)
    args = ap.parse_args()
    rng = random.Random(0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as out:
        for pkg in PACKAGES:
            spec = importlib.util.find_spec(pkg)
            if spec is None or not spec.submodule_search_locations:
                print(f"{pkg}: not installed, skipped")
                continue
            rows = docstrings(Path(list(spec.submodule_search_locations)[0]))
            rng.shuffle(rows)
            for t in rows[: args.per_package]:
                out.write(json.dumps({"text": t, "label": pkg}) + "\n")
            print(f"{pkg}: {min(len(rows), args.per_package)}")


if __name__ == "__main__":
    main()
