"""Launch command templates for external OpenAI-compatible servers (vLLM, SGLang, TGI, LoRAX) and this project's own.

A template is a list of arguments. Placeholders: {model} {host} {port} {max_loras} {max_lora_rank} {python}
{engine} {engine_config} (JSON: max_loras, max_lora_rank, engine_options) {adapters_dir}; "{lora_modules}" expands to one `name=path` argument per adapter and
"{lora_modules_csv}" to one comma-joined argument. A nested list is an optional group, dropped when a
placeholder in it has no value (no adapters: no --lora-modules flag; no max_loras: the server's default).
"""
from __future__ import annotations

from dataclasses import dataclass

Template = list  # list[str | list[str]]


@dataclass(frozen=True)
class Preset:
    command: Template
    health_path: str = "/health"
    doc: str = ""


PRESETS: dict[str, Preset] = {
    "vllm": Preset(
        ["vllm", "serve", "{model}", "--host", "{host}", "--port", "{port}", "--enable-lora",
         ["--max-loras", "{max_loras}"], ["--max-lora-rank", "{max_lora_rank}"],
         ["--lora-modules", "{lora_modules}"]],
        doc="vLLM: adapters by name in `model`; runtime loading needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=1"),
    "sglang": Preset(
        ["{python}", "-m", "sglang.launch_server", "--model-path", "{model}", "--host", "{host}",
         "--port", "{port}", ["--max-loras-per-batch", "{max_loras}"], ["--max-lora-rank", "{max_lora_rank}"],
         ["--lora-paths", "{lora_modules}"]],
        doc="SGLang: adapters by name in `model` (OpenAI routes) or lora_path (native /generate)"),
    "tgi": Preset(
        ["text-generation-launcher", "--model-id", "{model}", "--hostname", "{host}", "--port", "{port}",
         ["--lora-adapters", "{lora_modules_csv}"]],
        doc="Text Generation Inference: adapters by adapter_id; OpenAI route /v1/completions"),
    "lorax": Preset(
        ["lorax-launcher", "--model-id", "{model}", "--hostname", "{host}", "--port", "{port}",
         ["--max-active-adapters", "{max_loras}"]],
        doc="LoRAX: loads adapters on first use; send the adapter folder as adapter_id with adapter_source local"),
    "self": Preset(
        ["{python}", "-m", "engines.server", "--engine", "{engine}", "--model", "{model}", "--host", "{host}",
         "--port", "{port}", "--engine-config", "{engine_config}", ["--adapters", "{adapters_dir}"]],
        doc="this project's server (engines.server) as an external process"),
}
