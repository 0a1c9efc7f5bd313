#!/usr/bin/env bash
# Session 12's GPU work on one H200 (issue 15), one device call (under 10 minutes) per letter:
#   scripts/h200_run13.sh a   # the segment grid that follows the step (ShrinkConfig/ExpandConfig.m_programs):
#                             #   kernels.bench of the decode and mixed cases (loop_pair_us beside the pair), then
#                             #   kernels.tune --ops shrink,expand on them (tries m_programs 0 and 32), then the bench
#                             #   again with the tuned file; the file comes back as runs/nvidia-h200.json
#   scripts/h200_run13.sh b   # the PDL crash: scripts/pdl_bisect.py after the graph test with PDL *off* (does the
#                             #   crash need PDL at all?), then the GPU tests of the kernels and fused ops
#   scripts/h200_run13.sh d   # Nsight Compute on the LoRA kernels by rows at 64 tokens over 64 adapters (q,k,v), the
#                             #   path the engine takes at batch 64: where their 8-9 us against a 3.3 us floor go
#   scripts/h200_run13.sh e   # kernels.tune --ops shrink,expand on the 128-token decode over 8 adapters (by segments),
#                             #   then kernels.bench of it; the tuned file comes back as runs/nvidia-h200-e.json
#   scripts/h200_run13.sh f   # call b's crash without PDL: the graph test with PDL off, then engines that serve with PDL
#                             #   off (family none), with graphs and eager, then blocking launches (where it faults)
#   scripts/h200_run13.sh g   # scripts/graph_crash_probe.py: which prelude makes the graphed tiny engine fault, and does
#                             #   waiting after each LoRAMeta.prepare, or staging it in fresh memory, remove it?
#   scripts/h200_run13.sh h   # the probe split further: which of call g's kernels in the prelude (the shrink by rows, the
#                             #   expand by rows, add + RMSNorm) makes the fault, and does the engine fault without
#                             #   its side stream (extra lora_stream false)?
#   scripts/h200_run13.sh i   # the failing probe (norm_only: add + RMSNorm in bfloat16 before the engine) with one engine
#                             #   extra changed at a time: overlap, mixed_graphs, warmup, lora_shrink_rows,
#                             #   lora_expand_rows, fused_ops off
#   scripts/h200_run13.sh j   # the failing probe with each graph in a pool of its own, and with the host waiting for each
#                             #   replay
#   scripts/h200_run13.sh k   # with DecodeGraphs warming up and capturing on one stream of its own (shared pool kept):
#                             #   the failing probes again, then tests/test_kernels_pdl.py on the GPU
#   scripts/h200_run13.sh c   # the decode profile in 3 rounds at batches 1, 64, 256 over 0, 1, 64, 256 adapters
#                             #   with the committed configs (run this after committing call a's tuned file)
# Wheels: not needed (no locust). Results: $OUT/<call>.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
res=/tmp/r13
call=${1:?usage: h200_run13.sh a|b|c|d|e|f|g|h|i|j|k}
. scripts/gpu_call_start.sh
cases=decode-1x1-r16,decode-64x1-r16,decode-64x8-r16,decode-64x64-r16-qkv,decode-256x30-r16,mixed-512x30-r16
case "$call" in
a)
  timeout 130 python3 -m kernels.bench --only "$cases" --out "$res/runs/kernels-before.json" \
      > "$res/logs/a-bench-before.log" 2>&1
  grep -E "^\| (decode|mixed)" "$res/logs/a-bench-before.log" | head -20
  grep -iE "loop|error|Traceback" "$res/logs/a-bench-before.log" | head -5
  timeout 260 python3 -m kernels.tune --ops shrink,expand --only "$cases" --budget-s 200 --jobs 16 \
      > "$res/logs/a-tune.log" 2>&1
  tail -15 "$res/logs/a-tune.log"; cp kernels/configs/nvidia-h200.json "$res/runs/nvidia-h200.json"
  git diff --stat kernels/configs/ 2>/dev/null
  timeout 130 python3 -m kernels.bench --only "$cases" --out "$res/runs/kernels-after.json" \
      > "$res/logs/a-bench-after.log" 2>&1
  grep -E "^\| (decode|mixed)" "$res/logs/a-bench-after.log" | head -20 ;;
b)
  timeout 250 python3 scripts/pdl_bisect.py --graphs 1 --warmup --after-off --after-kernel-test off 2>&1 \
      | tee "$res/logs/b-bisect.log" | tail -20
  timeout 250 python3 -m pytest -q -p no:randomly --tb=short tests/test_engine_fused_ops.py tests/test_kernels_lora.py \
      tests/test_kernels_shrink_rows.py tests/test_kernels_expand_rows.py > "$res/logs/b-tests.log" 2>&1
  grep -v "^  /\|Warning\|warn" "$res/logs/b-tests.log" | tail -8 ;;
c)
  timeout 400 "${prof[@]}" --rounds 3 --batches 1,64,256 --adapters 0,1,64,256 \
      --out "$res/runs/profile.json" > "$res/logs/c-profile.log" 2>&1
  grep -E "^\|" "$res/logs/c-profile.log" | head -24
  grep -A1 -E "^decode batch" "$res/logs/c-profile.log" | grep -v "^--" | cut -c1-190 ;;
d)
  which ncu || ls /usr/local/cuda*/bin/ncu
  timeout 300 ncu --graph-profiling node -k "regex:_(expand|shrink)_rows_kernel" -c 4 --section SpeedOfLight \
      --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats --section WarpStateStats \
      --section SchedulerStats python3 -m kernels.bench --only decode-64x64-r16-qkv --out "$res/runs/ncu-bench.json" \
      > "$res/logs/d-ncu.log" 2>&1
  grep -vE "^\s*$|----" "$res/logs/d-ncu.log" | grep -vE "^\| |^==PROF==" | head -150 ;;
e)
  timeout 200 python3 -m kernels.tune --ops shrink,expand --only decode-128x8 --budget-s 150 --jobs 16 \
      > "$res/logs/e-tune.log" 2>&1
  tail -5 "$res/logs/e-tune.log"; cp kernels/configs/nvidia-h200.json "$res/runs/nvidia-h200-e.json"
  timeout 100 python3 -m kernels.bench --only decode-128x8 --out "$res/runs/kernels-128.json" \
      > "$res/logs/e-bench.log" 2>&1
  grep -E "^\| decode" "$res/logs/e-bench.log" | head ;;
f)
  timeout 200 python3 scripts/pdl_bisect.py --graphs 1,0 --warmup --families none --after-kernel-test off 2>&1 \
      | tee "$res/logs/f-bisect.log"
  timeout 200 python3 scripts/pdl_bisect.py --graphs 1 --warmup --families none --after-kernel-test off --blocking \
      2>&1 | tee "$res/logs/f-bisect-blocking.log" ;;
g)
  timeout 400 python3 scripts/graph_crash_probe.py 2>&1 | tee "$res/logs/g-probe.log" ;;
h)
  timeout 300 python3 scripts/graph_crash_probe.py --probes shrink_only,expand_only,norm_only,rows_eager+no_side_stream \
      2>&1 | tee "$res/logs/h-probe.log" ;;
i)
  timeout 400 python3 scripts/graph_crash_probe.py --probes "norm_only,norm_only+x:overlap=false,\
norm_only+x:mixed_graphs=false,norm_only+x:warmup=false,norm_only+x:lora_shrink_rows=false,\
norm_only+x:lora_expand_rows=0,norm_only+x:fused_ops=false" 2>&1 | tee "$res/logs/i-probe.log" ;;
j)
  timeout 300 python3 scripts/graph_crash_probe.py --probes "norm_only+own_pools,norm_only+sync_replay,expand_only+own_pools" \
      2>&1 | tee "$res/logs/j-probe.log" ;;
k)
  timeout 200 python3 scripts/graph_crash_probe.py --probes "norm_only,expand_only,rows_graph,rows_eager" \
      2>&1 | tee "$res/logs/k-probe.log"
  timeout 150 python3 -m pytest -q -p no:randomly -rxX --tb=line tests/test_kernels_pdl.py > "$res/logs/k-pdl.log" 2>&1
  grep -v "^  /\|Warning\|warn" "$res/logs/k-pdl.log" | tail -6 ;;
*) echo "unknown call $call (a b c d e f g h i j k)" >&2; exit 2 ;;
esac
. scripts/gpu_call_pack.sh
