#!/usr/bin/env bash
# Second, short H200 call: more MoE seeds and the pruning metrics at 50% kept on debian-packages.
set -u
export TIERGATE_HOME=/tmp/tg PYTHONUNBUFFERED=1
mkdir -p $TIERGATE_HOME/datasets
gunzip -c .gpu/debian-packages.jsonl.gz > $TIERGATE_HOME/datasets/debian-packages.jsonl
P=experiments/train_techniques.py
T=${T:-160}; B=${BUDGET:-95}
timeout $T python3 $P --out $OUT/moe1 --only moe --seeds 1 --budget-s $B > $OUT/moe1.log 2>&1 &
timeout $T python3 $P --out $OUT/moe2 --only moe --seeds 2 --budget-s $B > $OUT/moe2.log 2>&1 &
timeout $T python3 $P --out $OUT/prA --only pruning --metrics el2n,uncertainty --fractions 0.5 --budget-s $B > $OUT/prA.log 2>&1 &
timeout $T python3 $P --out $OUT/prB --only pruning --metrics forgetting,prototypes --fractions 0.5 --budget-s $B > $OUT/prB.log 2>&1 &
wait
tail -n 2 $OUT/*.log
