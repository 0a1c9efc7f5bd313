#!/usr/bin/env bash
# Session 9's GPU work on one H200 (issue 15), one device call (under 10 minutes) per letter:
#   scripts/h200_run10.sh a   # the decode profile after session 8's host work (numpy step inputs and LoRA
#                             #   metadata): synced and pipelined, the default (auto) against segments; where the
#                             #   time of the decode step and of the mixed step goes (scripts/step_breakdown.py)
# Wheels: .whl/ from scripts/gather_wheels.sh (carried as an ignored path). Results: $OUT/<call>.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
res=/tmp/r10
call=${1:?usage: h200_run10.sh a}
. scripts/gpu_call_start.sh
prof=(python3 -m harness profile --model llama3-8b --no-check --many-adapters 0 --loads 0 --prefill "" --iters 20)
case "$call" in
a)
  timeout 260 "${prof[@]}" --fused-lora auto,segments --batches 1,64,256 --adapters 0,1,64,256 \
      --out "$res/runs/profile.json" > "$res/logs/a-profile.log" 2>&1
  grep -E "^decode|pipelined|^\|" "$res/logs/a-profile.log" | tail -50
  timeout 150 python3 scripts/step_breakdown.py --points 64x64,256x30,256x256,256x0+256,256x30+256 \
      --json "$res/runs/breakdown.json" > "$res/logs/a-breakdown.log" 2>&1; grep -v USDT "$res/logs/a-breakdown.log" | tail -40 ;;
*) echo "unknown call $call (a)" >&2; exit 2 ;;
esac
. scripts/gpu_call_pack.sh
