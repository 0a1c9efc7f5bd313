"""Which adapter a request names: the multiplexed model id Ray routes on (no Ray import here)."""
from __future__ import annotations

import json

GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions", "/generate", "/generate_stream")


def requested_adapter(path: str, body: bytes, base_names: set[str], catalog: set[str]) -> str:
    """The adapter a generation request names ("" for the base model, a name outside the catalog or a body that
    does not parse: the replica then answers with the single server's own error). `model` may be an adapter
    name (vLLM) or base:adapter (Ray Serve LLM); TGI routes name it in parameters.adapter_id."""
    if path not in GENERATION_PATHS:
        return ""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return ""
    if not isinstance(data, dict):
        return ""
    if path.startswith("/generate"):
        params = data.get("parameters")
        name = params.get("adapter_id") if isinstance(params, dict) else None
    else:
        name = data.get("model")
    if not isinstance(name, str) or name in base_names:
        return ""
    if name in catalog:
        return name
    base, sep, adapter = name.partition(":")
    return adapter if sep and base in base_names and adapter in catalog else ""


def merge_metrics(pages: dict[str, str]) -> str:
    """Prometheus pages of several replicas as one: each family's HELP/TYPE once, then its samples from every
    replica, each labelled replica="<id>"."""
    families: dict[str, tuple[list[str], list[str]]] = {}
    for replica, text in sorted(pages.items()):
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(" ", 3)
                heads, _ = families.setdefault(parts[2] if len(parts) > 2 else line, ([], []))
                if line not in heads:
                    heads.append(line)
                continue
            name, value = line.rsplit(" ", 1)
            family = name.split("{", 1)[0]
            label = f'replica="{replica}"'
            name = f"{name[:-1]},{label}}}" if name.endswith("}") else f"{name}{{{label}}}"
            families.setdefault(family, ([], []))[1].append(f"{name} {value}")
    return "\n".join(line for heads, samples in families.values() for line in heads + samples) + "\n"
