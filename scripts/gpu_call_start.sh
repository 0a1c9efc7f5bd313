# Sourced by the GPU driver scripts (scripts/h200_*run*.sh) at their start, from the repo root, once $res (the
# call's scratch folder) and $call (its letter) are set: make runs/ and logs/ there, put the repo and the wheels'
# site on PYTHONPATH, mark the call's start (scripts/gpu_call_pack.sh packs what is newer), name the GPU, and
# install the wheels of .whl/ (scripts/gather_wheels.sh) unless locust is there already. Defines $prof: the decode
# profile of the llama3-8b shape the drivers run (append their batches, adapters and paths), and decode_brief.
mkdir -p "$res/runs" "$res/logs"
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
echo "== $call $(date -u +%T)"
touch "$res/.start-$call"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import locust" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target /tmp/site .whl/*.whl > "$res/logs/install.log" 2>&1 || tail -5 "$res/logs/install.log"
prof=(python3 -m harness profile --model llama3-8b --no-check --many-adapters 0 --loads 0 --prefill "" --iters 20)
decode_brief() {  # the decode rows of a harness profile log, one line each: batch, adapters (path), pipelined ms, taxes
  grep -A1 -E "^decode batch" "$1" | grep -v "^--" \
      | grep -oE "^decode batch +[0-9]+ adapters +[0-9]+( fused_lora +[a-z0-9]+)?|pipelined: +[0-9.]+ ms|tax [+-][0-9.]+%" \
      | paste -sd' ' | sed 's/decode batch/\ndecode batch/g'
}
