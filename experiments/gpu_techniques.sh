#!/usr/bin/env bash
# The H200 run of the training-technique experiments (one device call). Data travel compressed in .gpu/:
#   gzip -c ~/.cache/tiergate/datasets/debian-packages.jsonl > .gpu/debian-packages.jsonl.gz  (and spamassassin)
# Four processes share the GPU (each experiment is launch-bound, far from filling an H200).
set -u
export TIERGATE_HOME=/tmp/tg PYTHONUNBUFFERED=1
mkdir -p $TIERGATE_HOME/datasets
for d in debian-packages spamassassin; do gunzip -c .gpu/$d.jsonl.gz > $TIERGATE_HOME/datasets/$d.jsonl; done
python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())'
P=experiments/train_techniques.py
B=${BUDGET:-150}
timeout 420 python3 $P --data debian-packages --out $OUT/debA --only largebatch,scaling --budget-s $B > $OUT/debA.log 2>&1 &
timeout 420 python3 $P --data debian-packages --out $OUT/debB --only pruning --budget-s $((B + 120)) > $OUT/debB.log 2>&1 &
timeout 420 python3 $P --data debian-packages --out $OUT/debC --only moe,swat --budget-s $B > $OUT/debC.log 2>&1 &
timeout 420 python3 $P --data spamassassin --out $OUT/spam --only pruning --budget-s $((B + 120)) > $OUT/spam.log 2>&1 &
wait
tail -n 3 $OUT/*.log
