"""Command-line options of the server, shared by `python -m engines.server` and `harness serve`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", default=None, help="in-process engine: multilora | merged | peft, or "
                        "package.module:Class of a custom Engine (default: the engine config's, else multilora)")
    parser.add_argument("--model", default=None, help="model preset (tiny, llama3-8b, ...) or a Hugging Face "
                        "checkpoint folder (default: the engine config's, else tiny)")
    parser.add_argument("--adapters", default=None, help="folder whose sub-folders are PEFT adapters, "
                        "served under their folder names")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: a free one; the READY line names it)")
    parser.add_argument("--max-queue", type=int, default=None, help="requests in flight beyond which new "
                        "ones get 503 with Retry-After (default: twice the engine's max_num_seqs; 0: no limit)")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/* and "
                        "/generate*")
    parser.add_argument("--enable-runtime-lora", action="store_true", help="answer /v1/load_lora_adapter "
                        "and /v1/unload_lora_adapter (off by default, as in vLLM; protect it with --api-key)")
    parser.add_argument("--adapter-root", default=None, help="folder under which /v1/load_lora_adapter may "
                        "load adapters (default: --adapters)")
    parser.add_argument("--max-runtime-loras", type=int, default=64, help="adapters loaded at run time, at most")
    parser.add_argument("--unload-wait-s", type=float, default=30.0, help="an unload waits this long for "
                        "the adapter's requests in flight, then answers 409")
    parser.add_argument("--drain-s", type=float, default=30.0, help="on SIGTERM, requests in flight get this "
                        "long to finish before their streams end with an error event")
    parser.add_argument("--max-body-bytes", type=int, default=8 << 20, help="larger request bodies get 413")
    parser.add_argument("--engine-config", default=None, help="EngineConfig fields as a JSON object or a "
                        "JSON/YAML file; --engine/--model/--adapters override it")


def load_engine_config(text: str | None) -> dict[str, Any]:
    """--engine-config: inline JSON, or a path to a JSON or YAML file holding one object."""
    if not text:
        return {}
    where = "--engine-config"
    if text.lstrip().startswith("{"):
        source = text
    else:
        path = Path(text)
        if not path.is_file():
            raise ValueError(f"{where}: {text!r} is neither a JSON object nor an existing file")
        source, where = path.read_text(), f"{where} {path}"
    try:
        if where != "--engine-config" and Path(text).suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(source)
        else:
            data = json.loads(source)
    except Exception as exc:
        raise ValueError(f"{where}: cannot parse it ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{where}: must hold an object of EngineConfig fields, got {type(data).__name__}")
    return data


def plugin_class(spec: str):
    """--engine package.module:Class serves an engine class outside the registry (custom engines, tests)."""
    import importlib

    from engines.base import Engine

    module, _, name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"--engine {spec!r}: cannot import {name} from {module} ({exc})") from exc
    if not (isinstance(cls, type) and issubclass(cls, Engine)):
        raise ValueError(f"--engine {spec!r} is not a subclass of engines.base.Engine")
    return cls


def server_config(args: argparse.Namespace):
    """(EngineConfig, ServerOptions) from the options: --engine-config, then --engine/--model/--adapters
    (also what `harness serve --replicas` gives every replica). ValueError/OSError on bad input."""
    from engines.config import EngineConfig
    from engines.server.state import ServerOptions

    data = load_engine_config(args.engine_config)
    for key in ("engine", "model", "adapters"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    if data.get("adapters") and not Path(data["adapters"]).is_dir():
        raise ValueError(f"--adapters {data['adapters']!r} is not a folder")
    config = EngineConfig.from_dict(data)
    options = ServerOptions(max_queue=args.max_queue, api_key=args.api_key,
                            adapter_root=args.adapter_root or config.adapters,
                            runtime_lora=args.enable_runtime_lora, max_runtime_loras=args.max_runtime_loras,
                            unload_wait_s=args.unload_wait_s, drain_s=args.drain_s,
                            max_body_bytes=args.max_body_bytes, model_aliases=(config.model,))
    return config, options


def run(args: argparse.Namespace) -> int:
    """Build the engine from the options, serve until SIGINT/SIGTERM; print READY http://HOST:PORT once listening."""
    from engines.registry import engine_class
    from engines.tokenizer import get_tokenizer

    try:
        config, options = server_config(args)
        tokenizer = get_tokenizer(config.model)
        cls = plugin_class(config.engine) if ":" in config.engine else engine_class(config.engine)
    except (ValueError, OSError, ImportError, AttributeError) as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    serve_engine(cls, config, options, tokenizer, args.host, args.port)
    return 0


def serve_engine(cls, config, options, tokenizer, host: str, port: int) -> None:
    """Build the engine, serve it until SIGINT/SIGTERM (then drain), print READY http://HOST:PORT once listening.
    Also what each replica of `harness serve --replicas` runs in its own process (engines/fleet/engine_proc.py)."""
    from engines.cpu_threads import limit_for_serving
    from engines.server.app import build_app, drain
    from engines.server.runner import serve_forever

    limit_for_serving(config.resolved_device())
    engine = cls(config)
    print(f"serve: engine {config.engine} model {engine.base_model_name} with {len(engine.adapters())} adapter(s)",
          file=sys.stderr, flush=True)
    app = build_app(engine, tokenizer, options)

    def ready(bound: int) -> None:
        print(f"READY http://{host}:{bound}", flush=True)

    try:
        serve_forever(app, host, port, on_ready=ready, on_stop=lambda forced: drain(app, options.drain_s, forced))
    finally:
        engine.close()
