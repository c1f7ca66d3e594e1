# Sourced by experiments/gpu_techniques3.sh .. gpu_techniques6.sh: the environment of an H200 call, the data
# unpacked from .gpu/ (it travels compressed), and the large-tier step benchmark, which runs alone on the GPU
# before anything else (it times steps).
export TIERGATE_HOME=/tmp/tg PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
W=/tmp/w; mkdir -p $TIERGATE_HOME/datasets $W
gunzip -c .gpu/debian-packages.jsonl.gz > $TIERGATE_HOME/datasets/debian-packages.jsonl
P=experiments/train_techniques.py

step_bench() {
  timeout ${STEP_T:-170} python3 bench/large_tier_step.py --out $W/step --steps 20 > $W/step.log 2>&1
  tail -n 8 $W/step.log; cp $W/step.log $OUT/
}

# lb_seeds NAME ARMS TIMEOUT BUDGET SEEDS [TARGETS]: one process per seed, side by side, of the label-smoothed
# (0.1) large-batch runs `--only largebatch3 --lb-arms ARMS`, writing $W/NAME<seed>. SEEDS is a space-separated
# list. With TARGETS (held-out targets, one per seed, in the same order) the seeds' baselines are not re-run.
lb_seeds() {
  local name=$1 arms=$2 t=$3 b=$4 i=0 s tgt
  local -a seeds=($5) targets=(${6:-})
  for s in "${seeds[@]}"; do
    tgt=(); [ ${#targets[@]} -gt 0 ] && tgt=(--lb-target "${targets[$i]}")
    timeout "$t" python3 $P --out $W/$name$s --only largebatch3 --seeds $s --label-smoothing 0.1 "${tgt[@]}" \
      --lb-arms "$arms" --budget-s "$b" > $W/$name$s.log 2>&1 &
    i=$((i + 1))
  done
  wait
  tail -qn 1 $W/*.log
  tar czf $OUT/all.tgz -C $W .
}
