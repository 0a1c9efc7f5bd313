#!/usr/bin/env bash
# This project's own performance gate (called by .ci/run): run workloads/ci-gate.yaml on the CPU with the
# multilora and merged engines, then gate the multilora/merged output-tokens/s ratio against
# baselines/ci-cpu.json. The ratio, not absolute tokens/s, because a shared CI box makes absolute speed noise.
#   scripts/ci_gate.sh            gate; exit 0 pass, 1 regression, 2 unusable input
#   scripts/ci_gate.sh --update   re-make baselines/ci-cpu.json with this machine (commit it)
# Environment: CI_GATE_OUT (folder for runs and gate.md, default: a fresh temporary folder),
#              CI_GATE_MAX_REGRESSION (default 20%: what two runs of the same code on a shared CPU stay within).
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
if [ -e "$runs" ] && [ -n "$(ls -A "$runs" 2>/dev/null)" ]; then
  echo "ci_gate.sh: $runs is not empty; point CI_GATE_OUT at a fresh folder" >&2
  exit 2
fi
metric="ratio:output_tok_s:multilora/merged"

python -m harness run workloads/ci-gate.yaml --runs-dir "$runs"

if [ "$mode" = "update" ]; then
  python -m harness baseline save "$runs" --name ci-cpu --dir baselines --force
  python -m harness baseline show ci-cpu --dir baselines
  exit 0
fi

set +e
python -m harness gate --baseline ci-cpu --baseline-dir baselines "$runs" --metric "$metric" \
  --max-regression "${CI_GATE_MAX_REGRESSION:-20%}" --markdown "$out/gate.md"
code=$?
set -e
echo "ci_gate.sh: verdict in $out/gate.md, runs in $runs (exit $code)"
exit $code
