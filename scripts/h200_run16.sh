#!/usr/bin/env bash
# Run 16 (session 15) on one H200 (issue 15); one device call (under 10 minutes) per letter:
#   scripts/h200_run16.sh a   # where the LoRA side stream's kernels land beside the base matmul at up to 64 tokens:
#                             #   the default against the base matmul launched first (bfirst), the base matmuls through
#                             #   cuBLASLt (lt) and through cuBLASLt targeting all but 8, 16, 32 SMs (sm8, sm16, sm32),
#                             #   each point on each path in turn, batches 1 and 64 over 0, 1, 64 adapters; then the base
#                             #   step with cuBLASLt for the whole process (TORCH_BLAS_PREFER_CUBLASLT=1) at 1, 64, 256
#                             #   against the default's; then the fold's GPU test (base matmul first gives the tokens)
#   scripts/h200_run16.sh b   # after a (cuBLASLt's base step at 64 tokens 5.84 against 6.02 ms): engine extra cublaslt
#                             #   (engines/model/blas.py; default: passes of up to 64 tokens) against off, profiles off,
#                             #   auto, off, auto on one machine at batches 1, 64, 128, 256 over 0, 1, 64, 256 adapters,
#                             #   each point also with bfirst; then the GPU tests of the switch, the fold, graph capture
#                             #   (ran out of time in the graph capture tests)
#   scripts/h200_run16.sh c   # after b (cuBLASLt at up to 64 tokens: 64 x 64 6.55-6.57 against 6.78-6.79 ms, bfirst no
#                             #   better, removed): python -m engines.model.blas_bench, the base matmuls at 1-512 tokens
#                             #   through each library, then the GPU tests of the switch and the fold (ran out of time
#                             #   in the fold's GPU test, after the switch's passed)
#   scripts/h200_run16.sh d   # after c (blas_bench: cuBLASLt's matmuls of a step 4.24 against 4.42 ms at 64 tokens, 4.36
#                             #   against 4.62 at 96, 4.34 against 4.28 at 16, level at 128-512): the default raised to
#                             #   96 tokens, profiles off, auto, off, auto at batches 16, 64, 96 over 0 and 64 adapters;
#                             #   then the GPU tests of the switch and the fold
#   scripts/h200_run16.sh f   # the issue's table with the final code (cuBLASLt up to 96 tokens, call d): batches 1, 64, 256
#                             #   over 0, 1, 64, 256 adapters, 3 rounds; then the graph-capture GPU tests
#   scripts/h200_run16.sh t   # GPU tests of the paths the cuBLASLt switch now runs under: mixed steps, overlapped steps,
#                             #   the expand by rows in the engine (graphs, fused ops, float32 token agreement)
#   scripts/h200_run16.sh p   # the L2 prefetch probe (scripts/l2_prefetch_probe.py: a layer's adapter blocks read into L2
#                             #   beside the MLP of the layer before, kernels/lora_prefetch.py) and the prefetch's GPU tests
# Calls a and b measured profile modes that were removed after them (lt, sm<N>: the engine extra cublaslt replaced
# them, and the carve-outs lost to lt; bfirst: no faster): run them at the commits they ran at (a: 654f08d, b: d791ee5).
# Call p's prefetch kernel and probe lost and were removed after it: run p at e60afb6 (it ran at c5671af, whose probe
# printed its byte floors 1e6 too small).
# Results: $OUT/<call>.tgz. Serving at saturation with the step at its context: scripts/h200_run15.sh s (not run).
set -uo pipefail
cd "$(dirname "$0")/.."
res=/tmp/r16
call=${1:?usage: h200_run16.sh a|b|c|d|f|t|p}
. scripts/gpu_call_start.sh
case "$call" in
a)
  timeout 260 "${prof[@]}" --rounds 3 --batches 1,64 --adapters 0,1,64 --fused-lora auto,bfirst,lt,sm8,sm16,sm32 \
      --out "$res/runs/profile-a-modes.json" > "$res/logs/a-profile-modes.log" 2>&1
  decode_brief "$res/logs/a-profile-modes.log"
  for lt in 0 1; do
    TORCH_BLAS_PREFER_CUBLASLT=$lt timeout 120 "${prof[@]}" --rounds 3 --batches 1,64,256 --adapters 0 \
        --out "$res/runs/profile-a-base-lt$lt.json" > "$res/logs/a-profile-base-lt$lt.log" 2>&1
    echo "cublaslt=$lt:"; grep -E "^decode batch|pipelined" "$res/logs/a-profile-base-lt$lt.log" | cut -c1-110
  done
  timeout 100 python3 -m pytest -q -p no:randomly --tb=short tests/test_engine_lora_fold.py > "$res/logs/a-tests.log" 2>&1
  tail -2 "$res/logs/a-tests.log" ;;
b)
  for n in 1 2; do for lt in off auto; do
    timeout 130 "${prof[@]}" --rounds 3 --batches 1,64,128,256 --adapters 0,1,64,256 --fused-lora auto,bfirst \
        --cublaslt $lt --out "$res/runs/profile-b$n-$lt.json" > "$res/logs/b$n-profile-$lt.log" 2>&1
    echo "cublaslt $lt $n:"; decode_brief "$res/logs/b$n-profile-$lt.log"
  done; done
  timeout 150 python3 -m pytest -q -p no:randomly --tb=short tests/test_engine_blas.py tests/test_engine_lora_fold.py \
      tests/test_engine_graph_capture.py > "$res/logs/b-tests.log" 2>&1
  tail -2 "$res/logs/b-tests.log" ;;
c)
  timeout 150 python3 -m engines.model.blas_bench --out "$res/runs/blas.json" > "$res/logs/c-blas.log" 2>&1
  grep -A20 "^| tokens" "$res/logs/c-blas.log"; grep -E " x +(64|128|256) tokens" "$res/logs/c-blas.log"
  timeout 200 python3 -m pytest -q -p no:randomly --tb=short tests/test_engine_blas.py tests/test_engine_lora_fold.py \
      > "$res/logs/c-tests.log" 2>&1
  tail -2 "$res/logs/c-tests.log" ;;
d)
  for n in 1 2; do for lt in off auto; do
    timeout 100 "${prof[@]}" --rounds 3 --batches 16,64,96 --adapters 0,64 --cublaslt $lt \
        --out "$res/runs/profile-d$n-$lt.json" > "$res/logs/d$n-profile-$lt.log" 2>&1
    echo "cublaslt $lt $n:"; decode_brief "$res/logs/d$n-profile-$lt.log"
  done; done
  timeout 200 python3 -m pytest -q -p no:randomly -rs --durations=5 --tb=short tests/test_engine_blas.py \
      tests/test_engine_lora_fold.py > "$res/logs/d-tests.log" 2>&1
  tail -9 "$res/logs/d-tests.log" ;;
f)
  timeout 150 "${prof[@]}" --rounds 3 --batches 1,64,256 --adapters 0,1,64,256 \
      --out "$res/runs/profile-f.json" > "$res/logs/f-profile.log" 2>&1
  decode_brief "$res/logs/f-profile.log"; grep -E "^\| batch" "$res/logs/f-profile.log" | head -6
  timeout 200 python3 -m pytest -q -p no:randomly --tb=short tests/test_engine_graph_capture.py \
      > "$res/logs/f-tests.log" 2>&1
  tail -2 "$res/logs/f-tests.log" ;;
t)
  timeout 270 python3 -m pytest -q -p no:randomly -rs --tb=short tests/test_engine_mixed.py tests/test_engine_overlap.py \
      tests/test_engine_expand_rows.py > "$res/logs/t-tests.log" 2>&1
  grep -v "^  /\|Warning\|warn" "$res/logs/t-tests.log" | tail -8 ;;
p)
  timeout 150 python3 scripts/l2_prefetch_probe.py --out "$res/runs/prefetch-probe.json" > "$res/logs/p-probe.log" 2>&1
  grep -vi "warn" "$res/logs/p-probe.log" | tail -12
  timeout 60 python3 -m pytest -q -p no:randomly --tb=short tests/test_kernels_prefetch.py > "$res/logs/p-tests.log" 2>&1
  tail -2 "$res/logs/p-tests.log" ;;
*) echo "unknown call $call (a b c d f t p)" >&2; exit 2 ;;
esac
. scripts/gpu_call_pack.sh
