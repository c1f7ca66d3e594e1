#!/usr/bin/env bash
# Sixth H200 call (issue 5): LAMB's learning rate at 8x the batch, with label smoothing 0.1, chosen on the held-out
# slice from {0.003, 0.005} plus the 0.01 and 0.02 already run, against the same seeds' baselines (gpu_techniques3
# and 5: their held-out targets through --lb-target). Carry .gpu/debian-packages.jsonl.gz.
set -u
source experiments/gpu_env.sh
lb_seeds lsd "lamb lr0.005,lamb lr0.003" 200 150 "0 1 2 3 4" \
  "0.8641823899371069 0.8612473794549266 0.8635534591194969 0.8599895178197065 0.8595702306079664"
