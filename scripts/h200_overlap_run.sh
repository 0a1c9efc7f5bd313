#!/usr/bin/env bash
# Session 6's GPU work on one H200 (issue 15), one device call (under 10 minutes) per letter:
#   scripts/h200_overlap_run.sh a   # wheels; the GPU tests of overlapped and mixed steps; workloads/saturate.yaml
#                                   #   at 100 req/s with overlap off (graphed mixed steps, the default) and on;
#                                   #   served vs what the profiled step allows; peft on bursty30 (30 s window)
#   scripts/h200_overlap_run.sh c   # the GPU tests of overlap, mixed steps and lora_fold; the decode profile with
#                                   #   the pair (off) against lora_fold (fold), side stream up to 32 tokens, then
#                                   #   up to 256 tokens at batch 64 and 256
#   scripts/h200_overlap_run.sh d   # (next) the mixed-step profile at 128 and 256 decodes over 0 and 30 adapters,
#                                   #   0-256 prompt tokens a step; served_vs_step of run 7's saturate runs against it
#   scripts/h200_overlap_run.sh b   # adapters per GPU: saturate over 0, 30, 1,000, 5,000 adapters
#                                   #   (scripts/gpu_results.sh fleet, 15 s windows)
# Wheels: .whl/ from scripts/gather_wheels.sh (carried as an ignored path). Results: $OUT/<call>.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
res=/tmp/ov
call=${1:?usage: h200_overlap_run.sh a|b|c|d}
. scripts/gpu_call_start.sh
sat=(python3 -m harness run workloads/saturate.yaml --machine cuda --set traffic.rate=${RATE:-100}
     --set duration_s=${WINDOW_S:-12} --set warmup_s=4 --set loadgen.drain_timeout_s=20 --runs-dir "$res/runs" --no-progress)
plain='{"name":"multilora","label":"overlap-off","options":{"extra":{"overlap":false}}}'
over='{"name":"multilora","label":"overlap-on","options":{"extra":{"overlap":true}}}'
prof+=(--fused-lora off,fold)
case "$call" in
c)
  timeout 200 python3 -m pytest -q -p no:randomly --tb=short -k gpu tests/test_engine_overlap.py \
      tests/test_engine_mixed.py tests/test_engine_lora_fold.py > "$res/logs/c-tests.log" 2>&1
  grep -v "^  /\|Warning\|warn" "$res/logs/c-tests.log" | tail -30
  timeout 200 "${prof[@]}" --batches 1,64,256 --adapters 0,1,64,256 --out "$res/runs/profile-fold-32.json" \
      > "$res/logs/c-profile-32.log" 2>&1; grep -E "^decode|^\|" "$res/logs/c-profile-32.log" | tail -24
  timeout 170 "${prof[@]}" --batches 64,256 --adapters 0,64,256 --lora-stream-tokens 256 \
      --out "$res/runs/profile-fold-256.json" > "$res/logs/c-profile-256.log" 2>&1
  grep -E "^decode|^\|" "$res/logs/c-profile-256.log" | tail -16 ;;
d)
  timeout 300 "${prof[@]}" --fused-lora off --batches 128,256 --adapters 0,30 --mixed-prompts 0,128,256 \
      --out "$res/runs/profile-mixed.json" > "$res/logs/d-profile.log" 2>&1; grep -E "^mixed|^decode" "$res/logs/d-profile.log"
  for d in docs/results/h200/run7/*saturate-overlap-*; do
    python3 scripts/served_vs_step.py "$d" "$res/runs/profile-mixed.json" | tail -2
  done ;;
a)
  timeout 150 python3 -m pytest -q -p no:randomly tests/test_engine_overlap.py tests/test_engine_mixed.py 2>&1 | tail -4
  timeout -s INT 330 "${sat[@]}" --engine "$plain" --engine "$over" > "$res/logs/a-saturate.log" 2>&1
  grep -E "^(engine|-|overlap)|TTFT|TPOT|invalid" "$res/logs/a-saturate.log" | head -20
  for d in "$res"/runs/*saturate-overlap-*; do
    python3 scripts/served_vs_step.py "$d" docs/results/h200/run6/profile.json --json "$d/served_vs_step.json" | tail -3
  done
  timeout -s INT 170 python3 -m harness run workloads/bursty30.yaml --machine cuda --engine peft --set duration_s=30 \
      --set loadgen.drain_timeout_s=15 --runs-dir "$res/runs" --no-progress > "$res/logs/a-peft.log" 2>&1
  grep -E "^(engine|-|peft)|TTFT|TPOT|invalid|interrupted" "$res/logs/a-peft.log" | head -12 ;;
b)
  FLEET_COUNTS="${FLEET_COUNTS:-0 30 1000 5000}" WINDOW_S=${WINDOW_S:-15} \
      timeout -s INT 560 bash scripts/gpu_results.sh fleet > "$res/logs/b-fleet.log" 2>&1
  grep -v "^adapters:" "$res/logs/b-fleet.log" | tail -30
  mkdir -p "$res/runs/fleet" && cp -r runs/gpu/fleet/. "$res/runs/fleet/" ;;
*) echo "unknown call $call (a b c d)" >&2; exit 2 ;;
esac
. scripts/gpu_call_pack.sh
