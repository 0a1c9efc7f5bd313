#!/usr/bin/env bash
# Session 7's GPU work on one H200 (issue 15), one device call (under 10 minutes) per letter:
#   scripts/h200_run8.sh a   # GPU tests of overlap, mixed steps, lora_fold (the runner's host-to-device helper and
#                            #   the fold's restructure since run 7); the mixed-step profile (128 and 256 decodes over
#                            #   0 and 30 adapters, 0-256 prompt tokens); served_vs_step of run 7's saturate runs
#                            #   against it; the decode step's kernel time by kind (scripts/step_breakdown.py)
#   scripts/h200_run8.sh b   # the dedicated side of the plan: λ*(1) of the merged baseline on bursty30
#   scripts/h200_run8.sh c   # the expand by rows: its GPU tests (and the overlap test under sync debug, since the
#                            #   step metadata now carries each token's slot); kernels.bench of the decode cases;
#                            #   the decode profile, pair (off) against rows, synced and pipelined; the breakdown
#                            #   with rows
#   scripts/h200_run8.sh d   # workloads/saturate.yaml at 100 req/s expanding by segments vs by rows (12 s windows, same
#                            #   machine); the mixed-step profile with rows (synced and pipelined); served_vs_step
#   scripts/h200_run8.sh e   # the same A/B in the other order (rows first); the mixed-step profile expanding by
#                            #   segments (the default); served_vs_step of each run against the profile of its path
#   scripts/h200_run8.sh f   # a variant of the expand by rows (reverted since: one B load for a program over one
#                            #   adapter, measured slower); kernels.bench
#                            #   (its error against the segment expand too), saturate rows then segments, the
#                            #   decode profile off vs rows
# Wheels: .whl/ from scripts/gather_wheels.sh (carried as an ignored path). Results: $OUT/<call>.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
res=/tmp/r8
call=${1:?usage: h200_run8.sh a|b|c|d|e|f}
. scripts/gpu_call_start.sh
case "$call" in
a)
  timeout 150 python3 -m pytest -q -p no:randomly --tb=short -k gpu tests/test_engine_overlap.py \
      tests/test_engine_mixed.py tests/test_engine_lora_fold.py > "$res/logs/a-tests.log" 2>&1
  grep -v "^  /\|Warning\|warn" "$res/logs/a-tests.log" | tail -8
  timeout 270 "${prof[@]}" --fused-lora off --batches 128,256 --adapters 0,30 --mixed-prompts 0,128,256 \
      --out "$res/runs/profile-mixed.json" > "$res/logs/a-profile.log" 2>&1; grep -E "^mixed|^decode" "$res/logs/a-profile.log"
  for d in docs/results/h200/run7/*saturate-overlap-*; do
    python3 scripts/served_vs_step.py "$d" "$res/runs/profile-mixed.json" --json "$res/runs/$(basename "$d")-vs-mixed.json" | tail -3
  done
  timeout 120 python3 scripts/step_breakdown.py --points 1x0,1x1,64x0,64x64,256x0,256x256 \
      --json "$res/runs/breakdown.json" > "$res/logs/a-breakdown.log" 2>&1; grep -v USDT "$res/logs/a-breakdown.log" | tail -60 ;;
b)
  ENGINES_DEDICATED=merged SWEEP_RUNS=${SWEEP_RUNS:-4} WINDOW_S=${WINDOW_S:-12} SWEEP_BUDGET_S=${SWEEP_BUDGET_S:-300} \
      timeout -s INT 450 bash scripts/gpu_results.sh dedicated > "$res/logs/b-dedicated.log" 2>&1
  tail -20 "$res/logs/b-dedicated.log"
  mkdir -p "$res/runs/dedicated" && cp -r runs/gpu/dedicated/. "$res/runs/dedicated/" ;;
c)
  timeout 170 python3 -m pytest -q -p no:randomly --tb=short tests/test_kernels_expand_rows.py \
      tests/test_engine_expand_rows.py tests/test_kernels_lora.py tests/test_kernels_meta.py tests/test_engine_overlap.py -k "gpu or kernels" \
      > "$res/logs/c-tests.log" 2>&1; grep -v "^  /\|Warning\|warn" "$res/logs/c-tests.log" | tail -8
  timeout 110 python3 -m kernels.bench --only decode-1x1-r16-qkv,decode-64x64-r16-qkv,decode-256x256-r16-qkv,decode-256x30,decode-64x64-r16,decode-256x256-r16 \
      --out "$res/runs/kernels.json" > "$res/logs/c-bench.log" 2>&1; grep -E "^\||^NVIDIA" "$res/logs/c-bench.log" | head -12
  timeout 200 "${prof[@]}" --fused-lora off,rows --batches 1,64,256 --adapters 0,1,30,64,256 \
      --out "$res/runs/profile-rows.json" > "$res/logs/c-profile.log" 2>&1; grep -E "^decode|pipelined|^\|" "$res/logs/c-profile.log" | tail -50
  timeout 70 python3 scripts/step_breakdown.py --points 64x64,256x30,256x256 --expand-rows \
      --json "$res/runs/breakdown-rows.json" > "$res/logs/c-breakdown.log" 2>&1; grep -v USDT "$res/logs/c-breakdown.log" | grep "lora\|all" ;;
d|e)
  sat=(python3 -m harness run workloads/saturate.yaml --machine cuda --set traffic.rate=100 --set duration_s=12
       --set warmup_s=4 --set loadgen.drain_timeout_s=20 --runs-dir "$res/runs" --no-progress)
  seg='{"name":"multilora","label":"segments","options":{"extra":{"lora_expand_rows":0}}}'
  rows='{"name":"multilora","label":"rows","options":{"extra":{"lora_expand_rows":512}}}'
  order=("$seg" "$rows"); path=rows; [ "$call" = e ] && order=("$rows" "$seg") && path=off
  timeout -s INT 300 "${sat[@]}" --engine "${order[0]}" --engine "${order[1]}" > "$res/logs/$call-saturate.log" 2>&1
  grep -E "^(engine|-|segments|rows)|TTFT|TPOT|invalid" "$res/logs/$call-saturate.log" | head -14
  timeout 190 "${prof[@]}" --fused-lora $path --batches 128,256 --adapters 0,30 --mixed-prompts 0,128,256 \
      --out "$res/runs/profile-mixed-$path.json" > "$res/logs/$call-profile.log" 2>&1
  grep -E "^mixed|^decode|pipelined" "$res/logs/$call-profile.log" | tail -30
  for d in "$res"/runs/*saturate-segments "$res"/runs/*saturate-rows; do
    [ -d "$d" ] || continue
    p="$res/runs/profile-mixed-off.json"; [[ $d == *rows ]] && p="$res/runs/profile-mixed-rows.json"
    [ -f "$p" ] && python3 scripts/served_vs_step.py "$d" "$p" --json "$d/served_vs_step.json" | tail -4
  done ;;
f)  # (no pytest: the session's device time left; kernels.bench checks the rows expand against the segment one)
  timeout 75 python3 -m kernels.bench --only decode-64x64-r16-qkv,decode-256x256-r16-qkv,decode-256x30,decode-64x64-r16,decode-256x256-r16 \
      --out "$res/runs/kernels-f.json" > "$res/logs/f-bench.log" 2>&1; grep -E "^\|" "$res/logs/f-bench.log" | head -7 | cut -d'|' -f2,6-10,22
  sat=(python3 -m harness run workloads/saturate.yaml --machine cuda --set traffic.rate=100 --set duration_s=12
       --set warmup_s=4 --set loadgen.drain_timeout_s=20 --runs-dir "$res/runs" --no-progress)
  rows='{"name":"multilora","label":"rows1","options":{"extra":{"lora_expand_rows":512}}}'
  seg='{"name":"multilora","label":"segments","options":{"extra":{"lora_expand_rows":0}}}'
  timeout -s INT 150 "${sat[@]}" --engine "$rows" --engine "$seg" > "$res/logs/f-saturate.log" 2>&1
  grep -E "^(engine|-|segments|rows)|TTFT|TPOT|invalid" "$res/logs/f-saturate.log" | head -14
  timeout 95 "${prof[@]}" --fused-lora off,rows --batches 64,256 --adapters 0,30,64,256 \
      --out "$res/runs/profile-f.json" > "$res/logs/f-profile.log" 2>&1; grep -E "^\|" "$res/logs/f-profile.log" | head -8 ;;
*) echo "unknown call $call (a b c d e f)" >&2; exit 2 ;;
esac
. scripts/gpu_call_pack.sh
