#!/usr/bin/env bash
# Session 11's GPU work on one H200 (issue 15), one device call (under 10 minutes) per letter:
#   scripts/h200_run12.sh a   # programmatic dependent launch (kernels/pdl.py): the GPU tests, then the decode profile
#                             #   in 3 rounds at batches 1, 64, 256 over 0, 1, 64, 256 adapters with PDL off and on
#                             #   (same machine, one after the other)
#   scripts/h200_run12.sh b   # call a's GPU tests failed (an illegal address after the engine test with PDL on): the
#                             #   PTX test's counts under the machine's Triton, and scripts/pdl_bisect.py (which kernel
#                             #   family launched with PDL breaks the tiny engine, eager and with graphs)
#   scripts/h200_run12.sh b2  # the GPU tests of tests/test_kernels_pdl.py alone (-x), and the bisection with the
#                             #   engine's start-up prefills (extra warmup) and graphs
#   scripts/h200_run12.sh b3  # the bisection with a PDL-off engine served first in each child, and compute-sanitizer
#                             #   on the failing engine test
#   scripts/h200_run12.sh b4  # the engine test alone, the bisection with warmup after a PDL-off engine, and
#                             #   compute-sanitizer on the two GPU tests that fail together
#   scripts/h200_run12.sh b5  # the bisection in the failing order: the rows pair's graph test, a PDL-off engine, then
#                             #   PDL on for one family at a time
#   scripts/h200_run12.sh t   # GPU tests of the kernels this session changed (PDL off, the default), then
#                             #   tests/test_kernels_pdl.py
#   scripts/h200_run12.sh c   # where the step's time goes with PDL off and on (scripts/step_breakdown.py, batch 64
#                             #   over 0, 1, 64 adapters), and kernels.bench of the decode cases with LORA_FLEET_PDL=0/1
#   scripts/h200_run12.sh d   # saturate.yaml at 130 req/s over its 30 adapters with PDL on (run 11 call i: 14,427
#                             #   served tok/s with it off) and scripts/served_vs_step.py
# Wheels: .whl/ from scripts/gather_wheels.sh (carried as an ignored path). Results: $OUT/<call>.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
res=/tmp/r12
call=${1:?usage: h200_run12.sh a|b|b2|b3|b4|b5|t|c|d}
. scripts/gpu_call_start.sh
case "$call" in
a)
  timeout 150 python3 -m pytest -q -p no:randomly --tb=short tests/test_kernels_pdl.py tests/test_kernels_shrink_rows.py \
      tests/test_kernels_expand_rows.py tests/test_engine_fused_ops.py tests/test_kernels_attention.py \
      > "$res/logs/a-tests.log" 2>&1
  grep -v "^  /\|Warning\|warn" "$res/logs/a-tests.log" | tail -8
  for p in off on; do
    timeout 220 "${prof[@]}" --pdl $p --rounds 3 --batches 1,64,256 --adapters 0,1,64,256 \
        --out "$res/runs/profile-pdl-$p.json" > "$res/logs/a-profile-pdl-$p.log" 2>&1
    echo "-- PDL $p"; grep -E "^\|" "$res/logs/a-profile-pdl-$p.log" | head -24
    grep -A1 -E "^decode batch" "$res/logs/a-profile-pdl-$p.log" | grep -v "^--" | cut -c1-190
  done ;;
b)
  timeout 100 python3 -m pytest -q -p no:randomly --tb=short tests/test_kernels_pdl.py -k "weights or without" \
      > "$res/logs/b-tests.log" 2>&1
  grep -E "assert|Error|passed|failed" "$res/logs/b-tests.log" | head -12
  timeout 400 python3 scripts/pdl_bisect.py 2>&1 | tee "$res/logs/b-bisect.log" ;;
b2)
  timeout 200 python3 -m pytest -x -q -p no:randomly --tb=long tests/test_kernels_pdl.py -k "hopper" \
      > "$res/logs/b2-tests.log" 2>&1
  grep -v "^  /\|Warning\|warn" "$res/logs/b2-tests.log" | grep -E "^E |Error|passed|failed|^tests|line" | head -40
  timeout 300 python3 scripts/pdl_bisect.py --graphs 1 --warmup 2>&1 | tee "$res/logs/b2-bisect.log" ;;
b3)
  timeout 200 python3 scripts/pdl_bisect.py --graphs 0,1 --after-off 2>&1 | tee "$res/logs/b3-bisect.log"
  timeout 250 compute-sanitizer --tool memcheck --print-limit 8 python3 -m pytest -x -q -p no:randomly --tb=no \
      tests/test_kernels_pdl.py -k "engine_serves" > "$res/logs/b3-sanitizer.log" 2>&1
  grep -E "Invalid|at .*kernel|by thread|Address|ERROR SUMMARY|passed|failed" "$res/logs/b3-sanitizer.log" | head -30 ;;
b4)
  timeout 100 python3 -m pytest -x -q -p no:randomly --tb=line tests/test_kernels_pdl.py -k "engine_serves" 2>&1 \
      | grep -E "Error|passed|failed" | head -5
  timeout 150 python3 scripts/pdl_bisect.py --graphs 1 --warmup --after-off --families all 2>&1 | tee "$res/logs/b4-bisect.log"
  timeout 280 compute-sanitizer --tool memcheck --print-limit 6 python3 -m pytest -x -q -p no:randomly --tb=no \
      tests/test_kernels_pdl.py -k "hopper" > "$res/logs/b4-sanitizer.log" 2>&1
  grep -E "Invalid|at .*0x|by thread|Address|ERROR SUMMARY|passed|failed" "$res/logs/b4-sanitizer.log" | head -30 ;;
b5)
  timeout 280 python3 scripts/pdl_bisect.py --graphs 1 --warmup --after-off --after-kernel-test off,on 2>&1 \
      | tee "$res/logs/b5-bisect.log" ;;
t)
  timeout 250 python3 -m pytest -q -p no:randomly --tb=short tests/test_kernels_shrink_rows.py \
      tests/test_kernels_expand_rows.py tests/test_kernels_lora.py tests/test_engine_fused_ops.py \
      tests/test_kernels_attention.py tests/test_engine_expand_rows.py > "$res/logs/t-kernels.log" 2>&1
  grep -v "^  /\|Warning\|warn" "$res/logs/t-kernels.log" | tail -5
  timeout 250 python3 -m pytest -q -p no:randomly -rxXs --tb=short tests/test_kernels_pdl.py > "$res/logs/t-pdl.log" 2>&1
  grep -v "^  /\|Warning\|warn" "$res/logs/t-pdl.log" | tail -8 ;;
c)
  for p in 0 1; do
    LORA_FLEET_PDL=$p timeout 120 python3 scripts/step_breakdown.py --points 64x0,64x1,64x64 \
        --json "$res/runs/breakdown-64-pdl$p.json" > "$res/logs/b-breakdown-pdl$p.log" 2>&1
    echo "-- PDL $p"; grep -E "^\|" "$res/logs/b-breakdown-pdl$p.log" | head -30
    LORA_FLEET_PDL=$p timeout 90 python3 -m kernels.bench --only decode-1x1-r16,decode-64x64-r16,decode-256x256-r16 \
        --out "$res/runs/kernels-pdl$p.json" > "$res/logs/b-bench-pdl$p.log" 2>&1
    grep -E "^\| decode" "$res/logs/b-bench-pdl$p.log" | cut -d'|' -f2-9
  done ;;
d)
  LORA_FLEET_PDL=1 timeout -s INT 150 python3 -m harness run workloads/saturate.yaml --machine cuda \
      --set traffic.rate=130 --set duration_s=12 --set warmup_s=4 --set loadgen.drain_timeout_s=20 \
      --runs-dir "$res/runs" --no-progress --engine multilora > "$res/logs/c-saturate.log" 2>&1
  grep -E "^multilora|invalid|rror" "$res/logs/c-saturate.log" | head -3; grep -h served_tok_s "$res"/runs/*results.json
  d=$(ls -d "$res"/runs/*-saturate-multilora | tail -1)
  python3 scripts/served_vs_step.py "$d" docs/results/h200/run8/profile-mixed.json --json "$res/runs/served-vs-step.json" ;;
*) echo "unknown call $call (a b b2 b3 b4 b5 t c d)" >&2; exit 2 ;;
esac
. scripts/gpu_call_pack.sh
