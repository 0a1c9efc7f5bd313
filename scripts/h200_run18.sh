#!/usr/bin/env bash
# GPU work on one H200 (issue 15), prepared after run 17 and run as run 18 (docs/performance.md, results in
# docs/results/h200/run18/); one device call (under 10 minutes) per letter:
#   scripts/h200_run18.sh t   # GPU tests of what changed after run 17's last call (one-token steps back on the fold,
#                             #   the joint kernels' shared slot helper): the joint path, fused ops, PDL, graph capture
#   scripts/h200_run18.sh p   # the joint rule at small steps: profile auto,nojoint at batches 1, 2, 4, 8, 16, 64 over 0,
#                             #   1 and 64 adapters (3 rounds), where run 17 measured only 1, 16 and 64
#   scripts/h200_run18.sh s   # workloads/saturate.yaml at 130 req/s over its 30 adapters with the joint path on, then the
#                             #   decode and mixed steps at its context and scripts/served_vs_step.py (carry .whl)
# Results: $OUT/<call>.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
res=/tmp/r18
call=${1:?usage: h200_run18.sh t|p|s}
. scripts/gpu_call_start.sh
case "$call" in
t)
  timeout 450 python3 -m pytest -q -p no:randomly -rxXs --tb=short tests/test_engine_lora_joint.py \
      tests/test_engine_fused_ops.py tests/test_kernels_pdl.py tests/test_engine_graph_capture.py \
      > "$res/logs/t-tests.log" 2>&1
  grep -v "^  /\|Warning\|warn" "$res/logs/t-tests.log" | tail -6 ;;
p)
  timeout 400 "${prof[@]}" --rounds 3 --batches 1,2,4,8,16,64 --adapters 0,1,64 --fused-lora auto,nojoint \
      --out "$res/runs/profile-p.json" > "$res/logs/p-profile.log" 2>&1
  decode_brief "$res/logs/p-profile.log" ;;
s)
  . scripts/gpu_saturate.sh ;;
*) echo "unknown call $call (t p s)" >&2; exit 2 ;;
esac
. scripts/gpu_call_pack.sh
