#!/usr/bin/env bash
# Fourth H200 call (issues 5 and 6), carry .gpu/debian-packages.jsonl.gz:
#   1. bench/large_tier_step.py alone (the scaled configs with a dense bag gradient), then the third run's crash
#      located: the wide config with the sparse bag gradient under CUDA_LAUNCH_BLOCKING=1;
#   2. side by side: LAMB arms with label smoothing 0.1 against the label-smoothed baselines of the third call
#      (--lb-target: their held-out targets), a label-smoothing-0.2 baseline and arms, two more experts-vs-dense
#      configurations, and forgetting at 50% kept.
# Everything is packed into $OUT/all.tgz.
set -u
source experiments/gpu_env.sh
step_bench
CUDA_LAUNCH_BLOCKING=1 timeout 80 python3 bench/large_tier_step.py --out $W/diag --configs wide --backends triton \
  --steps 1 --warmup 2 --no-profile --sparse-bag > $W/diag.log 2>&1; echo "diag rc=$?" >> $W/diag.log
grep -v "^\s*$" $W/diag.log | tail -n 12
T=${T:-300}; B=${BUDGET:-200}
TG=(0.8641823899371069 0.8612473794549266 0.8635534591194969)  # ls0..2 baselines' held-out targets (call 3)
for s in 0 1 2; do
  timeout $T python3 $P --out $W/lsb$s --only largebatch3 --seeds $s --label-smoothing 0.1 --lb-target ${TG[$s]} \
    --lb-arms "lamb,lamb lr0.02,lamb x2 epochs" --budget-s $B > $W/lsb$s.log 2>&1 &
  timeout $T python3 $P --out $W/lsc$s --only largebatch3 --seeds $s --label-smoothing 0.2 \
    --lb-arms "lamb,lamb+ghostbn wu0.25" --budget-s $B > $W/lsc$s.log 2>&1 &
  timeout $T python3 $P --out $W/mA$s --only moe2 --seeds $s --moe-d 128 --moe-blocks 1 \
    --moe-arms "dense:64,moe:32:1:64" --budget-s $B > $W/mA$s.log 2>&1 &
  timeout $T python3 $P --out $W/mB$s --only moe2 --seeds $s --moe-d 32 --moe-blocks 2 \
    --moe-arms "dense:128,moe:16:1:128" --budget-s $B > $W/mB$s.log 2>&1 &
done
timeout $T python3 $P --out $W/prD --only pruning --metrics forgetting --fractions 0.5 --budget-s $B > $W/prD.log 2>&1 &
wait
tail -qn 1 $W/*.log
tar czf $OUT/all.tgz -C $W .
