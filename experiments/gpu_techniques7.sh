#!/usr/bin/env bash
# Seventh H200 call (issue 5): the large-batch result with ten seeds. The arm (LAMB, lr 0.01, 10% warm-up, label
# smoothing 0.1 for it and the baseline alike) was chosen on the held-out slice in the third to sixth calls; this
# call re-runs it and its baseline at seeds 0-9 with the current code (the hashed bag's n-gram order no longer
# depends on the hash salt), so that the figure is a 10-seed mean, not a 5-seed one. Carry .gpu/debian-packages.jsonl.gz.
set -u
source experiments/gpu_env.sh
lb_seeds lb lamb ${T:-420} ${B:-400} "0 1 2 3 4 5 6 7 8 9"
