#!/usr/bin/env bash
# Fifth H200 call (issues 5 and 6), carry .gpu/debian-packages.jsonl.gz:
#   1. bench/large_tier_step.py alone (scaled configs with plain BatchNorm and a dense bag gradient);
#   2. side by side: two more seeds (3, 4) of the label-smoothed large-batch baseline and its three arms, and of
#      the experts-vs-dense configuration that separated in the fourth call (D=32, 2 blocks).
set -u
source experiments/gpu_env.sh
step_bench
T=${T:-240}; B=${BUDGET:-170}
for s in 3 4; do
  timeout $T python3 $P --out $W/ls$s --only largebatch3 --seeds $s --label-smoothing 0.1 \
    --lb-arms "sqrt+ghostbn,lamb,lamb+ghostbn wu0.25" --budget-s $B > $W/ls$s.log 2>&1 &
  timeout $T python3 $P --out $W/mB$s --only moe2 --seeds $s --moe-d 32 --moe-blocks 2 \
    --moe-arms "dense:128,moe:16:1:128" --budget-s $B > $W/mB$s.log 2>&1 &
done
wait
tail -qn 1 $W/*.log
tar czf $OUT/all.tgz -C $W .
