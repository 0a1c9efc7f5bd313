#!/usr/bin/env bash
# The end-to-end GPU results of docs/performance.md, run exactly as a user would (harness run / serve / sweep).
# Usage (on a CUDA machine, from the repo root, after scripts/gather_wheels.sh has filled .whl/ elsewhere):
#   scripts/gpu_results.sh bursty   # bursty30 with multilora, merged and peft
#   scripts/gpu_results.sh bursty1000 # the same over 1,000 adapters
#   scripts/gpu_results.sh capacity # capacity curve: harness sweep of bursty30 over rate at 30 and 1,000 adapters
#   scripts/gpu_results.sh dedicated # λ*(1) of multilora and merged (the planner's dedicated deployments; ENGINES_DEDICATED: a subset)
#   scripts/gpu_results.sh tax      # LoRA tax: saturating traffic with no adapter vs bursty30's 30 adapters
#   scripts/gpu_results.sh fleet    # adapters per GPU: saturating traffic over 0, 1, 30, 100, 1,000, 5,000 adapters
# Run directories land in runs/gpu/<phase>/; with $OUT set (the device tool), a tarball of them is written there.
set -uo pipefail
cd "$(dirname "$0")/.."
phase=${1:?usage: scripts/gpu_results.sh bursty|bursty1000|capacity|dedicated|tax|fleet}
if [ -d .whl ] && ! python3 -c "import locust" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONUNBUFFERED=1
model=${MODEL:-llama3-8b}  # MODEL=tiny FLEET_MAX=40 FLEET_COUNTS="0 30 40" WINDOW_S=5: a dry run on a CPU
runs=runs/gpu/$phase
mkdir -p "$runs"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$runs/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$runs/gpu.txt"
engines=(); for e in ${ENGINES:-}; do engines+=(--engine "$e"); done  # ENGINES="multilora merged": a subset
short=(--set duration_s=${WINDOW_S:-40} --set warmup_s=5 --set loadgen.drain_timeout_s=15 --no-progress)
[ -n "${RATE:-}" ] && short+=(--set traffic.rate=$RATE)  # RATE: the offered req/s of every phase (e.g. 100: fleet and tax above saturate.yaml's 64)

# serve DIR CONFIG [ENGINE]: one engines.server (default multilora) over the adapter folders in DIR, in the
# background; sets $ext to the --engine JSON that points harness at it.
serve() {
  local port=18123 engine=${3:-multilora}
  python3 -m engines.server --engine $engine --model $model --adapters "$1" --port $port \
      --engine-config "$2" > "$runs/server-$engine.log" 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
  local t0=$SECONDS
  for i in $(seq 900); do grep -q READY "$runs/server-$engine.log" && break; kill -0 $server || break; sleep 1; done
  grep READY "$runs/server-$engine.log" || { tail -30 "$runs/server-$engine.log"; exit 1; }
  echo "$engine server ready in $((SECONDS - t0)) s" | tee -a "$runs/gpu.txt"
  ext='{"name": "'$engine'", "kind": "external", "url": "http://127.0.0.1:'$port'"}'
}
stop_server() { kill $server 2>/dev/null; wait $server 2>/dev/null; }
# synth N RANKS TARGETS DIR: the synthetic adapters (kept when already there)
synth() {
  python3 -m harness adapters make --base $model --count "$1" --ranks "$2" --targets "$3" --jobs 16 \
      --summary-json "$runs/adapters-$1.json" "$4" 2>&1 | grep -v "adapters:" | tail -4
}
qkvo=q_proj,k_proj,v_proj,o_proj

case "$phase" in
bursty)
  # bursty30 as shipped, at twice its rate (16 req/s offered), three engines.
  timeout -s INT "${BUDGET_S:-540}" python3 -m harness run workloads/bursty30.yaml --set traffic.rate=16 "${engines[@]}" "${short[@]}" --runs-dir "$runs" 2>&1 | tee "$runs/run.log"
  ;;
bursty1000)
  # bursty30's traffic at 16 req/s over 1,000 adapters: where the merged baseline must swap copies often
  timeout -s INT "${BUDGET_S:-540}" python3 -m harness run workloads/bursty30.yaml --set traffic.rate=16 --set adapters.count=1000 \
      --set name=bursty1000 "${engines[@]}" "${short[@]}" --runs-dir "$runs" 2>&1 | tee "$runs/run.log"
  ;;
capacity)
  # λ*(N): the largest rate at which bursty30 (its own adapters: ranks 8/16 on q,k,v,o) meets its SLOs
  rm -rf .cache/gpu-fleet-qv  # the fleet phase's 34 GB, if this machine ran it
  adapters=.cache/gpu-bursty-adapters
  synth 1000 8,16 $qkvo "$adapters"
  serve "$adapters" '{"gpu_slots": 128, "max_loras": 128, "max_lora_rank": 16}'
  timeout -s INT "${SWEEP_BUDGET_S:-420}" python3 -m harness sweep workloads/bursty30.yaml --over rate --engines "$ext" \
      --adapters ${SWEEP_ADAPTERS:-30,1000} --max-runs ${SWEEP_RUNS:-5} --resolution 0.3 --duration ${WINDOW_S:-15} \
      --out "$runs/sweep" 2>&1 | tail -14
  ;;
dedicated)
  # λ*(1) of the shared server and of the merged baseline (one adapter per deployment): the planner's
  # dedicated side; plan with --sweep of this and the capacity phase's sweep together
  adapters=.cache/gpu-bursty-adapters
  synth 30 8,16 $qkvo "$adapters"
  for engine in ${ENGINES_DEDICATED:-multilora merged}; do
    cfg='{"gpu_slots": 128, "max_loras": 128, "max_lora_rank": 16}'
    [ $engine = merged ] && cfg='{"max_lora_rank": 16, "merged_copies": 1}'
    serve "$adapters" "$cfg" $engine
    timeout -s INT "${SWEEP_BUDGET_S:-200}" python3 -m harness sweep workloads/bursty30.yaml --over rate --engines "$ext" \
        --adapters 1 --max-runs ${SWEEP_RUNS:-5} --resolution 0.3 --duration ${WINDOW_S:-15} \
        --out "$runs/sweep-$engine" 2>&1 | tail -4
    stop_server
  done
  ;;
tax)
  # the LoRA tax: workloads/saturate.yaml (above capacity) with every request to the base vs over bursty30's adapters
  adapters=.cache/gpu-bursty-adapters
  synth 30 8,16 $qkvo "$adapters"
  serve "$adapters" '{"gpu_slots": 128, "max_loras": 128, "max_lora_rank": 16}'
  for n in 0 30; do
    base=(); [ "$n" = 0 ] && base=(--set traffic.base_fraction=1.0)  # 0 adapters: every request to the base
    python3 -m harness run workloads/saturate.yaml --engine "$ext" "${base[@]}" --set adapters.count=$n \
      --set adapters.ranks=[8,16] --set name=loratax-$n "${short[@]}" --runs-dir "$runs" 2>&1 | tail -4
  done
  ;;
fleet)
  # adapters per GPU: workloads/saturate.yaml over 0 (all to the base), 1, 30, 100, 1000 and 5000 rank-8
  # q_proj/v_proj adapters (PEFT's default targets for Llama; 5,000 on q,k,v,o would need 68 GB of disk).
  # All stay in pinned host memory (as in S-LoRA); with a smaller host_adapter_capacity the rest are read
  # from disk when a request first names them.
  rm -rf .cache/gpu-bursty-adapters  # the capacity phase's 20 GB, if this machine ran it
  adapters=.cache/gpu-fleet-qv
  synth ${FLEET_MAX:-5000} 8 q_proj,v_proj "$adapters"
  serve "$adapters" "{\"gpu_slots\": 256, \"max_loras\": 256, \"max_lora_rank\": 8, \"host_adapter_capacity\": ${HOST_CAPACITY:-5000}}"
  for n in ${FLEET_COUNTS:-0 1 30 100 1000 5000}; do
    base=(); [ "$n" = 0 ] && base=(--set traffic.base_fraction=1.0)
    python3 -m harness run workloads/saturate.yaml --engine "$ext" "${base[@]}" --set adapters.count=$n \
      --set 'adapters.targets=[q_proj, v_proj]' --set name=fleet-$n "${short[@]}" --runs-dir "$runs" 2>&1 | tail -4
  done
  ;;
*) echo "unknown phase $phase (bursty|bursty1000|capacity|dedicated|tax|fleet)" >&2; exit 2 ;;
esac
if [ -n "${OUT:-}" ]; then
  for f in $(find "$runs" -name records.jsonl); do  # records.parquet holds the same records
    [ -f "$(dirname "$f")/records.parquet" ] && rm "$f"
  done
  tar czf - "$runs" | split -b 15M -d - "$OUT/runs-$phase.tgz."  # the device tool returns files of <= 16 MiB
fi
