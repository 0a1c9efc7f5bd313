#!/usr/bin/env bash
# Download into .whl/ the wheels (CPython 3.12, manylinux x86_64) that the GPU machine lacks for `harness run`:
# Locust and its dependencies (gevent, geventhttpclient, greenlet, flask, ...), plus plotly and streamlit with
# --reports, and Ray Serve with what the GPU image lacks for it with --fleet (ray's own wheel, 79 MB, is then split
# into DEST/ray-*.whl.part-aa, -ab, ... of RAY_PART_MB, default 30: move the parts to separate carried folders, so
# that each remote call carries under 64 MiB with the tree (~31 MB with docs/results since 2026-11-30);
# scripts/fleet2_gpu.sh install keeps the parts across calls and joins them once all are there). Versions are
# pinned to what CI installs, so both machines run the same load generator and Ray.
# Usage: [RAY_PART_MB=30] scripts/gather_wheels.sh [--reports] [--fleet] [--dest DIR]
# On the GPU machine: python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#                     export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."

dest=.whl
reports=0
fleet=0
while [ $# -gt 0 ]; do
  case "$1" in
    --reports) reports=1 ;;
    --fleet) fleet=1 ;;
    --dest) dest="$2"; shift ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "gather_wheels: unknown argument $1 (use --reports, --fleet or --dest DIR)" >&2; exit 2 ;;
  esac
  shift
done

# what the GPU image lacks (its package list: /work/.library/device/KINDS.md); the rest is already there
load=(
  locust==2.47.0 gevent==26.9.0 geventhttpclient==2.6.1 greenlet==3.5.6 zope.event==6.2 zope.interface==8.7
  flask==3.1.3 flask-cors==6.0.2 flask-login==0.6.3 blinker==1.9.0 itsdangerous==2.2.0 pyzmq==27.3.0
  configargparse==1.9.0 brotli==1.2.1 python-engineio==4.15.1 python-socketio==5.18.1 simple-websocket==1.1.0
  wsproto==1.3.2 bidict==0.24.1 websocket-client==1.9.2
)
reports_pkgs=(
  plotly==7.1.0 streamlit==1.67.0 altair==6.3.0 pydeck==0.9.3 python-multipart==0.0.34 starlette==1.10.0
  uvicorn==0.54.0 watchdog==7.1.0 websockets==17.4 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
  referencing==0.37.0 rpds-py==0.30.0
)
# ray[serve]'s run-time needs that the GPU image lacks (its dashboard, haproxy, py-spy and virtualenv extras are
# not needed); grpcio-reflection matches the image's grpcio 1.84 (1.85.1 refuses to import beside it)
fleet_pkgs=(
  ray==2.60.0 fastapi==0.165.0 starlette==1.10.0 pydantic==2.13.4 pydantic_core==2.46.4 annotated-types==0.7.0
  typing-inspection==0.4.2 uvicorn==0.54.0 httptools==0.9.0 python-dotenv==1.2.2 watchfiles==1.3.0 websockets==17.4
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==0.30.0 aiohttp-cors==0.8.1
  colorful==0.5.8 mmh3==5.3.1 smart_open==9.0.2 opencensus==0.11.4 opencensus-context==0.1.3 google-api-core==2.44.0
  googleapis-common-protos==1.76.0 proto-plus==1.29.0 opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2
  opentelemetry-proto==1.45.2 opentelemetry-exporter-prometheus==0.66b2 opentelemetry-semantic-conventions==0.66b2
  grpcio-reflection==1.84.0
)
pkgs=("${load[@]}")
[ "$reports" = 1 ] && pkgs+=("${reports_pkgs[@]}")
[ "$fleet" = 1 ] && pkgs+=("${fleet_pkgs[@]}")

mkdir -p "$dest"

platforms=()
for p in manylinux_2_39_x86_64 manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 \
         manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done

failed=()
for spec in "${pkgs[@]}"; do
  if ! python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
       "${platforms[@]}" -d "$dest" "$spec" >/dev/null 2>"$dest/.last-error"; then
    failed+=("$spec")
    echo "gather_wheels: no cp312 manylinux wheel for $spec: $(tail -1 "$dest/.last-error")" >&2
  fi
done
rm -f "$dest/.last-error"

# one version of each package: two would stop the whole install there
dups=$(ls "$dest"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z-' 'a-z_' | sort | uniq -d)
if [ -n "$dups" ]; then
  echo "gather_wheels: several versions of: $dups; remove the old ones from $dest" >&2
  exit 1
fi

if [ "$fleet" = 1 ]; then  # ray's wheel alone is over a remote call's budget beside the tree: in parts
  for whl in "$dest"/ray-2*.whl; do
    split -b "${RAY_PART_MB:-30}m" -a 2 "$whl" "$whl.part-" && rm "$whl"
    echo "gather_wheels: $(basename "$whl") split into $(ls "$whl".part-* | wc -l) parts (joined by scripts/fleet2_gpu.sh install)"
  done
fi
count=$(ls "$dest"/*.whl | wc -l)
size=$(du -sh "$dest" | cut -f1)
echo "gather_wheels: $count wheels in $dest ($size)"
if [ ${#failed[@]} -gt 0 ]; then
  echo "gather_wheels: missing ${failed[*]}" >&2
  exit 1
fi
