#!/usr/bin/env bash
# The next GPU session's work on one H200 (issue 15), prepared after run 13; one device call (under 10 minutes) per
# letter, in this order:
#   scripts/h200_run14.sh a   # kernels.tune --ops expand_rows (ExpandRowsConfig.programs and .late_rank, new after
#                             #   run 13) on the decode cases, then kernels.bench of them; the tuned file comes back
#                             #   as runs/nvidia-h200.json (commit it before call b)
#   scripts/h200_run14.sh b   # harness profile --rounds 3 at batches 1, 64, 256 over 0, 1, 8, 64, 256 adapters, the
#                             #   default path against segments everywhere (does the retuned segment pair beat the
#                             #   rows pair at 64 tokens over few adapters, ROWS_ANY_FILL_TOKENS?) and the fold (shrink
#                             #   and expand beside the base matmul, the sum added by the next op: the batch-1 tax)
#   scripts/h200_run14.sh c   # the same profile with PDL on (run 12: two points of tax at 64 tokens; run 13 found
#                             #   that the illegal address which kept it off was not PDL's)
#   scripts/h200_run14.sh d   # the same profile with the defaults chosen from b and c (PDL for calls of up to 64
#                             #   tokens, the fold on CUDA) against nofold
#   scripts/h200_run14.sh t   # GPU tests: the graph capture regression, the expand by rows' new options compiled,
#                             #   programmatic dependent launch
#   scripts/h200_run14.sh s   # workloads/saturate.yaml at 130 req/s over its 30 adapters, then
#                             #   scripts/served_vs_step.py (needs the wheels: carry .whl)
#   scripts/h200_run14.sh e   # the decode step at call s's context (192 tokens) and around its mean batch over 30
#                             #   adapters, and call s's run set against it (same machine: run right after s)
#   scripts/h200_run14.sh f   # the mixed step near call s's (224 decodes + 288 prompt tokens as rows, graphed; the
#                             #   256 + 288 corner does not fit the graphs' 512 rows and runs eager)
#   scripts/h200_run14.sh g   # the side stream (and with it the fold) up to 64 and 256 tokens, batches 64 and 256
#   scripts/h200_run14.sh h   # the profile of call d with the defaults this session chose (PDL and the side stream up
#                             #   to 64 tokens, the fold on CUDA): the issue's table
#   scripts/h200_run14.sh i   # the fold's expand overwriting its buffer (no zeroing kernel) against zeroing it: A/B/A/B
#                             #   profiles at batches 1 and 64 on one machine, "before" from ab-before.tar (git archive
#                             #   of the commit before, untracked), then the GPU tests of the expand by rows and the fold
# Results: $OUT/<call>.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
res=/tmp/r14
call=${1:?usage: h200_run14.sh a|b|c|d|t|s|e|f|g|h|i}
. scripts/gpu_call_start.sh
cases=decode-1x1-r16,decode-64x1-r16,decode-64x8-r16,decode-64x64-r16,decode-128x128-r16,decode-256x256-r16
case "$call" in
a)
  timeout 300 python3 -m kernels.tune --ops expand_rows --only "$cases" --budget-s 240 --jobs 16 \
      > "$res/logs/a-tune.log" 2>&1
  tail -12 "$res/logs/a-tune.log"; cp kernels/configs/nvidia-h200.json "$res/runs/nvidia-h200.json"
  timeout 200 python3 -m kernels.bench --only "$cases" --out "$res/runs/kernels.json" > "$res/logs/a-bench.log" 2>&1
  grep -E "^\| (decode|mixed)" "$res/logs/a-bench.log" | head -20 ;;
b|c|d|h)  # b and c ran before the fold was the default (their auto is d's nofold); --pdl on was every call
  pdl=$(case $call in b) echo off ;; c) echo on ;; *) echo auto ;; esac)
  paths=$(case $call in b) echo auto,segments,fold ;; c) echo auto,fold ;; d) echo auto,nofold ;; h) echo auto ;; esac)
  timeout 500 "${prof[@]}" --rounds 3 --batches 1,64,256 --adapters 0,1,64,256 --fused-lora "$paths" \
      --pdl "$pdl" --out "$res/runs/profile-$call-pdl-$pdl.json" > "$res/logs/$call-profile.log" 2>&1
  grep -E "^\|" "$res/logs/$call-profile.log" | head -24
  grep -A1 -E "^decode batch" "$res/logs/$call-profile.log" | grep -v "^--" | cut -c1-190 ;;
t)
  timeout 400 python3 -m pytest -q -p no:randomly -rxXs --tb=short tests/test_engine_graph_capture.py \
      tests/test_kernels_expand_rows.py tests/test_kernels_pdl.py tests/test_engine_fused_ops.py \
      tests/test_engine_lora_fold.py \
      > "$res/logs/t-tests.log" 2>&1
  grep -v "^  /\|Warning\|warn" "$res/logs/t-tests.log" | tail -8 ;;
s)
  timeout -s INT 200 python3 -m harness run workloads/saturate.yaml --machine cuda \
      --set traffic.rate=130 --set duration_s=12 --set warmup_s=4 --set loadgen.drain_timeout_s=20 \
      --runs-dir "$res/runs" --no-progress --engine multilora > "$res/logs/s-saturate.log" 2>&1
  grep -E "^multilora|invalid|rror" "$res/logs/s-saturate.log" | head -3
  d=$(ls -d "$res"/runs/*-saturate-multilora | tail -1)
  python3 scripts/served_vs_step.py "$d" docs/results/h200/run8/profile-mixed.json --json "$res/runs/served-vs-step.json" ;;
e)
  timeout 300 "${prof[@]}" --rounds 2 --context 192 --batches 224,240 --adapters 0,30 \
      --out "$res/runs/profile-ctx192.json" > "$res/logs/e-profile.log" 2>&1
  grep -A1 -E "^decode batch" "$res/logs/e-profile.log" | grep -v "^--" | cut -c1-190
  d=$(ls -d "$res"/runs/*-saturate-multilora | tail -1)
  python3 scripts/served_vs_step.py "$d" "$res/runs/profile-ctx192.json" --json "$res/runs/served-vs-step-ctx192.json" ;;
f)
  timeout 300 "${prof[@]}" --rounds 1 --context 192 --batches 224,256 --adapters 0,30 --mixed-prompts 256,288 \
      --out "$res/runs/profile-mixed-ctx192.json" > "$res/logs/f-profile.log" 2>&1
  grep -E "^mixed step" "$res/logs/f-profile.log" | cut -c1-200
  d=$(ls -d "$res"/runs/*-saturate-multilora | tail -1)
  python3 scripts/served_vs_step.py "$d" "$res/runs/profile-mixed-ctx192.json" \
      --json "$res/runs/served-vs-mixed-ctx192.json" ;;
g)
  for n in 64 256; do
    timeout 200 "${prof[@]}" --rounds 3 --batches 64,256 --adapters 0,1,64,256 --lora-stream-tokens $n \
        --fused-lora auto,nofold --out "$res/runs/profile-side$n.json" > "$res/logs/g-profile-side$n.log" 2>&1
    echo "side stream up to $n tokens:"; decode_brief "$res/logs/g-profile-side$n.log"
  done ;;
i)
  mkdir -p /tmp/before && tar xf ab-before.tar -C /tmp/before
  for n in 1 2; do for side in before after; do
    dir=$([ $side = before ] && echo /tmp/before || echo "$PWD")
    (cd "$dir" && PYTHONPATH="$dir:/tmp/site" timeout 150 "${prof[@]}" --rounds 3 --batches 1,64 --adapters 0,1,64 \
        --out "$res/runs/profile-i$n-$side.json" > "$res/logs/i$n-profile-$side.log" 2>&1)
    echo "$side $n:"; decode_brief "$res/logs/i$n-profile-$side.log"
  done; done
  timeout 150 python3 -m pytest -q -p no:randomly --tb=short tests/test_kernels_expand_rows.py \
      tests/test_engine_lora_fold.py tests/test_kernels_meta.py > "$res/logs/i-tests.log" 2>&1
  tail -2 "$res/logs/i-tests.log" ;;
*) echo "unknown call $call (a b c d t s e f g h i)" >&2; exit 2 ;;
esac
. scripts/gpu_call_pack.sh
