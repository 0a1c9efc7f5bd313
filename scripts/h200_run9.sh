#!/usr/bin/env bash
# Session 8's GPU work on one H200 (issue 15), one device call (under 10 minutes) per letter:
#   scripts/h200_run9.sh a   # GPU tests of the kernels, the step metadata (now one host-to-device copy a step)
#                            #   and overlapped steps under sync debug; adapters per GPU at a saturating rate:
#                            #   RATE=100 FLEET_COUNTS="0 30 1000 5000" WINDOW_S=15 scripts/gpu_results.sh fleet
# Wheels: .whl/ from scripts/gather_wheels.sh (carried as an ignored path). Results: $OUT/<call>.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
res=/tmp/r9
mkdir -p "$res/runs" "$res/logs"
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
call=${1:?usage: h200_run9.sh a}
echo "== $call $(date -u +%T)"
touch "$res/.start-$call"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import locust" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target /tmp/site .whl/*.whl > "$res/logs/install.log" 2>&1 || tail -5 "$res/logs/install.log"
case "$call" in
a)
  timeout 150 python3 -m pytest -q -p no:randomly --tb=short tests/test_kernels_meta.py tests/test_kernels_lora.py \
      tests/test_kernels_expand_rows.py tests/test_kernels_fused.py tests/test_engine_expand_rows.py \
      tests/test_engine_lora_fold.py tests/test_engine_overlap.py -k "gpu or kernels" > "$res/logs/a-tests.log" 2>&1
  grep -v "^  /\|Warning\|warn" "$res/logs/a-tests.log" | tail -8
  RATE=100 FLEET_COUNTS="0 30 1000 5000" WINDOW_S=15 timeout -s INT 400 bash scripts/gpu_results.sh fleet \
      > "$res/logs/a-fleet.log" 2>&1; grep -v "^  /\|Warning\|warn" "$res/logs/a-fleet.log" | tail -30 ;;
*) echo "unknown call $call (a)" >&2; exit 2 ;;
esac
. scripts/gpu_call_pack.sh
