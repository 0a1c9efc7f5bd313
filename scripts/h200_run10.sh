#!/usr/bin/env bash
# Session 9's GPU work on one H200 (issue 15), one device call (under 10 minutes) per letter:
#   scripts/h200_run10.sh a   # the decode profile after session 8's host work (numpy step inputs and LoRA
#                             #   metadata): synced and pipelined, the default (auto) against segments; where the
#                             #   time of the decode step and of the mixed step goes (scripts/step_breakdown.py)
#   scripts/h200_run10.sh b   # retune the segment expand and the shrink for the steps that now take segments (decodes
#                             #   sharing adapters, mixed steps): kernels.bench and the step breakdown before and
#                             #   after `python -m kernels.tune --ops shrink,expand`; saturate.yaml at 130 req/s
#                             #   over 30 adapters with the new file
#   scripts/h200_run10.sh c   # the segment expand of q,k,v at 256 tokens tuned on the decodes that take it (not on
#                             #   256 adapters, which go by rows); shrink and expand of full mixed steps (256 decodes
#                             #   + 512 prompt rows); saturate.yaml at 130 req/s over 30 adapters with run 9's file,
#                             #   then with the new one (needs old-h200.json: git show 10673a5:kernels/configs/nvidia-h200.json)
#   scripts/h200_run10.sh d   # GPU tests (the fused kernel's in full, the expand by rows, overlapped steps, now with
#                             #   the engine thread's counters); saturate.yaml at 130 req/s over 30 adapters and
#                             #   scripts/served_vs_step.py: does the host or the device set the serving pace?
#   scripts/h200_run10.sh e   # saturate.yaml at 130 req/s over its 30 rank-8 adapters with the engine's default
#                             #   rank-64 slots against rank-16 slots (max_lora_rank=16), in both orders
#   scripts/h200_run10.sh f   # the LoRA tax at saturation with the engine's defaults (slots sized from the
#                             #   adapters since call e): saturate.yaml at 130 req/s, every request to the base
#                             #   against its 30 rank-8 adapters, twice in alternation (run 10 gave each 110 s,
#                             #   which stopped the first, cold, run: 150 s here)
# Wheels: .whl/ from scripts/gather_wheels.sh (carried as an ignored path). Results: $OUT/<call>.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
res=/tmp/r10
call=${1:?usage: h200_run10.sh a|b|c|d|e|f}
. scripts/gpu_call_start.sh
sat=(python3 -m harness run workloads/saturate.yaml --machine cuda --set traffic.rate=130 --set duration_s=12
     --set warmup_s=4 --set loadgen.drain_timeout_s=20 --runs-dir "$res/runs" --no-progress)
case "$call" in
a)
  timeout 260 "${prof[@]}" --fused-lora auto,segments --batches 1,64,256 --adapters 0,1,64,256 \
      --out "$res/runs/profile.json" > "$res/logs/a-profile.log" 2>&1
  grep -E "^decode|pipelined|^\|" "$res/logs/a-profile.log" | tail -50
  timeout 150 python3 scripts/step_breakdown.py --points 64x64,256x30,256x256,256x0+256,256x30+256 \
      --json "$res/runs/breakdown.json" > "$res/logs/a-breakdown.log" 2>&1; grep -v USDT "$res/logs/a-breakdown.log" | tail -40 ;;
b)
  cases=decode-256x30,decode-256x64-r16-qkv,mixed-512x30
  for when in before after; do
    if [ $when = after ]; then
      timeout 200 python3 -m kernels.tune --ops shrink,expand --only $cases,decode-256x256 --budget-s 120 --jobs 16 \
          > "$res/logs/b-tune.log" 2>&1; head -1 "$res/logs/b-tune.log"; grep -E "^(shrink|expand) \[" "$res/logs/b-tune.log"
      cp kernels/configs/nvidia-h200.json "$res/runs/nvidia-h200.json"
    fi
    timeout 60 python3 -m kernels.bench --only $cases --out "$res/runs/kernels-$when.json" > "$res/logs/b-bench-$when.log" 2>&1
    grep -E "^\|" "$res/logs/b-bench-$when.log" | cut -c1-200 | head -8
    timeout 70 python3 scripts/step_breakdown.py --points 256x30,256x30+256 --json "$res/runs/breakdown-$when.json" \
        > "$res/logs/b-breakdown-$when.log" 2>&1; grep -v USDT "$res/logs/b-breakdown-$when.log" | grep "lora\|all"
  done
  timeout -s INT 100 "${sat[@]}" --engine multilora > "$res/logs/b-saturate.log" 2>&1
  grep -E "^(engine|-|multilora)|TTFT|TPOT|invalid|rror" "$res/logs/b-saturate.log" | head -10 ;;
c)
  cp kernels/configs/nvidia-h200.json "$res/new.json"
  tune=(python3 -m kernels.tune --budget-s 60 --jobs 16 --out "$res/new.json")
  timeout 120 "${tune[@]}" --ops expand --only decode-256x30-r16-qkv,decode-256x64-r16-qkv > "$res/logs/c-tune1.log" 2>&1
  timeout 150 "${tune[@]}" --ops shrink,expand --only mixed-768x30 > "$res/logs/c-tune2.log" 2>&1
  grep -hE "^compiled|^(shrink|expand) \[" "$res/logs/c-tune1.log" "$res/logs/c-tune2.log"; cp "$res/new.json" "$res/runs/nvidia-h200.json"
  cp "${OLD_CONFIG:-old-h200.json}" "$res/old.json"  # run 9's file (git show 10673a5:kernels/configs/nvidia-h200.json)
  for f in old new; do
    cp "$res/$f.json" kernels/configs/nvidia-h200.json
    [ $f = new ] && { timeout 90 python3 scripts/step_breakdown.py --points 256x30,256x30+256,256x30+512 \
        --json "$res/runs/breakdown.json" > "$res/logs/c-breakdown.log" 2>&1; grep -v USDT "$res/logs/c-breakdown.log" | grep "lora\|all"; }
    timeout -s INT 100 "${sat[@]}" --set name=saturate-$f --engine multilora > "$res/logs/c-saturate-$f.log" 2>&1
    grep -E "^multilora|invalid|rror" "$res/logs/c-saturate-$f.log" | head -3
  done
  grep -h served_tok_s "$res"/runs/*saturate-*results.json | head ;;
d)
  timeout 300 python3 -m pytest -q -p no:randomly --tb=short tests/test_kernels_fused.py tests/test_kernels_expand_rows.py \
      tests/test_kernels_lora.py tests/test_kernels_meta.py tests/test_engine_expand_rows.py tests/test_engine_overlap.py \
      tests/test_engine_lora_fold.py -k "gpu or kernels or expand_rows" > "$res/logs/d-tests.log" 2>&1
  grep -v "^  /\|Warning\|warn" "$res/logs/d-tests.log" | tail -8
  timeout -s INT 100 "${sat[@]}" --engine multilora > "$res/logs/d-saturate.log" 2>&1; grep -E "^multilora|invalid|rror" "$res/logs/d-saturate.log" | head -3
  d=$(ls -d "$res"/runs/*-saturate-multilora | tail -1)
  python3 scripts/served_vs_step.py "$d" docs/results/h200/run8/profile-mixed.json --json "$res/runs/served-vs-step.json" ;;
e)
  r64='{"name":"multilora","label":"r64"}'
  r16='{"name":"multilora","label":"r16","options":{"max_lora_rank":16}}'
  timeout -s INT 250 "${sat[@]}" --engine "$r64" --engine "$r16" --engine "${r16/r16\"/r16b\"}" --engine "${r64/r64\"/r64b\"}" \
      > "$res/logs/e-saturate.log" 2>&1; grep -E "^r(64|16)|invalid|rror" "$res/logs/e-saturate.log" | head -8
  grep -h served_tok_s "$res"/runs/*results.json | tail -4 ;;
f)
  sat+=(--engine multilora)
  for i in 1 2; do
    timeout -s INT 150 "${sat[@]}" --set name=tax-base$i --set adapters.count=0 --set traffic.base_fraction=1.0 \
        > "$res/logs/f-base$i.log" 2>&1; grep -E "^multilora|invalid|rror" "$res/logs/f-base$i.log" | head -2
    timeout -s INT 150 "${sat[@]}" --set name=tax-lora$i > "$res/logs/f-lora$i.log" 2>&1
    grep -E "^multilora|invalid|rror" "$res/logs/f-lora$i.log" | head -2
  done
  grep -h served_tok_s "$res"/runs/*tax-*results.json ;;
*) echo "unknown call $call (a b c d e f)" >&2; exit 2 ;;
esac
. scripts/gpu_call_pack.sh
