#!/usr/bin/env bash
# The next GPU session's first work on one H200 (issue 15), prepared after run 18 (not yet run): run 18 found an
# illegal memory access in the GPU tests (docs/performance.md, run 18, "A fault in the GPU tests"). One device call
# (under 10 minutes) per letter:
#   scripts/h200_run19.sh f   # how often: the failing sequence (tests/test_engine_blas.py, test_engine_expand_rows.py,
#                             #   test_engine_lora_fold.py in one process), each run with a fresh Triton cache, 3 times
#                             #   as it is and 3 times with PDL off (LORA_FLEET_PDL=0)
#   scripts/h200_run19.sh c   # where: the same sequence once under compute-sanitizer (memcheck), if the machine has
#                             #   it, else with CUDA_LAUNCH_BLOCKING=1 (run 18: both blocking runs passed;
#                             #   1 of the 4 plain cold runs that began with the first two files did)
# Results: $OUT/<call>.tgz; each run's log in logs/, one line per run on stdout.
set -uo pipefail
cd "$(dirname "$0")/.."
res=/tmp/r19
call=${1:?usage: h200_run19.sh f|c}
. scripts/gpu_call_start.sh
seq=(tests/test_engine_blas.py tests/test_engine_expand_rows.py tests/test_engine_lora_fold.py)
fresh_run() {  # fresh_run NAME [ENV=VALUE ...]: the sequence in one process with a cold Triton cache; prints a line
  local name=$1; shift
  env TRITON_CACHE_DIR="$(mktemp -d)" "$@" timeout 200 python3 -m pytest -q -x -p no:randomly --tb=long "${seq[@]}" \
      > "$res/logs/$call-$name.log" 2>&1
  echo "$name rc $? $(grep -m1 -oE 'illegal memory access|[0-9]+ passed[^=]*|[0-9]+ failed' "$res/logs/$call-$name.log")"
}
case "$call" in
f)
  for i in 1 2 3; do fresh_run "default-$i"; done
  for i in 1 2 3; do fresh_run "pdl-off-$i" LORA_FLEET_PDL=0; done ;;
c)
  if command -v compute-sanitizer > /dev/null; then
    TRITON_CACHE_DIR="$(mktemp -d)" timeout 540 compute-sanitizer --tool memcheck --print-limit 20 python3 -m pytest \
        -q -x -p no:randomly --tb=short "${seq[@]}" > "$res/logs/c-memcheck.log" 2>&1
    grep -m20 -E "Invalid|at 0x|by thread|in .*kernel" "$res/logs/c-memcheck.log"
  else
    echo "no compute-sanitizer on this machine: CUDA_LAUNCH_BLOCKING=1 instead"
    fresh_run blocking CUDA_LAUNCH_BLOCKING=1
  fi ;;
*) echo "unknown call $call (f c)" >&2; exit 2 ;;
esac
. scripts/gpu_call_pack.sh
