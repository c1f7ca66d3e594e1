#!/usr/bin/env bash
# Third H200 call (issues 5 and 6), one device call, carry .gpu/debian-packages.jsonl.gz:
#   1. bench/large_tier_step.py alone on the GPU (it times the large tier's training step);
#   2. then, side by side (each process is launch-bound, far from filling the H200): the GPU kernel tests,
#      large batch over 3 seeds (and with label smoothing on baseline and arms alike), experts vs dense in a
#      narrow multi-block head over 3 seeds, the pruning metrics at 50% kept (equal epochs, and equal steps).
# Everything is packed into $OUT/all.tgz at the end (the device tool returns at most 8 files). In this call the
# step benchmark still had the sparse bag gradient and Ghost BN in its scaled configs and stopped at "wide"
# (an illegal memory access in torch's sparse coalesce, located by gpu_techniques4.sh); its debian row was kept.
set -u
source experiments/gpu_env.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > $W/env.txt
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >> $W/env.txt
cat $W/env.txt
step_bench
T=${T:-390}; B=${BUDGET:-250}
(TIERGATE_KERNEL_TESTS_CUDA=1 timeout 200 python3 -m pytest -q -rs -p no:cacheprovider --confcutdir=tests/kernels \
  tests/kernels > $W/gpu_tests.txt 2>&1; echo "pytest rc=$?" >> $W/gpu_tests.txt) &
for s in 0 1 2; do
  timeout $T python3 $P --out $W/lb$s --only largebatch3 --seeds $s --budget-s $B > $W/lb$s.log 2>&1 &
  timeout $T python3 $P --out $W/ls$s --only largebatch3 --seeds $s --label-smoothing 0.1 \
    --lb-arms "lamb+ghostbn wu0.25,sqrt+ghostbn" --budget-s $B > $W/ls$s.log 2>&1 &
  timeout $T python3 $P --out $W/moe$s --only moe2 --seeds $s --budget-s $B > $W/moe$s.log 2>&1 &
done
timeout $T python3 $P --out $W/prA --only pruning --metrics el2n,grand --fractions 0.5 --budget-s $B > $W/prA.log 2>&1 &
timeout $T python3 $P --out $W/prB --only pruning --metrics uncertainty,prototypes,forgetting --fractions 0.5 \
  --budget-s $B > $W/prB.log 2>&1 &
timeout $T python3 $P --out $W/prC --only pruning --metrics uncertainty,prototypes --fractions 0.5 \
  --prune-equal-steps --budget-s $B > $W/prC.log 2>&1 &
wait
cp $W/gpu_tests.txt $OUT/ 2>/dev/null
tail -n 4 $W/gpu_tests.txt; tail -qn 1 $W/*.log
tar czf $OUT/all.tgz -C $W .
