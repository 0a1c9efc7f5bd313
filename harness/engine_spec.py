"""One engine entry of a workload (or of --engine), typed and validated once: in-process, external or stub."""
from __future__ import annotations

import copy
import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from typing import Any

from harness.distributions import WorkloadError, check_keys

ENGINE_KINDS = ("inprocess", "external", "stub")
COMMON_KEYS = {"name", "kind", "label"}
# EngineConfig fields the harness sets from the workload itself
HARNESS_OPTIONS = {"engine": "the entry's name", "adapters": "adapters", "model": "model"}


def _external_fields() -> set[str]:
    from engines.external import ExternalSpec

    return {f.name for f in dataclasses.fields(ExternalSpec)}


@dataclass(frozen=True)
class EngineEntry:
    """What to serve the workload with.

    inprocess: `name` is a registry engine (multilora, merged, peft) or package.module:Class of a custom
    Engine; `options` are EngineConfig fields (the workload's engine_options[name], then the entry's own).
    external: `external` holds ExternalSpec fields (url, preset or command, model, max_loras, ...); its model
    is the entry's own, else the workload's model as the file and --set give it (never the cpu: section's).
    stub: the load generator's stub server; `options` are its flags.
    """

    name: str
    kind: str = "inprocess"
    label: str = ""  # run directories and tables name the engine by this (default: name)
    options: dict[str, Any] = field(default_factory=dict)
    external: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "label": self.label}
        if self.kind == "external":
            out.update(copy.deepcopy(self.external))
        else:
            out["options"] = copy.deepcopy(self.options)
        return out


def _suggest(text: str) -> str:
    from engines.external_presets import PRESETS
    from engines.registry import ENGINES

    if text in PRESETS:
        return (f"; {text} is an external server: give "
                f"'{json.dumps({'name': text, 'kind': 'external', 'preset': text})}' or a url")
    close = difflib.get_close_matches(text, sorted(ENGINES) + ["stub"] + sorted(PRESETS), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def parse_engine_entry(value: Any, where: str, *, engine_options: dict[str, dict[str, Any]] | None = None,
                       model: str | None = None) -> EngineEntry:
    """A name ('multilora', 'stub') or a mapping -> EngineEntry; WorkloadError names `where` (engines[0], --engine ...).

    engine_options: the workload's per-engine EngineConfig fields (in-process only); model: the default model
    of an external engine that launches a server."""
    from engines.registry import ENGINES

    if isinstance(value, EngineEntry):
        return value
    if isinstance(value, str):
        if value == "stub":
            value = {"name": "stub", "kind": "stub"}
        elif value in ENGINES:
            value = {"name": value}
        else:
            raise WorkloadError(f"{where}: {value!r} is not an in-process engine ({', '.join(sorted(ENGINES))}) "
                                f"or stub{_suggest(value)}")
    if not isinstance(value, dict):
        raise WorkloadError(f"{where}: {value!r} must be an engine name or a mapping")
    kind = value.get("kind", "inprocess")
    if kind not in ENGINE_KINDS:
        raise WorkloadError(f"{where}.kind: {kind!r} is not one of {list(ENGINE_KINDS)}")
    if kind == "external":
        return _external(value, where, model)
    check_keys(value, COMMON_KEYS | {"options"}, where)
    name = value.get("name", "stub" if kind == "stub" else None)
    if kind == "inprocess" and (not isinstance(name, str) or (name not in ENGINES and ":" not in name)):
        raise WorkloadError(f"{where}.name: {name!r} is not one of {sorted(ENGINES)} (or package.module:Class "
                            f"of a custom engine){_suggest(str(name))}")
    options = value.get("options", {})
    if not isinstance(options, dict):
        raise WorkloadError(f"{where}.options: {options!r} must be a mapping")
    if kind == "inprocess":
        options = {**(engine_options or {}).get(name, {}), **options}
        check_engine_options(options, f"{where}.options")
    return EngineEntry(name=name, kind=kind, label=_label(value, name, where), options=copy.deepcopy(options))


def _label(value: dict[str, Any], name: str, where: str) -> str:
    label = value.get("label", name)
    if not isinstance(label, str) or not label.strip() or "/" in label:
        raise WorkloadError(f"{where}.label: {label!r} must be a non-empty name without '/'")
    return label


def _external(value: dict[str, Any], where: str, model: str | None) -> EngineEntry:
    from engines.external import ExternalSpec

    check_keys(value, COMMON_KEYS | _external_fields(), where)
    cfg = {k: copy.deepcopy(v) for k, v in value.items() if k not in COMMON_KEYS}
    if not any(cfg.get(k) for k in ("url", "preset", "command")):
        raise WorkloadError(f"{where}: an external engine needs a url to attach to, or a preset or command "
                            "to launch")
    if "url" in cfg and not str(cfg["url"]).startswith(("http://", "https://")):
        raise WorkloadError(f"{where}.url: {cfg['url']!r} must start with http:// or https://")
    if "url" not in cfg and cfg.get("model") is None and model is not None:
        cfg["model"] = model
    try:
        ExternalSpec.from_dict(dict(cfg))
    except (ValueError, TypeError) as exc:
        raise WorkloadError(f"{where}: {exc}") from None
    name = value.get("name", cfg.get("preset") or "external")
    if not isinstance(name, str) or not name:
        raise WorkloadError(f"{where}.name: {name!r} must be a non-empty string")
    return EngineEntry(name=name, kind="external", label=_label(value, name, where), external=cfg)


def check_engine_options(opts: Any, where: str) -> dict[str, Any]:
    """EngineConfig fields of an in-process engine; the harness's own (engine, model, adapters) are refused."""
    from engines.config import EngineConfig

    if not isinstance(opts, dict):
        raise WorkloadError(f"{where}: {opts!r} must be a mapping of EngineConfig fields")
    fixed = sorted(set(opts) & set(HARNESS_OPTIONS))
    if fixed:
        raise WorkloadError(f"{where}: {fixed} are set by the harness from the workload "
                            f"({', '.join(HARNESS_OPTIONS[k] for k in fixed)}); remove them")
    try:
        EngineConfig.from_dict(dict(opts))
    except (ValueError, TypeError) as exc:
        raise WorkloadError(f"{where}: {exc}") from None
    return copy.deepcopy(opts)
