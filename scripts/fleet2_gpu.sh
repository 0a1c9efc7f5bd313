#!/usr/bin/env bash
# Issue 16's two-GPU validation (docs/fleet.md, "Validation (c)") on a machine with two GPUs, in phases so that
# each call of a remote-GPU tool stays short:
#   scripts/fleet2_gpu.sh [install] [adapters] [single] [fleet] [pack]
# install   pip-installs the wheels found in .whl*/ (scripts/gather_wheels.sh, --fleet for Ray) into /tmp/site;
#           a wheel split into NAME.whl.part-* files (to fit a 64 MiB transfer) is joined first
# adapters  1,000 llama3-8b-shaped rank-8/16 adapters on q,k,v,o in .cache/fleet2/adapters
# single    one replica (the run the simulator is fitted from): bursty30 over 1,000 adapters at 16 req/s, GPU 0
# fleet     `harness serve --replicas 2` with affinity, then round-robin routing, at 32 req/s
# pack      tars each run folder into $OUT (or runs/fleet2-out)
# Environment: FLEET2_DURATION (default 60 s measured after 10 s of warm-up), FLEET2_RUNS (runs folder),
# FLEET2_SERVE_ARGS (more `harness serve` options, e.g. "--stream-batch-ms 0" for the unbatched relay).
set -euo pipefail
cd "$(dirname "$0")/.."
site=/tmp/site
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}" PATH="$site/bin:$PATH" PYTHONUNBUFFERED=1
runs="${FLEET2_RUNS:-$PWD/.cache/fleet2/runs}"
adapters="$PWD/.cache/fleet2/adapters"
out="${OUT:-runs/fleet2-out}"
dur="${FLEET2_DURATION:-60}"
common=(--set adapters.count=1000 --set "adapters.path=$adapters" --set "duration_s=$dur" --set warmup_s=10
        --set loadgen.drain_timeout_s=60 --runs-dir "$runs" --no-progress)
harness() { python3 -m harness.cli "$@"; }

for phase in "$@"; do
  echo "== $phase $(date -u +%H:%M:%S)"
  case "$phase" in
    install)
      # parts are kept in /tmp/parts: a later call may carry the next part while this folder is gone
      mkdir -p /tmp/joined /tmp/parts
      cp .whl*/*.whl.part-* /tmp/parts/ 2>/dev/null || true
      for first in /tmp/parts/*.whl.part-aa; do
        [ -e "$first" ] || continue
        name=$(basename "${first%.part-aa}")
        cat /tmp/parts/"$name".part-* > "/tmp/joined/$name"
        if python3 -c "import sys, zipfile; sys.exit(zipfile.ZipFile(sys.argv[1]).testzip() is not None)" \
            "/tmp/joined/$name" 2>/dev/null; then
          echo "joined $name ($(du -h "/tmp/joined/$name" | cut -f1))"
        else
          echo "$name: parts incomplete so far, not installed"; rm -f "/tmp/joined/$name"
        fi
      done
      shopt -s nullglob
      wheels=(.whl*/*.whl /tmp/joined/*.whl)
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${wheels[@]}"
      python3 -c "import locust; print('locust', locust.__version__)"
      python3 -c "import ray; from ray import serve; print('ray', ray.__version__)" || echo "ray: not installed (yet)"
      ;;
    adapters)
      [ -d "$adapters" ] && [ "$(ls "$adapters" | wc -l)" -ge 1000 ] && { echo "adapters exist"; continue; }
      harness adapters make --base llama3-8b --count 1000 --ranks 8,16 --targets q_proj,k_proj,v_proj,o_proj \
        --jobs 16 "$adapters" | tail -2
      du -sh "$adapters"
      ;;
    single)
      CUDA_VISIBLE_DEVICES=0 harness run workloads/bursty30.yaml --engine multilora --set traffic.rate=16 \
        "${common[@]}" || echo "single: exit $?"
      ;;
    fleet)
      for routing in affinity round_robin; do
        port=$([ "$routing" = affinity ] && echo 8001 || echo 8002)  # Ray's proxy may hold a port after it stops
        log="$runs/serve-$routing.log"
        mkdir -p "$runs"
        # python itself in the background, not the harness() function: $! is then a subshell, which (a background
        # job of a script) ignores SIGINT, so the fleet never heard its stop (H200 pair, 2026-11-30: held to the limit)
        python3 -m harness.cli serve --replicas 2 --routing "$routing" --engine multilora --model llama3-8b \
          --adapters "$adapters" --max-adapters-per-replica 64 --port $port ${FLEET2_SERVE_ARGS:-} > "$log" 2>&1 &
        pid=$!
        up=0
        for _ in $(seq 600); do
          curl -sf http://127.0.0.1:$port/health >/dev/null && { up=1; break; }
          kill -0 $pid 2>/dev/null || break
          sleep 1
        done
        [ "$up" = 1 ] || { echo "fleet $routing did not start:"; tail -30 "$log"; kill $pid 2>/dev/null; continue; }
        harness run workloads/bursty30.yaml --set traffic.rate=32 "${common[@]}" \
          --engine "{\"name\": \"fleet-$routing\", \"kind\": \"external\", \"url\": \"http://127.0.0.1:$port\"}" \
          || echo "fleet $routing: exit $?"
        kill -TERM $pid 2>/dev/null || true  # serve stops Serve (bounded), then Ray, on SIGINT or SIGTERM
        wait $pid || true
        tail -5 "$log"
      done
      ;;
    pack)
      mkdir -p "$out"
      for d in "$runs"/*/; do
        name=$(basename "$d")
        tar -czf "$out/$name.tgz" -C "$runs" "$name"
      done
      cp "$runs"/*.log "$out/" 2>/dev/null || true
      ls -la "$out"
      ;;
    *) echo "fleet2_gpu: unknown phase $phase (install adapters single fleet pack)" >&2; exit 2 ;;
  esac
done
