# Sourced by the GPU driver scripts (scripts/h200_*_run*.sh) at their end: drop the JSONL records of runs that
# also wrote parquet, pack this call's new runs and logs into $OUT/<call>.tgz for the device tool to bring back.
# Needs $res (the call's scratch folder, with runs/ and logs/) and $call (its letter).
find "$res/runs" -name records.jsonl -newer "$res/.start-$call" -exec sh -c \
    '[ -f "$(dirname "$1")/records.parquet" ] && rm "$1"' _ {} \;
(cd "$res" && find runs logs -newer ".start-$call" -type f | tar -czf "${OUT:-/tmp}/$call.tgz" -T -)
ls -la "${OUT:-/tmp}"
echo "== $call done $(date -u +%T)"
