#!/usr/bin/env bash
# Run 17 (session 16) on one H200 (issue 15); one device call (under 10 minutes) per letter:
#   scripts/h200_run17.sh a   # the joint path (engine extra lora_joint: the q,k,v and o LoRA shrink as extra rows of the
#                             #   base matmul, the expand in the RoPE + cache and add + RMSNorm kernels): its GPU tests
#                             #   and the fused ops', then profiles with each point on both paths in turn (auto,joint
#                             #   then joint,auto) at batches 1, 16, 64, 96 over 0, 1, 64 adapters
#   scripts/h200_run17.sh b   # after a (joint slower everywhere but 96 x 64: 64 x 64 6.80 against 6.53 ms; its add + RMSNorm
#                             #   kernel ran one program a row): the joint add + RMSNorm in row x 512-column programs, the
#                             #   row's last normalizing; its GPU tests; scripts/step_breakdown.py by kernel name at 1x1,
#                             #   64x0, 64x64 with and without the joint path; profile auto,joint at batches 1, 64, 96
#   scripts/h200_run17.sh c   # after b (joint level at 64 x 64, ahead at 96 tokens) and scripts/joint_ops_probe.py (RoPE +
#                             #   cache with 2 warps, add + RMSNorm 512 columns a program): profile auto,joint at batches
#                             #   1, 16, 64, 96 over 0, 1, 64 adapters; step_breakdown --joint at 1x1, 64x64
#   scripts/h200_run17.sh d   # after c (joint ahead at 16-96 tokens, level at 1; made the CUDA default): the issue's table
#                             #   (batches 1, 64, 256 over 0, 1, 64, 256 adapters, 3 rounds), then the engine's GPU tests
#                             #   under the new default (joint, graphs, mixed and overlapped steps, expand by rows, fold)
#   scripts/h200_run17.sh e   # the joint path past 96 tokens (the rule counting a span as span x tokens / 160 slots past
#                             #   160 tokens): profile auto,joint512 at batches 128, 256 over 0, 1, 64, 256 adapters
#   scripts/h200_run17.sh f   # after e (joint ahead at 128 and 256 over 64, behind at 256 over 256): the rule up to 256
#                             #   tokens with at most 128 counted slots, the new default; profile auto,nojoint at batches
#                             #   1, 64, 128, 256 over 0, 1, 64, 256 adapters (2 rounds): the issue's table and the A/B
# (scripts/ext_gemm_probe.py ran first, and scripts/joint_ops_probe.py between b and c, each in a call of its own.)
# Results: $OUT/<call>.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
res=/tmp/r17
call=${1:?usage: h200_run17.sh a|b|c|d|e|f}
. scripts/gpu_call_start.sh
case "$call" in
a)
  timeout 150 python3 -m pytest -q -p no:randomly --tb=short tests/test_engine_lora_joint.py tests/test_engine_fused_ops.py \
      tests/test_engine_expand_rows.py > "$res/logs/a-tests.log" 2>&1
  tail -3 "$res/logs/a-tests.log"
  for order in auto,joint joint,auto; do
    timeout 170 "${prof[@]}" --rounds 3 --batches 1,16,64,96 --adapters 0,1,64 --fused-lora $order \
        --out "$res/runs/profile-a-$order.json" > "$res/logs/a-profile-$order.log" 2>&1
    echo "$order:"; decode_brief "$res/logs/a-profile-$order.log"
  done ;;
b)
  timeout 100 python3 -m pytest -q -p no:randomly --tb=short tests/test_engine_lora_joint.py tests/test_engine_fused_ops.py \
      > "$res/logs/b-tests.log" 2>&1
  tail -3 "$res/logs/b-tests.log"
  for way in "" --joint; do
    timeout 120 python3 scripts/step_breakdown.py --points 1x1,64x0,64x64 --steps 10 --names 14 $way \
        --slots 64 --json "$res/runs/breakdown${way:+-joint}.json" > "$res/logs/b-breakdown${way:+-joint}.log" 2>&1
    grep -vE "^\[|Warning|warn" "$res/logs/b-breakdown${way:+-joint}.log" | tail -60 | cut -c1-130
  done
  timeout 170 "${prof[@]}" --rounds 3 --batches 1,64,96 --adapters 0,1,64 --fused-lora auto,joint \
      --out "$res/runs/profile-b.json" > "$res/logs/b-profile.log" 2>&1
  decode_brief "$res/logs/b-profile.log" ;;
c)
  timeout 200 "${prof[@]}" --rounds 3 --batches 1,16,64,96 --adapters 0,1,64 --fused-lora auto,joint \
      --out "$res/runs/profile-c.json" > "$res/logs/c-profile.log" 2>&1
  decode_brief "$res/logs/c-profile.log"
  timeout 100 python3 scripts/step_breakdown.py --points 1x1,64x64 --steps 10 --names 10 --joint --slots 64 \
      --json "$res/runs/breakdown-c-joint.json" > "$res/logs/c-breakdown-joint.log" 2>&1
  grep -vE "^\[|Warning|warn" "$res/logs/c-breakdown-joint.log" | tail -32 | cut -c1-110 ;;
d)
  t0=$(date +%s)
  timeout 250 "${prof[@]}" --rounds 3 --batches 1,64,256 --adapters 0,1,64,256 \
      --out "$res/runs/profile-d.json" > "$res/logs/d-profile.log" 2>&1
  decode_brief "$res/logs/d-profile.log"; echo "profile: $(( $(date +%s) - t0 )) s"
  grep -E "graphs|captur" "$res/logs/d-profile.log" | head -3
  timeout 270 python3 -m pytest -q -p no:randomly -rxXs --tb=short tests/test_engine_lora_joint.py \
      tests/test_engine_expand_rows.py tests/test_engine_graph_capture.py tests/test_engine_mixed.py \
      tests/test_engine_overlap.py tests/test_engine_lora_fold.py > "$res/logs/d-tests.log" 2>&1
  grep -v "^  /\|Warning\|warn" "$res/logs/d-tests.log" | tail -8 ;;
e)
  timeout 300 "${prof[@]}" --rounds 2 --batches 128,256 --adapters 0,1,64,256 --fused-lora auto,joint512 \
      --out "$res/runs/profile-e.json" > "$res/logs/e-profile.log" 2>&1
  decode_brief "$res/logs/e-profile.log" ;;
f)
  timeout 330 "${prof[@]}" --rounds 2 --batches 1,64,128,256 --adapters 0,1,64,256 --fused-lora auto,nojoint \
      --out "$res/runs/profile-f.json" > "$res/logs/f-profile.log" 2>&1
  decode_brief "$res/logs/f-profile.log" ;;
*) echo "unknown call $call (a|b|c|d|e|f)" >&2; exit 2 ;;
esac
. scripts/gpu_call_pack.sh
