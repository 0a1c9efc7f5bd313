"""The workload spec, typed and validated once: the file, then its cpu: section without CUDA, then every --set."""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from harness.distributions import WorkloadError, check_keys
from harness.engine_spec import EngineEntry, check_engine_options, parse_engine_entry
from harness.spec_sections import AdaptersSpec, LoadgenSpec, ReplaySpec, SLOSpec, TrafficSpec, _str

__all__ = ["WorkloadError", "WorkloadSpec", "Resolution", "load_workload", "parse_set", "machine_has_cuda",
           "AdaptersSpec", "LoadgenSpec", "ReplaySpec", "SLOSpec", "TrafficSpec", "EngineEntry", "PRECEDENCE"]

PRECEDENCE = ("the workload file, then its cpu: section on a machine without CUDA (this machine's "
              "defaults), then every --set KEY=VALUE in order: an explicit override always wins")
TOP_KEYS = {"name", "seed", "duration_s", "warmup_s", "model", "adapters", "traffic", "slo", "engines",
            "engine_options", "loadgen", "cpu"}
DEFAULT_MODEL = "tiny"
DEFAULT_ENGINES = ("multilora",)
# keys of the `cpu:` section that set a traffic field rather than a top-level one
CPU_TRAFFIC_KEYS = {"rate", "popularity", "arrivals", "prompt_tokens", "output_tokens", "base_fraction"}
CPU_TOP_KEYS = {"model", "duration_s", "warmup_s", "slo", "adapters", "engines", "engine_options", "loadgen"}
MERGED_SECTIONS = {"adapters", "slo", "loadgen", "engine_options"}  # merged key by key; anything else replaced
MACHINES = ("cpu", "cuda")


def machine_has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass(frozen=True)
class Override:
    key: str  # dotted, e.g. traffic.rate
    value: Any
    flag: str  # as the user wrote it, e.g. "--set traffic.rate=16"; errors name it


@dataclass(frozen=True)
class Resolution:
    """How a spec was made: which file, for which machine, what the cpu: section changed, which overrides."""

    file: str | None = None
    machine: str | None = None  # None: not resolved for a machine (the cpu: section kept, unapplied)
    cpu_applied: bool = False
    cpu_changes: tuple[tuple[str, Any, Any], ...] = ()  # (key, value in the file, value the run uses)
    notes: tuple[str, ...] = ()  # what the cpu: section did not change, and why
    overrides: tuple[Override, ...] = ()
    external_model: str | None = None  # what an external engine launches when its entry names no model

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "machine": self.machine, "cpu_applied": self.cpu_applied, "precedence": PRECEDENCE,
                "external_model": self.external_model,
                "cpu_section": [{"key": k, "file": a, "used": b} for k, a, b in self.cpu_changes],
                "notes": list(self.notes), "overrides": [{"key": o.key, "value": o.value, "flag": o.flag}
                                                         for o in self.overrides]}

    def describe(self) -> list[str]:
        """Console lines: what this machine changed (the cpu: section) and what --set overrode."""
        lines = []
        if self.machine == "cpu" and not self.cpu_applied:
            lines.append("no CUDA here: engines run on the CPU (the workload has no cpu: section)")
        elif self.machine == "cpu":
            lines.append("no CUDA here: the workload's cpu: section applies (file, then cpu:, then --set); "
                         + ("it changed:" if self.cpu_changes else "it changed nothing"))
            lines += [f"  {k}: {_short(a)} -> {_short(b)}" for k, a, b in self.cpu_changes]
        return lines + [f"  {n}" for n in self.notes]


def _short(value: Any) -> str:
    text = str(value) if not isinstance(value, (dict, list)) else _flow(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _flow(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False).strip()


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    seed: int
    duration_s: float  # measured window, after the warm-up
    warmup_s: float  # requests sent in the warm-up are recorded but not measured
    model: str  # a preset or a local Hugging Face checkpoint folder
    adapters: AdaptersSpec
    traffic: TrafficSpec
    slo: SLOSpec
    engines: tuple[EngineEntry, ...]
    engine_options: dict[str, dict[str, Any]]
    loadgen: LoadgenSpec
    cpu: dict[str, Any] | None = None  # the file's cpu: section while the spec is not resolved for a machine
    resolution: Resolution = field(default_factory=Resolution, compare=False, repr=False)
    base_dir: str = field(default=".", compare=False, repr=False)
    source: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # the file's mapping

    @property
    def horizon_s(self) -> float:
        return self.warmup_s + self.duration_s

    def to_dict(self) -> dict[str, Any]:
        """The spec as a workload mapping (load_workload reads it back to an equal spec)."""
        out = {"name": self.name, "seed": self.seed, "duration_s": self.duration_s, "warmup_s": self.warmup_s,
               "model": self.model, "adapters": self.adapters.to_dict(), "traffic": self.traffic.to_dict(),
               "slo": self.slo.to_dict(), "engines": [e.to_dict() for e in self.engines],
               "engine_options": copy.deepcopy(self.engine_options), "loadgen": self.loadgen.to_dict()}
        if self.cpu is not None:
            out["cpu"] = copy.deepcopy(self.cpu)
        return out

    def with_overrides(self, overrides: dict[str, Any] | Iterable[Override],
                       flags: dict[str, str] | None = None) -> "WorkloadSpec":
        """The spec re-resolved with more overrides (dotted keys, e.g. {"traffic.rate": 4.0}); they win over the
        file and the cpu: section whatever order with_overrides and for_machine are called in. `flags` names
        how the user wrote each key (errors name it), e.g. {"traffic.rate": "--rate-per-adapter"}."""
        return self._again(machine=self.resolution.machine,
                           overrides=self.resolution.overrides + _as_overrides(overrides, flags))

    def for_machine(self, has_cuda: bool) -> "WorkloadSpec":
        """The spec to run on this machine: without CUDA the cpu: section applies (before any override)."""
        return self._again(machine="cuda" if has_cuda else "cpu", overrides=self.resolution.overrides)

    def engine_list(self) -> list[dict[str, Any]]:
        """Every engine entry as a mapping (name, kind, label, options or the external server's fields)."""
        return [e.to_dict() for e in self.engines]

    def _again(self, machine: str | None, overrides: tuple[Override, ...]) -> "WorkloadSpec":
        source = self.source or self.to_dict()
        return _resolve(source, Path(self.base_dir), self.resolution.file, machine, overrides)


def _as_overrides(overrides: dict[str, Any] | Iterable[Override], flags: dict[str, str] | None) -> tuple[Override, ...]:
    if isinstance(overrides, dict):
        return tuple(Override(k, v, (flags or {}).get(k, f"override {k}")) for k, v in overrides.items())
    return tuple(overrides)


def parse_set(items: Iterable[str], flag: str = "--set") -> tuple[Override, ...]:
    """--set KEY=VALUE items (VALUE read as YAML) -> overrides, in the order given."""
    import yaml

    out = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise WorkloadError(f"{flag} {item!r}: must be KEY=VALUE with a dotted KEY, e.g. {flag} traffic.rate=4")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise WorkloadError(f"{flag} {item}: the value is not valid YAML ({str(exc).splitlines()[0]})") from None
        out.append(Override(key, value, f"{flag} {item}"))
    return tuple(out)


def load_workload(source: str | Path | dict[str, Any], base_dir: str | Path | None = None, *,
                  machine: str | None = None, overrides: dict[str, Any] | Iterable[Override] = ()) -> WorkloadSpec:
    """Read and validate a workload (a YAML path or a mapping) once.

    machine: None keeps the cpu: section unapplied; "cpu" applies it, "cuda" ignores it, "auto" asks torch.
    overrides: dotted keys (or parse_set's result), applied last. A WorkloadError (exit 2) names the file and key,
    the cpu: section, or the --set flag that is wrong."""
    file = None
    if isinstance(source, (str, Path)):
        data, file = _read_yaml(Path(source)), str(source)
        base = Path(base_dir) if base_dir is not None else Path(source).resolve().parent
    else:
        data, base = copy.deepcopy(source), Path(base_dir if base_dir is not None else ".").resolve()
    if machine == "auto":
        machine = "cuda" if machine_has_cuda() else "cpu"
    if machine is not None and machine not in MACHINES:
        raise ValueError(f"machine={machine!r}; use None, 'auto', 'cpu' or 'cuda'")
    return _resolve(data, base, file, machine, _as_overrides(overrides, None))


def _read_yaml(path: Path) -> Any:
    import yaml

    if not path.is_file():
        raise WorkloadError(f"workload file {path} does not exist (see workloads/*.yaml for examples)")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise WorkloadError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None


# ---------------------------------------------------------------------------- resolution: file, cpu:, --set

def _resolve(data: Any, base: Path, file: str | None, machine: str | None,
             overrides: tuple[Override, ...]) -> WorkloadSpec:
    at = f"{file}: " if file else ""
    d = _blame(at, lambda: check_keys(data, TOP_KEYS, "workload"))
    main = {k: copy.deepcopy(v) for k, v in d.items() if k != "cpu"}
    cpu = copy.deepcopy(d.get("cpu"))
    cpu_sets = [o for o in overrides if o.key.split(".")[0] == "cpu"]
    sets = [o for o in overrides if o.key.split(".")[0] != "cpu"]
    # 1. the main section on its own: a typo there is named as the main section's
    file_spec = _blame(at, lambda: _parse(main, base))
    # 2. the cpu: section (with any --set cpu.KEY), checked on every machine
    cpu_keys = CPU_TOP_KEYS | CPU_TRAFFIC_KEYS
    if cpu is not None:
        _blame(at, lambda: check_keys(cpu, cpu_keys, "cpu"))
    if cpu_sets:
        cpu = _blame_sets(cpu_sets, lambda: check_keys(_apply_sets({"cpu": cpu or {}}, cpu_sets)["cpu"], cpu_keys,
                                                       "cpu"))
    cpu_dict, notes = main, []
    if cpu is not None:
        cpu_dict, notes = _apply_cpu(main, cpu)
        cpu_spec = _blame(at if not cpu_sets else " ".join(o.flag for o in cpu_sets) + ": ",
                          lambda: _parse(cpu_dict, base, external_model=file_spec.model),
                          after=" (with the cpu: section applied)", lead="cpu: ")
    # 3. every --set, last; an external engine's model is never the cpu: section's
    applied = machine == "cpu" and cpu is not None
    chosen = cpu_dict if applied else main
    external_model = _apply_sets(main, [o for o in sets if o.key == "model"]).get("model", DEFAULT_MODEL)
    final = _blame_sets(sets, lambda: _apply_sets(chosen, sets))
    spec = _blame_sets(sets, lambda: _parse(final, base, external_model=external_model)) if sets else \
        (cpu_spec if applied else file_spec)
    changes: list[tuple[str, Any, Any]] = []
    if applied:
        for key, was, now in _diff(file_spec.to_dict(), cpu_spec.to_dict(), cpu):
            winner = [o for o in sets if o.key == key or key.startswith(o.key + ".") or o.key.startswith(key + ".")]
            if winner:
                notes.append(f"the cpu: section's {key}: {_short(now)} is overridden by {winner[-1].flag}")
            else:
                changes.append((key, was, now))
        notes += [f"engine {e.label}: keeps model {e.external['model']!r} (the cpu: section never changes an "
                  "external engine's model)" for e in spec.engines
                  if e.kind == "external" and "model" in cpu and e.external.get("model") not in (None, spec.model)]
    resolution = Resolution(file=file, machine=machine, cpu_applied=applied, cpu_changes=tuple(changes),
                            notes=tuple(notes) if applied else (), overrides=overrides,
                            external_model=external_model)
    return dataclasses.replace(spec, cpu=None if machine else cpu,
                               resolution=resolution, base_dir=str(base), source=d)


def _blame(at: str, parse, after: str = "", lead: str = ""):
    try:
        return parse()
    except WorkloadError as exc:
        raise WorkloadError(f"{at}{lead}{exc}{after}") from None


def _blame_sets(sets: list[Override], parse):
    """Run parse; a WorkloadError is re-raised naming the --set flag(s) whose key it is about."""
    try:
        return parse()
    except WorkloadError as exc:
        msg = str(exc)
        key = msg.split(":", 1)[0].strip()
        if key == "workload":
            guilty = [o for o in sets if o.key.split(".")[0] not in TOP_KEYS]
        else:
            guilty = [o for o in sets if o.key == key or o.key.startswith(key + ".") or key.startswith(o.key + ".")]
        flags = " ".join(o.flag for o in (guilty or sets))
        raise WorkloadError(f"{flags}: {msg}") from None


def _apply_sets(d: dict[str, Any], sets: Iterable[Override]) -> dict[str, Any]:
    """d with every override's dotted key set (missing mappings created); traffic.rate and
    traffic.arrivals.burst_rate replace each other (each sets the mean rate)."""
    d = copy.deepcopy(d)
    for o in sets:
        parts = o.key.split(".")
        node = d
        for i, part in enumerate(parts[:-1]):
            nxt = node.setdefault(part, {}) if isinstance(node, dict) else None
            if not isinstance(nxt, dict):
                raise WorkloadError(f"{'.'.join(parts[:i + 1])}: is {nxt!r}, not a mapping; cannot set {o.key}")
            node = nxt
        node[parts[-1]] = copy.deepcopy(o.value)
        _one_rate(d, o.key)
    return d


def _one_rate(d: dict[str, Any], key: str) -> None:
    traffic = d.get("traffic")
    if not isinstance(traffic, dict):
        return
    arrivals = traffic.get("arrivals")
    if key == "traffic.rate" and isinstance(arrivals, dict):
        arrivals.pop("burst_rate", None)
    elif key == "traffic.arrivals.burst_rate":
        traffic.pop("rate", None)


def _is_preset(model: Any) -> bool:
    from engines.model.config import PRESETS

    return model in PRESETS


def _apply_cpu(main: dict[str, Any], cpu: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The main section with the cpu: section merged in (traffic shorthands; sections merged key by key).
    A model that is not a preset (a checkpoint folder, a served name) is the user's and is kept."""
    d, notes = copy.deepcopy(main), []
    for key, value in cpu.items():
        if key == "model" and not _is_preset(d.get("model", DEFAULT_MODEL)):
            notes.append(f"cpu: section's model {value!r} not applied: the workload's model {d['model']!r} is not a "
                         "preset (random weights of a shape) but a checkpoint or a served model, so it is kept")
        elif key in CPU_TRAFFIC_KEYS:
            traffic = d.setdefault("traffic", {})
            if isinstance(traffic, dict):
                traffic[key] = copy.deepcopy(value)
                _one_rate(d, f"traffic.{key}")
        elif key in MERGED_SECTIONS and isinstance(value, dict) and isinstance(d.get(key), dict):
            if key == "engine_options":
                for name, opts in value.items():
                    d[key][name] = {**d[key].get(name, {}), **opts}
            else:
                d[key] = {**d[key], **copy.deepcopy(value)}
        else:
            d[key] = copy.deepcopy(value)
    return d, notes


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict) or "kind" in d or not d:
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}" if not prefix else f"{prefix}.{k}"))
    return out


def _diff(before: dict[str, Any], after: dict[str, Any], cpu: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, before, after) for every leaf the cpu: section changed (engines only when it names them)."""
    a, b = _flatten({k: v for k, v in before.items() if k != "cpu"}), _flatten({k: v for k, v in after.items()
                                                                               if k != "cpu"})
    keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
    return [(k, a.get(k), b.get(k)) for k in keys if not k.startswith("engines") or "engines" in cpu]


# ---------------------------------------------------------------------------- one section of the file

def _parse(d: dict[str, Any], base: Path, external_model: str | None = None) -> WorkloadSpec:
    """The main section of a workload (no cpu: key) -> WorkloadSpec, every field checked."""
    check_keys(d, TOP_KEYS - {"cpu"}, "workload")
    engines = d.get("engines", list(DEFAULT_ENGINES))
    if not isinstance(engines, list) or not engines:
        raise WorkloadError(f"engines: {engines!r} must be a non-empty list")
    opts = d.get("engine_options", {})
    if not isinstance(opts, dict):
        raise WorkloadError(f"engine_options: {opts!r} must be a mapping engine name -> EngineConfig fields")
    from engines.registry import ENGINES

    for key in opts:
        if key not in ENGINES:
            raise WorkloadError(f"engine_options.{key}: not an in-process engine ({sorted(ENGINES)})")
    engine_options = {k: check_engine_options(v, f"engine_options.{k}") for k, v in opts.items()}
    model = _str(d, "model", "", default=DEFAULT_MODEL)
    spec = WorkloadSpec(
        name=_str(d, "name", ""),
        seed=_top_num(d, "seed", default=0, low=0, integer=True),
        duration_s=_top_num(d, "duration_s", low=0.0, low_open=True),
        warmup_s=_top_num(d, "warmup_s", default=0.0, low=0.0),
        model=model,
        adapters=AdaptersSpec.parse(d.get("adapters", {"count": 0}), base),
        traffic=TrafficSpec.parse(d["traffic"], base) if "traffic" in d else _missing("traffic"),
        slo=SLOSpec.parse(d.get("slo", {})),
        engines=tuple(parse_engine_entry(e, f"engines[{i}]", engine_options=engine_options,
                                         model=external_model or model) for i, e in enumerate(engines)),
        engine_options=engine_options,
        loadgen=LoadgenSpec.parse(d.get("loadgen", {})),
    )
    _check_model(spec)
    if spec.traffic.replay is None and spec.adapters.count == 0 and spec.traffic.base_fraction < 1.0:
        raise WorkloadError("adapters.count: 0 adapters, so every request goes to the base model; "
                            "set traffic.base_fraction: 1.0 to say so, or give adapters")
    return spec


def _top_num(d: dict[str, Any], key: str, *, low: float, low_open: bool = False,
             default: Any = dataclasses.MISSING, integer: bool = False) -> Any:
    """A top-level number: errors read "duration_s: -1 must be > 0"."""
    if key not in d:
        if default is dataclasses.MISSING:
            raise WorkloadError(f"{key}: missing (required)")
        return default
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise WorkloadError(f"{key}: {value!r} must be a finite number")
    if integer and value != int(value):
        raise WorkloadError(f"{key}: {value!r} must be an integer")
    if value < low or (low_open and value == low):
        raise WorkloadError(f"{key}: {value!r} must be {'>' if low_open else '>='} {low:g}")
    return int(value) if integer else float(value)


def _missing(key: str):
    raise WorkloadError(f"{key}: missing (required)")


def _check_model(spec: WorkloadSpec) -> None:
    if any(e.kind == "inprocess" for e in spec.engines) and not _is_preset(spec.model) \
            and not Path(spec.model).is_dir():
        from engines.model.config import PRESETS

        raise WorkloadError(f"model: {spec.model!r} is neither a preset ({sorted(PRESETS)}) nor a folder "
                            "with config.json and safetensors")
