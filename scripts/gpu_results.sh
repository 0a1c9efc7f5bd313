#!/usr/bin/env bash
# The end-to-end GPU results of docs/performance.md, run exactly as a user would (harness run / serve / sweep).
# Usage (on a CUDA machine, from the repo root, after scripts/gather_wheels.sh has filled .whl/ elsewhere):
#   scripts/gpu_results.sh bursty   # bursty30 with multilora, merged and peft
#   scripts/gpu_results.sh fleet    # LoRA tax, adapters per GPU (1..1000), capacity sweep, on one multilora server
# Run directories land in runs/gpu/<phase>/; with $OUT set (the device tool), a tarball of them is written there.
set -uo pipefail
cd "$(dirname "$0")/.."
phase=${1:?usage: scripts/gpu_results.sh bursty|fleet}
if [ -d .whl ] && ! python3 -c "import locust" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONUNBUFFERED=1
runs=runs/gpu/$phase
mkdir -p "$runs"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$runs/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$runs/gpu.txt"
engines=(); for e in ${ENGINES:-}; do engines+=(--engine "$e"); done  # ENGINES="multilora merged": a subset
short=(--set duration_s=${WINDOW_S:-40} --set warmup_s=5 --set loadgen.drain_timeout_s=15 --no-progress)

case "$phase" in
bursty)
  # bursty30 as shipped, at twice its rate (16 req/s offered), three engines.
  timeout -s INT "${BUDGET_S:-540}" python3 -m harness run workloads/bursty30.yaml --set traffic.rate=16 "${engines[@]}" "${short[@]}" --runs-dir "$runs" 2>&1 | tee "$runs/run.log"
  ;;
fleet)
  adapters=.cache/gpu-fleet-adapters
  python3 -m harness adapters make --base llama3-8b --count 1000 --ranks 8 \
      --targets q_proj,k_proj,v_proj,o_proj "$adapters" 2>&1 | tail -5
  port=18123
  python3 -m engines.server --engine multilora --model llama3-8b --adapters "$adapters" --port $port \
      --engine-config '{"gpu_slots": 128, "max_loras": 128, "max_lora_rank": 16}' > "$runs/server.log" 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
  for i in $(seq 600); do grep -q READY "$runs/server.log" && break; kill -0 $server || break; sleep 1; done
  grep READY "$runs/server.log" || { tail -30 "$runs/server.log"; exit 1; }
  ext='{"name": "multilora", "kind": "external", "url": "http://127.0.0.1:'$port'"}'
  # LoRA tax: saturating traffic (fixed 128-token prompts and outputs, 48 req/s offered) with 0 vs 30 adapters
  for n in 0 30; do
    base=(); [ "$n" = 0 ] && base=(--set traffic.base_fraction=1.0)  # 0 adapters: every request to the base
    python3 -m harness run workloads/steady-poisson.yaml --engine "$ext" --set model=llama3-8b "${base[@]}" \
      --set adapters.count=$n --set adapters.ranks=[8] --set traffic.rate=48 \
      --set 'traffic.prompt_tokens={kind: fixed, value: 128}' --set 'traffic.output_tokens={kind: fixed, value: 128}' \
      --set name=loratax-$n "${short[@]}" --runs-dir "$runs" 2>&1 | tail -6
  done
  # adapters per GPU: bursty30's traffic at 16 req/s over 1, 30, 100, 1000 rank-8 adapters
  for n in 1 30 100 1000; do
    python3 -m harness run workloads/bursty30.yaml --engine "$ext" --set adapters.count=$n --set adapters.ranks=[8] \
      --set traffic.rate=16 --set name=fleet-$n "${short[@]}" --runs-dir "$runs" 2>&1 | tail -6
  done
  # capacity curve: the largest rate meeting bursty30's SLOs with 30 and 1000 adapters
  timeout -s INT "${SWEEP_BUDGET_S:-900}" python3 -m harness sweep workloads/bursty30.yaml --over rate --engines "$ext" --adapters ${SWEEP_ADAPTERS:-30,1000} \
      --max-runs 3 --resolution 0.25 --duration ${WINDOW_S:-20} --out "$runs/sweep" 2>&1 | tail -12
  ;;
*) echo "unknown phase $phase (bursty|fleet)" >&2; exit 2 ;;
esac
if [ -n "${OUT:-}" ]; then
  find "$runs" -name records.jsonl -size +8M -delete
  tar czf "$OUT/runs-$phase.tgz" "$runs"
fi
