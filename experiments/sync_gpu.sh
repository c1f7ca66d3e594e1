#!/usr/bin/env bash
# Copy what an H200 call needs into the session checkout's git-ignored build/ft-gpu (see finetune_h200.sh).
set -eu
src=$(cd "$(dirname "$0")/.." && pwd); dst=${1:-/work/main/build/ft-gpu}
mkdir -p "$dst/experiments"
rm -rf "$dst/tiergate"; cp -r "$src/tiergate" "$dst/tiergate"; find "$dst/tiergate" -name __pycache__ -prune -exec rm -rf {} +
cp "$src/experiments/finetune_eval.py" "$dst/experiments/"; cp "$src/experiments/finetune_h200.sh" "$src/experiments/finetune_h200_streams.sh" "$dst/"
cp "$src"/.gpu/*.xz "$src/.gpu/minilm-fp16.safetensors" "$src/.gpu/tokenizer.json" "$dst/"
du -sh "$dst"
