# Sourced by the GPU driver scripts' serving call (after scripts/gpu_call_start.sh, which sets $prof; $res is the
# call's scratch folder): workloads/saturate.yaml at 130 req/s over its 30 adapters, then the decode step and the
# mixed step at its context (192 tokens), and scripts/served_vs_step.py against both. Needs the wheels (carry .whl).
timeout -s INT 200 python3 -m harness run workloads/saturate.yaml --machine cuda \
    --set traffic.rate=130 --set duration_s=12 --set warmup_s=4 --set loadgen.drain_timeout_s=20 \
    --runs-dir "$res/runs" --no-progress --engine multilora > "$res/logs/s-saturate.log" 2>&1
grep -E "^multilora|invalid|rror" "$res/logs/s-saturate.log" | head -3
timeout 200 "${prof[@]}" --rounds 2 --context 192 --batches 224,256 --adapters 0,30 --mixed-prompts 256,288 \
    --out "$res/runs/profile-ctx192.json" > "$res/logs/s-profile.log" 2>&1
d=$(ls -d "$res"/runs/*-saturate-multilora | tail -1)
python3 scripts/served_vs_step.py "$d" "$res/runs/profile-ctx192.json" --json "$res/runs/served-vs-step.json"
