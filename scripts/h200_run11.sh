#!/usr/bin/env bash
# Session 10's GPU work on one H200 (issue 15), one device call (under 10 minutes) per letter:
#   scripts/h200_run11.sh a   # the decode profile (synced, pipelined, the host's part of a step) with the side
#                             #   stream at its default (calls of up to 32 tokens) and up to 256 tokens, each with
#                             #   the default LoRA path (auto), the expand by rows always (rows) and the folded
#                             #   output (fold): does running LoRA beside the base matmul lower the tax at batches
#                             #   64 and 256, where it runs on the main stream today?
#   scripts/h200_run11.sh b   # the shrink by rows (kernels/lora_shrink_rows.py): GPU tests, kernels.bench of the decode
#                             #   cases before and after `kernels.tune --ops shrink_rows`
#   scripts/h200_run11.sh c   # the decode profile in 3 interleaved rounds (--rounds): the default path against the
#                             #   shrink by rows (srows), batches 1, 64, 256 over 0, 1, 64, 256 adapters
#   scripts/h200_run11.sh d   # the segment shrink and expand at 64 tokens retuned on the decodes that still take them
#                             #   (64 over 1 and over 8 adapters; 64 over 64 goes by rows since runs 9 and 11):
#                             #   kernels.bench before and after `kernels.tune --ops shrink,expand`, and the decode
#                             #   profile at batch 64 (3 rounds) with the file before and after
#   scripts/h200_run11.sh e   # where batch 64's LoRA time goes with call d's file (scripts/step_breakdown.py): do the
#                             #   retuned kernels' gains in kernels.bench reach the step?
#   scripts/h200_run11.sh f   # the decode profile (3 rounds) by rows always (shrink and expand) against the default
#                             #   rule, at batches 64 and 256 over 1, 8, 30 and 64 adapters: the segment kernels'
#                             #   grids are bounded by the engine's segment capacity, not the step's adapters
#   scripts/h200_run11.sh g   # with this session's defaults (shrink by rows, steps of up to 64 tokens by rows): GPU
#                             #   tests, and the decode profile in 3 rounds at batches 1, 64, 256 over 0-256 adapters
#   scripts/h200_run11.sh h   # kernels.bench's cases now launch the engine's grids (a segment capacity of 64 slots):
#                             #   the segment shrink and expand retuned for the steps a saturated server runs by
#                             #   segments (256 decodes over 30 adapters, mixed 512 and 768); the step breakdown of
#                             #   those steps with 64 slots, with the file before and after
#   scripts/h200_run11.sh i   # saturate.yaml at 130 req/s over its 30 adapters with this session's defaults (run 10
#                             #   call e: 14,761 and 14,673 served tok/s with rank-16 slots) and scripts/served_vs_step.py
# Wheels: .whl/ from scripts/gather_wheels.sh (carried as an ignored path). Results: $OUT/<call>.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
res=/tmp/r11
call=${1:?usage: h200_run11.sh a|b|c|d|e|f|g|h|i}
. scripts/gpu_call_start.sh
case "$call" in
a)
  for side in 32 256; do
    timeout 280 "${prof[@]}" --rounds 1 --fused-lora auto,rows,fold --lora-stream-tokens $side --batches 1,64,256 \
        --adapters 0,1,64,256 --out "$res/runs/profile-side$side.json" > "$res/logs/a-profile-side$side.log" 2>&1
    echo "-- side stream up to $side tokens"; grep -E "^\|" "$res/logs/a-profile-side$side.log" | head -24
  done ;;
b)
  timeout 240 python3 -m pytest -q -p no:randomly --tb=short tests/test_kernels_shrink_rows.py tests/test_kernels_expand_rows.py \
      tests/test_engine_expand_rows.py tests/test_kernels_fit_gpu.py -k "rows or Rows" > "$res/logs/b-tests.log" 2>&1
  grep -v "^  /\|Warning\|warn" "$res/logs/b-tests.log" | tail -8
  cases=decode-1x1-r16,decode-64x64-r16,decode-256x256-r16
  for when in before after; do
    if [ $when = after ]; then
      timeout 200 python3 -m kernels.tune --ops shrink_rows --only $cases --budget-s 110 --jobs 16 \
          > "$res/logs/b-tune.log" 2>&1; head -1 "$res/logs/b-tune.log"; grep -E "^shrink_rows \[" "$res/logs/b-tune.log"
      cp kernels/configs/nvidia-h200.json "$res/runs/nvidia-h200.json"
    fi
    timeout 90 python3 -m kernels.bench --only $cases --out "$res/runs/kernels-$when.json" > "$res/logs/b-bench-$when.log" 2>&1
    python3 - "$res/runs/kernels-$when.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["lora"]:
    print(f"{r['case']:24s} pair {r['us']:6.1f} (shrink {r['shrink_us']:5.1f} expand {r['expand_us']:5.1f}) "
          f"rows: expand {r['expand_rows_us']:5.1f} pair {r['rows_pair_us']:6.1f}  floor {r['byte_floor_us']:5.1f} us  "
          f"err {r['rows_pair_rel_err_vs_segments']:.1e}")
PY
  done ;;
c)
  timeout 280 "${prof[@]}" --fused-lora auto,srows --rounds 3 --batches 1,64,256 --adapters 0,1,64,256 \
      --out "$res/runs/profile-srows.json" > "$res/logs/c-profile.log" 2>&1
  grep -E "^\|" "$res/logs/c-profile.log" | head -24; grep -E "rounds" "$res/logs/c-profile.log" | head -24 ;;
d)
  cases=decode-64x1-,decode-64x8-r16
  cp kernels/configs/nvidia-h200.json "$res/old.json"
  for when in before after; do
    if [ $when = after ]; then
      timeout 200 python3 -m kernels.tune --ops shrink,expand --only $cases --budget-s 120 --jobs 16 \
          > "$res/logs/d-tune.log" 2>&1; head -1 "$res/logs/d-tune.log"; grep -E "^(shrink|expand) \[" "$res/logs/d-tune.log"
      cp kernels/configs/nvidia-h200.json "$res/runs/nvidia-h200.json"
    fi
    timeout 60 python3 -m kernels.bench --only $cases --out "$res/runs/kernels-64-$when.json" > "$res/logs/d-bench-$when.log" 2>&1
    grep -E "^\| decode" "$res/logs/d-bench-$when.log" | cut -d'|' -f2-8
  done
  for f in old new; do
    [ $f = old ] && cp "$res/old.json" kernels/configs/nvidia-h200.json || cp "$res/runs/nvidia-h200.json" kernels/configs/nvidia-h200.json
    timeout 150 "${prof[@]}" --rounds 3 --batches 64 --adapters 0,1,8,64 --out "$res/runs/profile-64-$f.json" \
        > "$res/logs/d-profile-$f.log" 2>&1
    echo "-- $f file"; grep -A1 -E "^decode batch" "$res/logs/d-profile-$f.log" | grep -v "^--" | cut -c1-200
  done ;;
e)
  timeout 150 python3 scripts/step_breakdown.py --points 64x0,64x1,64x8,64x64 --json "$res/runs/breakdown-64.json" \
      > "$res/logs/e-breakdown.log" 2>&1; grep -v USDT "$res/logs/e-breakdown.log" | tail -40 ;;
f)
  timeout 200 "${prof[@]}" --fused-lora auto,rows --rounds 3 --batches 64,256 --adapters 0,1,8,30,64 \
      --out "$res/runs/profile-rows.json" > "$res/logs/f-profile.log" 2>&1
  grep -E "^\|" "$res/logs/f-profile.log" | head -12
  grep -A1 -E "^decode batch" "$res/logs/f-profile.log" | grep -o "pipelined.*" | cut -c1-150 ;;
g)
  timeout 200 python3 -m pytest -q -p no:randomly --tb=short tests/test_kernels_meta.py tests/test_engine_expand_rows.py \
      tests/test_engine_overlap.py tests/test_engine_lora_fold.py tests/test_engine_mixed.py > "$res/logs/g-tests.log" 2>&1
  grep -v "^  /\|Warning\|warn" "$res/logs/g-tests.log" | tail -6
  timeout 250 "${prof[@]}" --rounds 3 --batches 1,64,256 --adapters 0,1,8,64,256 --out "$res/runs/profile.json" \
      > "$res/logs/g-profile.log" 2>&1
  grep -E "^\|" "$res/logs/g-profile.log" | head -24
  grep -A1 -E "^decode batch" "$res/logs/g-profile.log" | grep -v "^--" | cut -c1-190 ;;
h)
  cases=decode-256x30-r16,mixed-512x30-r16,mixed-768x30-r16
  cp kernels/configs/nvidia-h200.json "$res/old.json"
  for when in before after; do
    if [ $when = after ]; then
      timeout 220 python3 -m kernels.tune --ops shrink,expand --only $cases --budget-s 150 --jobs 16 \
          > "$res/logs/h-tune.log" 2>&1; head -1 "$res/logs/h-tune.log"; grep -E "^(shrink|expand) \[" "$res/logs/h-tune.log" | cut -c1-230
      cp kernels/configs/nvidia-h200.json "$res/runs/nvidia-h200.json"
    fi
    timeout 60 python3 -m kernels.bench --only $cases --out "$res/runs/kernels-seg-$when.json" > "$res/logs/h-bench-$when.log" 2>&1
    grep -E "^\| (decode|mixed)" "$res/logs/h-bench-$when.log" | cut -d'|' -f2-7
    timeout 80 python3 scripts/step_breakdown.py --slots 64 --points 256x30,256x30+256,256x30+512 \
        --json "$res/runs/breakdown-$when.json" > "$res/logs/h-breakdown-$when.log" 2>&1
    grep -E "lora|all" "$res/logs/h-breakdown-$when.log"
  done ;;
i)
  timeout -s INT 150 python3 -m harness run workloads/saturate.yaml --machine cuda --set traffic.rate=130 \
      --set duration_s=12 --set warmup_s=4 --set loadgen.drain_timeout_s=20 --runs-dir "$res/runs" --no-progress \
      --engine multilora > "$res/logs/i-saturate.log" 2>&1
  grep -E "^multilora|invalid|rror" "$res/logs/i-saturate.log" | head -3; grep -h served_tok_s "$res"/runs/*results.json
  d=$(ls -d "$res"/runs/*-saturate-multilora | tail -1)
  python3 scripts/served_vs_step.py "$d" docs/results/h200/run8/profile-mixed.json --json "$res/runs/served-vs-step.json" ;;
*) echo "unknown call $call (a b c d e f g h i)" >&2; exit 2 ;;
esac
. scripts/gpu_call_pack.sh
