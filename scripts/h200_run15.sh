#!/usr/bin/env bash
# The next GPU session's work on one H200 (issue 15), prepared after run 14; one device call (under 10 minutes) per
# letter, in this order:
#   scripts/h200_run15.sh a   # the LoRA side stream at high CUDA priority (engine extra lora_stream_priority, new
#                             #   after run 14, unmeasured) against normal: profiles normal, high, normal, high at
#                             #   batches 1 and 64 over 0, 1, 64 adapters on one machine (at 64 tokens the fold's LoRA
#                             #   chain beside the base matmul is the longer of the two: run 14), then the fold's GPU
#                             #   test (it checks the prioritized stream serves the pair's tokens)
#   scripts/h200_run15.sh b   # kernels.tune --ops shrink_rows on the 64-token decode cases (run 14: the q,k,v shrink by
#                             #   rows ~10 us against a 5.9 us byte floor at 64 x 64), the bench of them, and the
#                             #   profile at batches 1, 64, 256 with the file it wrote (tuned file: runs/nvidia-h200.json)
#   scripts/h200_run15.sh s   # workloads/saturate.yaml at 130 req/s over its 30 adapters, then the decode step and the
#                             #   mixed step at its context (192 tokens) and scripts/served_vs_step.py against both
#                             #   (needs the wheels: carry .whl)
# Calls a, c and d measured options that lost and were removed after them: run them at the commits they ran at (a
# at f87b3a0, c at 31c5cf3, d at 612dd5e); at later commits the profile refuses --lora-stream-priority and the
# path "one".
#   scripts/h200_run15.sh c   # the shrink and expand by rows in one launch (kernels/lora_rows_pair.py, new after
#                             #   calls a and b): its GPU tests, the bench of the 1- and 64-token decode cases (rows_one
#                             #   beside rows_pair) and two profiles at batches 1 and 64 over 0, 1, 64 adapters measuring
#                             #   each point on both paths (--fused-lora auto,one then one,auto)
#   scripts/h200_run15.sh d   # the same after call c (one launch slower: 20.1 against 15.2 us at 64 x 64 q,k,v): the
#                             #   waiting programs sleep between polls, each block of rows resets its own counts, and
#                             #   the profile's first path configures the start graphs (in c, "one" first ran the default)
#   scripts/h200_run15.sh e   # the shrink by rows summing its chunks element-wise (one reduction across threads a
#                             #   program): bench of the 64- and 256-token cases, then profiles before, after, before
#                             #   at batches 64 and 256 (needs ab-before.tar: `git archive 8edffd1 kernels engines
#                             #   harness reports workloads pyproject.toml -o ab-before.tar`, untracked; delete after)
#   scripts/h200_run15.sh t   # GPU tests (ran at 9dbcf03, before e's change): graph capture, rows kernels, PDL, fused ops, the fold,
#                             #   the expand by rows in the engine, launch fitting, overlapped steps
# Results: $OUT/<call>.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
res=/tmp/r15
call=${1:?usage: h200_run15.sh a|b|c|d|e|s|t}
. scripts/gpu_call_start.sh
cases=decode-64x1-r16,decode-64x8-r16,decode-64x64-r16
case "$call" in
a)
  for n in 1 2; do for prio in normal high; do
    timeout 150 "${prof[@]}" --rounds 3 --batches 1,64 --adapters 0,1,64 --lora-stream-priority $prio \
        --out "$res/runs/profile-a$n-$prio.json" > "$res/logs/a$n-profile-$prio.log" 2>&1
    echo "$prio $n:"; decode_brief "$res/logs/a$n-profile-$prio.log"
  done; done
  timeout 120 python3 -m pytest -q -p no:randomly --tb=short tests/test_engine_lora_fold.py > "$res/logs/a-tests.log" 2>&1
  tail -2 "$res/logs/a-tests.log" ;;
b)
  timeout 240 python3 -m kernels.tune --ops shrink_rows --only "$cases" --budget-s 180 --jobs 16 \
      > "$res/logs/b-tune.log" 2>&1
  tail -6 "$res/logs/b-tune.log"; cp kernels/configs/nvidia-h200.json "$res/runs/nvidia-h200.json"
  timeout 120 python3 -m kernels.bench --only "$cases" --out "$res/runs/kernels.json" > "$res/logs/b-bench.log" 2>&1
  grep -E "^\| decode" "$res/logs/b-bench.log" | cut -c1-120
  timeout 200 "${prof[@]}" --rounds 3 --batches 1,64,256 --adapters 0,1,64,256 \
      --out "$res/runs/profile-b.json" > "$res/logs/b-profile.log" 2>&1
  decode_brief "$res/logs/b-profile.log" ;;
s)
  . scripts/gpu_saturate.sh ;;
c|d)
  timeout 240 python3 -m pytest -q -p no:randomly --tb=short tests/test_kernels_rows_pair.py \
      tests/test_engine_one_launch.py tests/test_engine_lora_fold.py > "$res/logs/$call-tests.log" 2>&1
  tail -3 "$res/logs/$call-tests.log"
  timeout 150 python3 -m kernels.bench --only decode-1x1-r16,decode-64x1-r16,decode-64x64-r16 \
      --out "$res/runs/kernels-$call.json" > "$res/logs/$call-bench.log" 2>&1
  python3 -c "import json; d=json.load(open('$res/runs/kernels-$call.json'))
for r in d['lora']: print(r['case'], 'rows_pair', round(r['rows_pair_us'] or 0, 1), 'rows_one', round(r['rows_one_us'] or 0, 1), 'floor', round(r['byte_floor_us'], 1), 'err', r['rows_one_rel_err_vs_rows_pair'])"
  for order in auto,one one,auto; do
    timeout 150 "${prof[@]}" --rounds 3 --batches 1,64 --adapters 0,1,64 --fused-lora $order \
        --out "$res/runs/profile-$call-$order.json" > "$res/logs/$call-profile-$order.log" 2>&1
    echo "$order:"; decode_brief "$res/logs/$call-profile-$order.log"
  done ;;
e)
  timeout 70 python3 -m kernels.bench --only decode-64x64-r16-qkv,decode-256x256-r16-qkv --out "$res/runs/kernels-e.json" \
      > "$res/logs/e-bench.log" 2>&1
  python3 -c "import json; d=json.load(open('$res/runs/kernels-e.json'))
for r in d['lora']: print(r['case'], 'rows_pair', round(r['rows_pair_us'] or 0, 1), 'floor', round(r['byte_floor_us'], 1))"
  mkdir -p /tmp/before && tar xf ab-before.tar -C /tmp/before
  for side in before after before; do
    dir=$([ $side = before ] && echo /tmp/before || echo "$PWD")
    n=$(ls "$res"/logs/e-profile-$side-*.log 2>/dev/null | wc -l)
    (cd "$dir" && PYTHONPATH="$dir:/tmp/site" timeout 80 "${prof[@]}" --rounds 3 --batches 64,256 --adapters 0,64,256 \
        --out "$res/runs/profile-e-$side-$n.json" > "$res/logs/e-profile-$side-$n.log" 2>&1)
    echo "$side $n:"; decode_brief "$res/logs/e-profile-$side-$n.log"
  done ;;
t)
  timeout 450 python3 -m pytest -q -p no:randomly -rxXs --tb=short tests/test_engine_graph_capture.py \
      tests/test_kernels_expand_rows.py tests/test_kernels_shrink_rows.py tests/test_kernels_pdl.py \
      tests/test_engine_fused_ops.py tests/test_engine_lora_fold.py tests/test_engine_expand_rows.py \
      tests/test_kernels_launch.py tests/test_engine_overlap.py > "$res/logs/t-tests.log" 2>&1
  grep -v "^  /\|Warning\|warn" "$res/logs/t-tests.log" | tail -8 ;;
*) echo "unknown call $call (a b c d e s t)" >&2; exit 2 ;;
esac
. scripts/gpu_call_pack.sh
