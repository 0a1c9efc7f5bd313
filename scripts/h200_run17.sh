#!/usr/bin/env bash
# Run 17 (session 16) on one H200 (issue 15); one device call (under 10 minutes) per letter:
#   scripts/h200_run17.sh a   # the joint path (engine extra lora_joint: the q,k,v and o LoRA shrink as extra rows of the
#                             #   base matmul, the expand in the RoPE + cache and add + RMSNorm kernels): its GPU tests
#                             #   and the fused ops', then profiles with each point on both paths in turn (auto,joint
#                             #   then joint,auto) at batches 1, 16, 64, 96 over 0, 1, 64 adapters
# (scripts/ext_gemm_probe.py ran first, in a call of its own: the extra rows' cost in the base matmul.)
# Results: $OUT/<call>.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
res=/tmp/r17
call=${1:?usage: h200_run17.sh a}
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
*) echo "unknown call $call (a)" >&2; exit 2 ;;
esac
. scripts/gpu_call_pack.sh
