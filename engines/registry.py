"""Engine registry: name -> class, imported lazily so optional dependencies load only when used."""
from __future__ import annotations

import importlib

from engines.base import Engine
from engines.config import EngineConfig

ENGINES: dict[str, str] = {
    "multilora": "engines.multilora.engine:MultiLoRAEngine",
    "merged": "engines.merged:MergedEngine",
    "peft": "engines.peft_engine:PeftEngine",
}


def engine_class(name: str) -> type[Engine]:
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; in-process engines: {sorted(ENGINES)} "
                         "(use 'external' with a URL or launch preset for other servers)")
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def create_engine(config: EngineConfig) -> Engine:
    return engine_class(config.engine)(config)
