#!/usr/bin/env bash
# Session 8's GPU work on one H200 (issue 15), one device call (under 10 minutes) per letter:
#   scripts/h200_run9.sh a   # GPU tests of the kernels, the step metadata (now one host-to-device copy a step)
#                            #   and overlapped steps under sync debug; adapters per GPU at a saturating rate:
#                            #   RATE=100 FLEET_COUNTS="0 30 1000 5000" WINDOW_S=15 scripts/gpu_results.sh fleet
#   scripts/h200_run9.sh b   # the per-step choice of the expand (lora_expand_rows=auto): its GPU tests; kernels.bench
#                            #   at 1, 2, 4 and 8.5 tokens an adapter (where by rows stops paying); saturate.yaml at
#                            #   130 req/s over 30 adapters, by segments vs auto; the LoRA tax at saturation:
#                            #   RATE=130 WINDOW_S=12 scripts/gpu_results.sh tax
#   scripts/h200_run9.sh c   # saturate.yaml at 130 req/s over 1,000 rank-8 q,v adapters, by segments vs auto and
#                            #   the other order
#   scripts/h200_run9.sh d   # the same over 1,000 adapters with 256 device slots and up to 256 adapters a step
#                            #   (c ran the default 64, which held the decode batch near 90)
# Wheels: .whl/ from scripts/gather_wheels.sh (carried as an ignored path). Results: $OUT/<call>.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
res=/tmp/r9
call=${1:?usage: h200_run9.sh a|b|c|d}
. scripts/gpu_call_start.sh
case "$call" in
a)
  timeout 150 python3 -m pytest -q -p no:randomly --tb=short tests/test_kernels_meta.py tests/test_kernels_lora.py \
      tests/test_kernels_expand_rows.py tests/test_kernels_fused.py tests/test_engine_expand_rows.py \
      tests/test_engine_lora_fold.py tests/test_engine_overlap.py -k "gpu or kernels" > "$res/logs/a-tests.log" 2>&1
  grep -v "^  /\|Warning\|warn" "$res/logs/a-tests.log" | tail -8
  RATE=100 FLEET_COUNTS="0 30 1000 5000" WINDOW_S=15 timeout -s INT 400 bash scripts/gpu_results.sh fleet \
      > "$res/logs/a-fleet.log" 2>&1; grep -v "^  /\|Warning\|warn" "$res/logs/a-fleet.log" | tail -30 ;;
b|c|d)
  sat=(python3 -m harness run workloads/saturate.yaml --machine cuda --set traffic.rate=${SAT_RATE:-130} --set duration_s=12
       --set warmup_s=4 --set loadgen.drain_timeout_s=20 --runs-dir "$res/runs" --no-progress)
  seg='{"name":"multilora","label":"segments","options":{"extra":{"lora_expand_rows":0}}}'
  auto='{"name":"multilora","label":"auto","options":{"extra":{"lora_expand_rows":"auto"}}}'
  if [ "$call" = b ]; then
    timeout 90 python3 -m pytest -q -p no:randomly --tb=short tests/test_engine_expand_rows.py tests/test_kernels_meta.py \
        tests/test_engine_overlap.py tests/test_engine_lora_fold.py -k "gpu or meta or expand_rows" \
        > "$res/logs/b-tests.log" 2>&1; grep -v "^  /\|Warning\|warn" "$res/logs/b-tests.log" | tail -6
    timeout 75 python3 -m kernels.bench --only decode-64x64-r16-qkv,decode-256x256-r16-qkv,decode-256x128-r16-qkv,decode-256x64-r16-qkv,decode-256x30-r16-qkv \
        --out "$res/runs/kernels.json" > "$res/logs/b-bench.log" 2>&1; grep -E "^\|" "$res/logs/b-bench.log" | head -7
    timeout -s INT 210 "${sat[@]}" --engine "$seg" --engine "$auto" > "$res/logs/b-saturate.log" 2>&1
    grep -E "^(engine|-|segments|auto)|TTFT|TPOT|invalid" "$res/logs/b-saturate.log" | head -14
    RATE=${SAT_RATE:-130} WINDOW_S=12 timeout -s INT 190 bash scripts/gpu_results.sh tax > "$res/logs/b-tax.log" 2>&1
    grep -v "^  /\|Warning\|warn" "$res/logs/b-tax.log" | tail -14
  elif [ "$call" = d ]; then
    slots='"gpu_slots":256,"max_loras":256'
    seg='{"name":"multilora","label":"segments256","options":{'$slots',"extra":{"lora_expand_rows":0}}}'
    auto='{"name":"multilora","label":"auto256","options":{'$slots',"extra":{"lora_expand_rows":"auto"}}}'
    timeout -s INT 270 "${sat[@]}" --set adapters.count=1000 --set 'adapters.targets=[q_proj, v_proj]' \
        --set name=saturate1000 --engine "$seg" --engine "$auto" > "$res/logs/d-saturate.log" 2>&1
    grep -E "^(engine|-|segments|auto)|TTFT|TPOT|invalid|rror" "$res/logs/d-saturate.log" | head -14
  else
    many=(--set adapters.count=1000 --set 'adapters.targets=[q_proj, v_proj]' --set name=saturate1000)
    timeout -s INT 280 "${sat[@]}" "${many[@]}" --engine "$seg" --engine "$auto" > "$res/logs/c-saturate.log" 2>&1
    grep -E "^(engine|-|segments|auto)|TTFT|TPOT|invalid" "$res/logs/c-saturate.log" | head -14
    timeout -s INT 220 "${sat[@]}" "${many[@]}" --engine "$auto" --engine "$seg" > "$res/logs/c-saturate2.log" 2>&1
    grep -E "^(engine|-|segments|auto)|TTFT|TPOT|invalid" "$res/logs/c-saturate2.log" | head -14
  fi ;;
*) echo "unknown call $call (a b c d)" >&2; exit 2 ;;
esac
. scripts/gpu_call_pack.sh
