#!/usr/bin/env bash
# Issue 15 on the GPU: launch checks, tuning, the decode profile (LoRA tax, x byte floor), kernel bench.
# Usage (repo root, CUDA machine): [GPU_CHECK=] scripts/h200_results.sh PHASE...
#   PHASE: check | tune | profile | nostream | bench
# GPU_CHECK= (set, empty) also runs the profile's tiny-model agreement check on the GPU.
# FUSED_LORA (default on,off): LoRA paths the profile measures each decode point with, the first for the targets.
# Fused LoRA kernel (issue 15), one device call each (each under the 600 s a call may run):
#   scripts/h200_results.sh check                              # kernels compiled vs references, every preset shape
#   BENCH_S=240 PROFILE_S=330 scripts/h200_results.sh bench profile   # fused vs pair: kernels, then the step's tax
#   TUNE_S=120 PROFILE_S=300 scripts/h200_results.sh tune profile     # tuned fused configs + lora_path, then again
# Results go to $OUT (the device tool) or runs/h200/; the tuned file to kernels/configs/<gpu>.json (copied to $OUT).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
out=${OUT:-runs/h200}
mkdir -p "$out"
log=$out/log.txt
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader | tee -a "$log"
python3 -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a "$log"
prof=(--model llama3-8b --many-adapters 0 --loads 0 --prefill "" --iters ${ITERS:-30}
      --batches ${BATCHES:-1,64,128,256} --adapters ${ADAPTERS:-0,1,30,64,128,256} --fused-lora ${FUSED_LORA:-on,off})
[ -n "${GPU_CHECK+set}" ] || prof+=(--no-check)
xdist=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")  # parallel compiles where pytest-xdist is installed
for phase in "$@"; do
  echo "== $phase $(date -u +%T)" | tee -a "$log"
  t0=$SECONDS
  case "$phase" in
  check)  # default configs of every preset shape launch (no tuned file; shrink, expand, fused), kernels match references
    timeout ${CHECK_S:-420} python3 -m pytest -q -x $xdist tests/test_kernels_fit_gpu.py tests/test_kernels_lora.py tests/test_kernels_fused.py ${CHECK_MORE:-tests/test_kernels_attention.py} 2>&1 | tail -15 | tee -a "$log" ;;
  tune)
    timeout ${TUNE_TIMEOUT_S:-330} python3 -m kernels.tune --only ${TUNE_ONLY:-decode-1x1,decode-64x64-r16,decode-256x256} \
        --budget-s ${TUNE_S:-150} --jobs 16 > "$out/tune.log" 2>&1; tail -12 "$out/tune.log" | tee -a "$log"
    cp kernels/configs/*h200*.json "$out/" ;;
  profile)
    timeout ${PROFILE_S:-420} python3 -m harness profile "${prof[@]}" --out "$out/profile.json" 2>&1 | grep -v "^wrote" | tee -a "$log" ;;
  nostream)
    timeout ${PROFILE_S:-420} python3 -m harness profile "${prof[@]}" --no-lora-stream --out "$out/profile-nostream.json" 2>&1 | grep -v "^wrote" | tee -a "$log" ;;
  bench)
    timeout ${BENCH_S:-300} python3 -m kernels.bench --only ${BENCH_ONLY:-decode-1x1,decode-64x64-r16,decode-256x256} --out "$out/kernels.json" 2>&1 | tail -30 | tee -a "$log" ;;
  *) echo "unknown phase $phase" | tee -a "$log"; exit 2 ;;
  esac
  echo "== $phase took $((SECONDS - t0)) s" | tee -a "$log"
done
