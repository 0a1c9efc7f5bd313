#!/usr/bin/env bash
# Where does a serving process spend its time under load? Starts an engine server, drives it with a workload
# through `harness run` (attached by URL) and samples the server with py-spy (carried as a wheel in .whl/).
# Usage: scripts/profile_server.sh [ENGINE] [WORKLOAD] [RATE]   (writes profile-*.txt and the run to $OUT or runs/)
set -uo pipefail
cd "$(dirname "$0")/.."
engine=${1:-multilora}; workload=${2:-workloads/bursty30.yaml}; rate=${3:-16}
out=${OUT:-runs/profile}; mkdir -p "$out"
if [ -d .whl ] && ! python3 -c "import locust" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH || exit 1
fi
export PYTHONUNBUFFERED=1
model=$(python3 -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['model'])" "$workload")
adapters=$(python3 - "$workload" <<'PY'
import sys
from harness.spec import load_workload
from harness.runner import prepare_adapters
spec = load_workload(sys.argv[1]).for_machine(True)
print(prepare_adapters(spec, lambda m: print(m, file=sys.stderr)) or "")
PY
)
port=18124
python3 -m engines.server --engine "$engine" --model "$model" ${adapters:+--adapters "$adapters"} --port $port \
  > "$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for i in $(seq 600); do grep -q READY "$out/server.log" && break; kill -0 $server || break; sleep 1; done
grep READY "$out/server.log" || { tail -30 "$out/server.log"; exit 1; }
python3 -m harness run "$workload" --engine '{"name": "'"$engine"'", "kind": "external", "url": "http://127.0.0.1:'$port'"}' \
  --set traffic.rate="$rate" --set duration_s=30 --set warmup_s=5 --set loadgen.drain_timeout_s=10 --no-progress \
  --runs-dir runs/profile > "$out/run.log" 2>&1 &
load=$!
sleep 15
py-spy record -p $server -d 15 -r 100 --threads --nonblocking --format raw -o "$out/profile-$engine.txt" 2>&1 | tail -2
wait $load; tail -8 "$out/run.log"
python3 - "$out/profile-$engine.txt" <<'PY'
import collections, sys
own, incl, total = collections.Counter(), collections.Counter(), 0
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip().rpartition(" ")
    frames, n = stack.split(";"), int(n)
    total += n
    own[(frames[0], frames[-1])] += n
    for f in set(frames):
        incl[(frames[0], f)] += n
print(f"{total} samples; top self time (thread, frame):")
for (t, f), n in own.most_common(25):
    print(f"{100 * n / total:5.1f}%  {t[:30]:30s} {f[:110]}")
print("top inclusive:")
for (t, f), n in incl.most_common(40):
    print(f"{100 * n / total:5.1f}%  {t[:30]:30s} {f[:110]}")
PY
