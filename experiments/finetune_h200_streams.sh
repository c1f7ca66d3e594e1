#!/usr/bin/env bash
# Several finetune_h200.sh scripts side by side in one H200 call (each fine-tune is launch-bound, far from
# filling the GPU), then every result packed into one archive (the device returns a few files per call).
# Each argument is one stream: its jobs separated by ';', each job as finetune_h200.sh takes it
# ("NAME DATA TIMEOUT [finetune_eval.py args]"); stream k writes into $OUT/sk. Side by side, the streams share
# the GPU and the host's cores, so their train seconds are upper bounds.
#   bash build/ft-gpu/finetune_h200_streams.sh "a spamassassin 200 --small; b spamassassin 200" "c debian-packages 500"
set -u
G=${G:-build/ft-gpu}
root=$OUT k=0
for stream in "$@"; do
  k=$((k + 1)); mkdir -p "$root/s$k"
  IFS=';' read -ra jobs <<< "$stream"
  OUT=$root/s$k bash "$G/finetune_h200.sh" "${jobs[@]}" > "$root/s$k/stream.log" 2>&1 &
done
wait
for d in "$root"/s*; do echo "== $d"; cat "$d/stream.log"; done
(cd "$root" && tar czf "streams-$(date +%H%M%S).tgz" s* && rm -rf s*)
