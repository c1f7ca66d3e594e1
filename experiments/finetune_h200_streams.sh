#!/usr/bin/env bash
# Several finetune_h200.sh scripts side by side in one H200 call (each fine-tune is launch-bound, far from
# filling the GPU), then every result packed into one archive (the device returns a few files per call).
# Each argument is one stream: its jobs separated by ';', each job as finetune_h200.sh takes it
# ("NAME DATA TIMEOUT [finetune_eval.py args]"); stream k writes into $OUT/sk. Side by side, the streams share
# the GPU and the host's cores, so their train seconds are upper bounds.
#   bash build/ft-gpu/finetune_h200_streams.sh "a spamassassin 200 --small; b spamassassin 200" "c debian-packages 500"
# LIMIT (s, default 540) bounds the whole call: streams still running then are stopped, so the archive is always
# written before the device tool's own limit (600 s) kills the call, which would return nothing.
set -u
G=${G:-build/ft-gpu}
root=$OUT k=0 pids=()
for stream in "$@"; do
  k=$((k + 1)); mkdir -p "$root/s$k"
  IFS=';' read -ra jobs <<< "$stream"
  OUT=$root/s$k setsid bash "$G/finetune_h200.sh" "${jobs[@]}" > "$root/s$k/stream.log" 2>&1 &
  pids+=($!)
done
end=$((SECONDS + ${LIMIT:-540}))
alive() { for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
while [ $SECONDS -lt $end ] && alive; do sleep 2; done
for p in "${pids[@]}"; do kill -- -"$p" 2>/dev/null && echo "stream (pid $p) stopped at LIMIT"; done
sleep 1
for d in "$root"/s*; do echo "== $d"; cat "$d/stream.log"; done
# (the streams folders are s1, s2, ...: a bare s* would match the archive too and remove it)
(cd "$root" && tar czf "streams-$(date +%H%M%S).tgz" s[0-9]* && rm -rf s[0-9]*)
