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
