#!/usr/bin/env bash
# Session 10's GPU work on one H200 (issue 15), one device call (under 10 minutes) per letter:
#   scripts/h200_run11.sh a   # the decode profile (synced, pipelined, the host's part of a step) with the side
#                             #   stream at its default (calls of up to 32 tokens) and up to 256 tokens, each with
#                             #   the default LoRA path (auto), the expand by rows always (rows) and the folded
#                             #   output (fold): does running LoRA beside the base matmul lower the tax at batches
#                             #   64 and 256, where it runs on the main stream today?
# Wheels: .whl/ from scripts/gather_wheels.sh (carried as an ignored path). Results: $OUT/<call>.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
res=/tmp/r11
call=${1:?usage: h200_run11.sh a}
. scripts/gpu_call_start.sh
case "$call" in
a)
  for side in 32 256; do
    timeout 280 "${prof[@]}" --fused-lora auto,rows,fold --lora-stream-tokens $side --batches 1,64,256 \
        --adapters 0,1,64,256 --out "$res/runs/profile-side$side.json" > "$res/logs/a-profile-side$side.log" 2>&1
    echo "-- side stream up to $side tokens"; grep -E "^\|" "$res/logs/a-profile-side$side.log" | head -24
  done ;;
*) echo "unknown call $call (a)" >&2; exit 2 ;;
esac
. scripts/gpu_call_pack.sh
