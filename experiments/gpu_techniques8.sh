#!/usr/bin/env bash
# Eighth H200 call (issue 5): two more LAMB arms at 8x the batch against the seventh call's ten baselines (their
# held-out targets through --lb-target; test accuracy compared with the same seeds' baselines of that call):
# LAMB's own schedule (warm-up then linear decay) and a 5% warm-up. Picked, with "lamb", on mean held-out accuracy.
set -u
source experiments/gpu_env.sh
lb_seeds lc "lamb poly,lamb wu0.05" 300 280 "0 1 2 3 4 5 6 7 8 9" \
  "0.8620859538784067 0.8597798742138365 0.8618763102725366 0.8620859538784067 0.8608280922431866 0.8622955974842768 0.8606184486373165 0.8662788259958071 0.8614570230607966 0.8589412997903564"
