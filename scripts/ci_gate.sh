#!/usr/bin/env bash
# This project's own performance gate (called by .ci/run): run workloads/ci-gate.yaml on the CPU with the
# multilora and merged engines, then gate the multilora/merged output-tokens/s ratio against
# baselines/ci-cpu.json. The ratio, not absolute tokens/s, because a shared CI box makes absolute speed noise.
#   scripts/ci_gate.sh            gate; exit 0 pass (or inconclusive: the verdict says so and how many runs would
#                                 decide), 1 regression (seen on two pairs of runs), 2 unusable input
#   scripts/ci_gate.sh --update   re-make baselines/ci-cpu.json on this machine from 2 run pairs (commit it)
# Environment: CI_GATE_OUT (folder for runs and gate.md, default: a fresh temporary folder),
#              CI_GATE_MAX_REGRESSION (default 25%: pairs of the same code on a shared 2-core box moved the
#              ratio's median by -7% and +3%; a 5 ms per-step delay in multilora moved it by -63% and -52%),
#              CI_GATE_REPEATS (run pairs for --update, default 2: a baseline in the middle of the noise),
#              CI_GATE_BASELINE_DIR (default baselines),
#              CI_GATE_MULTILORA (the multilora engine as `harness run --engine` takes it; to check that the gate
#              catches a slow-down, a test-only engine whose steps take 4x as long:
#              '{"name": "tests.gate_slow_engine:SlowMultiLoRA", "label": "multilora", "options": {"max_num_seqs": 8}}').
set -euo pipefail
cd "$(dirname "$0")/.."

mode="gate"
case "${1:-}" in
  "") ;;
  --update) mode="update" ;;
  *) echo "ci_gate.sh: unknown argument '$1'; use no argument to gate or --update to re-make the baseline" >&2
     exit 2 ;;
esac

out="${CI_GATE_OUT:-$(mktemp -d -t ci-gate.XXXXXX)}"
runs="$out/runs"
mkdir -p "$out"
if [ -e "$runs" ] && [ -n "$(ls -A "$runs" 2>/dev/null)" ]; then
  echo "ci_gate.sh: $runs is not empty; point CI_GATE_OUT at a fresh folder" >&2
  exit 2
fi
metric="ratio:served_tok_s:multilora/merged"  # the engines' pace when saturated (docs/loadgen.md)
baseline_dir="${CI_GATE_BASELINE_DIR:-baselines}"
max_regression="${CI_GATE_MAX_REGRESSION:-25%}"
multilora="${CI_GATE_MULTILORA:-multilora}"

# One engine after the other, one CPU thread each (OMP_NUM_THREADS=1: the load generator keeps the other core).
# Each run goes to the background so that a TERM or Ctrl-C of this script is forwarded to it as SIGINT, on
# which `harness run` stops its server and load generator and marks the run interrupted.
pid=""
stop_run() {
  if [ -n "$pid" ]; then kill -INT "$pid" 2>/dev/null || true; wait "$pid" || true; fi
  exit 130
}
trap stop_run INT TERM
set -m  # background runs in their own process groups, so that SIGINT reaches them
run_one() {  # ENGINE RUNS_DIR LOG_NAME
  OMP_NUM_THREADS=1 python -m harness run workloads/ci-gate.yaml --engine "$1" --runs-dir "$2" \
    --no-progress > "$out/$3.log" 2>&1 &
  pid=$!
  # a failed or invalid run is not a regression: the gate below reports it as unusable input (exit 2)
  wait "$pid" || echo "ci_gate.sh: the $1 run exited non-zero (log: $out/$3.log)" >&2
  pid=""
  tail -n 4 "$out/$3.log"
}
run_pair() {  # RUNS_DIR TAG
  run_one "$multilora" "$1" "multilora-$2"
  run_one merged "$1" "merged-$2"
}
gate() {  # RUNS_DIR TAG
  set +e
  python -m harness gate --baseline ci-cpu --baseline-dir "$baseline_dir" "$1" --metric "$metric" \
    --max-regression "$max_regression" --allow-inconclusive --markdown "$out/gate-$2.md" --json "$out/gate-$2.json"
  local code=$?
  set -e
  return $code
}

if [ "$mode" = "update" ]; then
  for i in $(seq "${CI_GATE_REPEATS:-2}"); do run_pair "$runs" "$i"; done
  python -m harness baseline save "$runs" --name ci-cpu --dir "$baseline_dir" --force
  python -m harness baseline show ci-cpu --dir "$baseline_dir"
  exit 0
fi

run_pair "$runs" 1
code=0
gate "$runs" 1 || code=$?
cp "$out/gate-1.md" "$out/gate.md"
if [ "$code" = 1 ]; then
  # A busy neighbour on a shared box can slow one run for seconds: a regression must show again on a fresh pair.
  echo "ci_gate.sh: regression on the first pair; confirming on a second pair"
  run_pair "$out/confirm" 2
  code=0
  gate "$out/confirm" 2 || code=$?
  { cat "$out/gate-1.md"; echo; echo "Confirmation on a second pair of runs:"; echo; cat "$out/gate-2.md"; } > "$out/gate.md"
fi
echo "ci_gate.sh: verdict in $out/gate.md (as JSON: $out/gate-*.json), runs in $out (exit $code)"
exit "$code"
