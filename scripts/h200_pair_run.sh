#!/usr/bin/env bash
# One session's GPU work on an H200 pair (device kind nvidia-h200-x2), in three calls of under 10 minutes that
# keep both GPUs busy: issue 16's fleet validation (scripts/fleet2_gpu.sh) and issue 15's measurements
# (scripts/h200_results.sh, the saturate A/B of mixed steps, bursty30 across engines).
#   scripts/h200_pair_run.sh c1   # wheels part 1; adapters; GPU 0: single-replica fit run, then saturate
#                                 #   separate vs mixed; GPU 1: kernel checks, then kernels.bench (fused vs pair)
#   scripts/h200_pair_run.sh c2   # wheels part 2 (Ray); `harness serve --replicas 2`: affinity, round-robin
#   scripts/h200_pair_run.sh c3   # GPU 0: saturate mixed-graphs, then bursty30 across engines (60 s windows);
#                                 #   GPU 1: the profile with --fused-lora on,off, then kernels.tune (writes lora_path)
# Every result goes under /tmp/pair (kept between calls while the machine stays warm) and each call tars what
# it made into $OUT/<call>.tgz (a call brings back at most 8 files). Wheels: scripts/gather_wheels.sh --fleet; c2
# needs all of Ray's parts installed by then. On 2026-11-30 c1 carried Locust's wheels and Ray's first 40 MB part
# (.whlA), c2 the second part and Ray Serve's other wheels (.whlB), which fit under a call's 64 MiB only with
# docs/results taken out of the index for those calls (`git rm -r -q --cached docs/results`, restored after with
# `git reset -q -- docs/results`); with 30 MB parts, carry one more part in c1 or run c2's fleet after a call
# that carries the last part.
set -uo pipefail
cd "$(dirname "$0")/.."
res=/tmp/pair
mkdir -p "$res/runs" "$res/logs"
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PATH="/tmp/site/bin:$PATH" PYTHONUNBUFFERED=1
export FLEET2_RUNS="$res/runs" FLEET2_DURATION="${FLEET2_DURATION:-60}"
sat=(python3 -m harness run workloads/saturate.yaml --machine cuda --set duration_s=20 --set warmup_s=5
     --set loadgen.drain_timeout_s=30 --runs-dir "$res/runs" --no-progress)
separate='{"name":"multilora","label":"separate","options":{"extra":{"mixed_steps":false}}}'
mixed='{"name":"multilora","label":"mixed","options":{"extra":{"mixed_steps":true}}}'
graphs='{"name":"multilora","label":"mixed-graphs","options":{"extra":{"mixed_steps":true,"mixed_graphs":true}}}'
gpu() { local dev=$1 name=$2; shift 2; echo "== GPU $dev $name $(date -u +%T)"; CUDA_VISIBLE_DEVICES=$dev "$@" > "$res/logs/$name.log" 2>&1; echo "== GPU $dev $name exit $? $(date -u +%T)"; }
summary() { grep -h -E "^\||valid|passed|failed|took|exit|Error|error:" "$res"/logs/"$1"*.log | grep -v "^adapters:" | tail -${2:-40}; }

call=${1:?usage: h200_pair_run.sh c1|c2|c3}
echo "== $call $(date -u +%T)"
# a fleet cut short by its call's limit can leave Ray and its replicas holding the GPUs
[ -x /tmp/site/bin/ray ] && ray stop --force > /dev/null 2>&1
nvidia-smi --query-compute-apps=pid --format=csv,noheader | xargs -r kill -9 2>/dev/null
touch "$res/.start-$call"; nvidia-smi --query-gpu=index,name,driver_version,memory.used --format=csv,noheader
case "$call" in
c1)
  bash scripts/fleet2_gpu.sh install adapters > "$res/logs/c1-install.log" 2>&1; tail -4 "$res/logs/c1-install.log"
  { gpu 0 c1-single timeout -s INT 260 bash scripts/fleet2_gpu.sh single
    gpu 0 c1-saturate timeout -s INT 220 "${sat[@]}" --engine "$separate" --engine "$mixed"; } &
  { OUT=$res/kernels CHECK_S=230 gpu 1 c1-check bash scripts/h200_results.sh check
    OUT=$res/kernels BENCH_S=200 gpu 1 c1-bench bash scripts/h200_results.sh bench; } &
  wait; summary c1 60 ;;
c2)
  bash scripts/fleet2_gpu.sh install > "$res/logs/c2-install.log" 2>&1; tail -3 "$res/logs/c2-install.log"
  timeout -s INT 480 bash scripts/fleet2_gpu.sh fleet > "$res/logs/c2-fleet.log" 2>&1; echo "fleet exit $?"
  grep -v "^adapters:" "$res/logs/c2-fleet.log" | tail -40 ;;
c3)
  { gpu 0 c3-saturate timeout -s INT 130 "${sat[@]}" --engine "$graphs"
    gpu 0 c3-bursty30 timeout -s INT 340 python3 -m harness run workloads/bursty30.yaml --machine cuda \
      --set duration_s=60 --runs-dir "$res/runs" --no-progress; } &
  { OUT=$res/kernels PROFILE_S=260 gpu 1 c3-profile bash scripts/h200_results.sh profile
    OUT=$res/kernels TUNE_S=100 TUNE_TIMEOUT_S=190 gpu 1 c3-tune bash scripts/h200_results.sh tune; } &
  wait; summary c3 60 ;;
*) echo "unknown call $call (c1 c2 c3)" >&2; exit 2 ;;
esac
cp "$res"/runs/*.log "$res/logs/" 2>/dev/null
(cd "$res" && find runs logs kernels -newer ".start-$call" -type f 2>/dev/null | tar -czf "${OUT:-/tmp}/$call.tgz" -T -)
ls -la "${OUT:-/tmp}"
echo "== $call done $(date -u +%T)"
