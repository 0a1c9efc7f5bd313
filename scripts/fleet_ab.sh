#!/usr/bin/env bash
# A/B of fleet layouts on this machine: for each LABEL=SERVE_ARGS, start `harness serve --replicas N` of the tiny
# model with those options, run a workload against it (an external engine named fleet<N>-LABEL), stop it.
#   scripts/fleet_ab.sh [-n ROUNDS] [-r REPLICAS] [-w WORKLOAD] [-o RUNS_DIR] LABEL=ARGS...
# e.g. scripts/fleet_ab.sh -n 2 unbatched="--stream-batch-ms 0 --ingress-replicas 1" batched=""
# Layouts alternate round by round; each run prints the machine's load average before it (other work on it
# shows there). Then: python scripts/step_pace.py RUNS_DIR/*fleet*
set -uo pipefail
cd "$(dirname "$0")/.."
rounds=1 replicas=1 workload=workloads/bursty30.yaml runs=runs/fleet-ab
while getopts "n:r:w:o:" opt; do
  case $opt in n) rounds=$OPTARG ;; r) replicas=$OPTARG ;; w) workload=$OPTARG ;; o) runs=$OPTARG ;; *) exit 2 ;; esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { echo "usage: scripts/fleet_ab.sh [-n ROUNDS] [-r REPLICAS] [-w WORKLOAD] [-o RUNS] LABEL=ARGS..." >&2; exit 2; }
adapters=$PWD/.cache/fleet-ab/adapters
mkdir -p "$runs"
[ -d "$adapters" ] || python3 -m harness adapters make --base tiny --count 30 --ranks 8,16 \
  --targets q_proj,k_proj,v_proj,o_proj "$adapters" > /dev/null
for round in $(seq "$rounds"); do
  for layout in "$@"; do
    label=${layout%%=*} args=${layout#*=}
    port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
    log="$runs/serve-$label-$round.log"
    echo "== round $round $label ($args), load $(cut -d' ' -f1-3 /proc/loadavg)"
    # shellcheck disable=SC2086
    python3 -m harness serve --replicas "$replicas" --engine multilora --model tiny --adapters "$adapters" \
      --port "$port" $args > "$log" 2>&1 &
    pid=$!
    up=0
    for _ in $(seq 300); do
      curl -sf "http://127.0.0.1:$port/health" > /dev/null && { up=1; break; }
      kill -0 $pid 2> /dev/null || break
      sleep 1
    done
    if [ $up = 1 ]; then
      python3 -m harness run "$workload" --set adapters.count=30 --set "adapters.path=$adapters" \
        --runs-dir "$runs" --no-progress \
        --engine "{\"name\": \"fleet$replicas-$label\", \"kind\": \"external\", \"url\": \"http://127.0.0.1:$port\"}" \
        | grep -E "^fleet|TTFT|TPOT|invalid" || true
    else
      echo "fleet $label did not start:"; tail -5 "$log"
    fi
    kill -TERM $pid 2> /dev/null; wait $pid 2> /dev/null
  done
done
