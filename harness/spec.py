"""Workload spec: the YAML schema as frozen dataclasses, strict validation, overrides and the `cpu:` section."""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import distributions as dist
from harness.distributions import WorkloadError, check_keys

__all__ = ["WorkloadError", "WorkloadSpec", "load_workload"]

ENGINE_KINDS = ("inprocess", "external", "stub")
# keys of the `cpu:` section that set a traffic field rather than a top-level one
CPU_TRAFFIC_KEYS = {"rate", "popularity", "arrivals", "prompt_tokens", "output_tokens", "base_fraction"}
CPU_TOP_KEYS = {"model", "duration_s", "warmup_s", "slo", "adapters", "engines", "engine_options", "loadgen"}
MERGED_SECTIONS = {"adapters", "slo", "loadgen", "engine_options"}


def _num(d, key, where, **kw):
    return dist._num(d, key, where, **kw)


def _str(d: dict[str, Any], key: str, where: str, default: Any = dataclasses.MISSING) -> Any:
    if key not in d:
        if default is dataclasses.MISSING:
            raise WorkloadError(f"{where}{key}: missing (required)")
        return default
    value = d[key]
    if value is None and default is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise WorkloadError(f"{where}{key}: {value!r} must be a non-empty string")
    return value


def _path(value: str, base_dir: Path) -> str:
    p = Path(value).expanduser()
    return str((p if p.is_absolute() else base_dir / p).resolve())


@dataclass(frozen=True)
class AdaptersSpec:
    """Synthetic adapters (count, ranks round-robin, targets) or a folder of real PEFT adapters (path)."""

    count: int = 0
    ranks: tuple[int, ...] = (8,)
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    path: str | None = None

    @classmethod
    def parse(cls, d: Any, base_dir: Path) -> "AdaptersSpec":
        from engines.model.config import LORA_TARGETS

        check_keys(d, {"count", "ranks", "targets", "path"}, "adapters")
        path = _str(d, "path", "adapters.", default=None)
        ranks = d.get("ranks", [8])
        if not isinstance(ranks, list) or not ranks:
            raise WorkloadError(f"adapters.ranks: {ranks!r} must be a non-empty list of integers")
        for i, r in enumerate(ranks):
            if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= 1024:
                raise WorkloadError(f"adapters.ranks[{i}]: {r!r} must be an integer in [1, 1024]")
        targets = d.get("targets", list(cls.targets))
        if not isinstance(targets, list) or not targets:
            raise WorkloadError(f"adapters.targets: {targets!r} must be a non-empty list of module names")
        for i, t in enumerate(targets):
            if t not in LORA_TARGETS:
                raise WorkloadError(f"adapters.targets[{i}]: {t!r} is not one of {list(LORA_TARGETS)}")
        if path is not None:
            path = _path(path, base_dir)
            if not Path(path).is_dir():
                raise WorkloadError(f"adapters.path: {path} is not a folder; give a folder whose sub-folders "
                                    "are PEFT adapters (adapter_config.json + adapter_model.safetensors)")
            found = len(adapter_folders(path))
            count = _num(d, "count", "adapters", default=found, low=0, high=found, integer=True)
        else:
            count = _num(d, "count", "adapters", low=0, high=100_000, integer=True)
        return cls(count=count, ranks=tuple(ranks), targets=tuple(targets), path=path)

    def names(self) -> list[str]:
        """Adapter names as the server registers them (folder names)."""
        if self.path is not None:
            return [p.name for p in adapter_folders(self.path)][: self.count]
        return [f"adapter-{i:04d}" for i in range(self.count)]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.count, "ranks": list(self.ranks), "targets": list(self.targets)}
        if self.path is not None:
            out["path"] = self.path
        return out


def adapter_folders(path: str | Path) -> list[Path]:
    return sorted(p for p in Path(path).iterdir() if (p / "adapter_config.json").is_file())


@dataclass(frozen=True)
class ReplaySpec:
    """Replay a CSV trace (timestamp, adapter, prompt_tokens, output_tokens); t = (timestamp - first) * time_scale."""

    path: str
    time_scale: float = 1.0
    map_adapters: bool = True  # replayed names -> adapter-0000... in order of first appearance

    @classmethod
    def parse(cls, d: Any, base_dir: Path) -> "ReplaySpec":
        check_keys(d, {"path", "time_scale", "map_adapters"}, "traffic.replay")
        path = _path(_str(d, "path", "traffic.replay."), base_dir)
        if not Path(path).is_file():
            raise WorkloadError(f"traffic.replay.path: {path} does not exist; give a CSV with columns "
                                "timestamp, adapter, prompt_tokens, output_tokens")
        mapping = d.get("map_adapters", True)
        if not isinstance(mapping, bool):
            raise WorkloadError(f"traffic.replay.map_adapters: {mapping!r} must be true or false")
        return cls(path=path, time_scale=_num(d, "time_scale", "traffic.replay", default=1.0, low=0.0,
                                              low_open=True), map_adapters=mapping)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrafficSpec:
    rate: float | None = None  # total requests/s, mean over the run
    base_fraction: float = 0.0  # share of requests for the base model (no adapter)
    popularity: Any = field(default_factory=dist.Uniform)
    arrivals: Any = field(default_factory=dist.Poisson)
    prompt_tokens: Any = field(default_factory=lambda: dist.Fixed(128))
    output_tokens: Any = field(default_factory=lambda: dist.Fixed(64))
    replay: ReplaySpec | None = None

    @classmethod
    def parse(cls, d: Any, base_dir: Path) -> "TrafficSpec":
        check_keys(d, {"rate", "base_fraction", "popularity", "arrivals", "prompt_tokens", "output_tokens",
                       "replay"}, "traffic")
        if "replay" in d:
            extra = sorted(set(d) & {"popularity", "arrivals", "prompt_tokens", "output_tokens", "base_fraction"})
            if extra:
                raise WorkloadError(f"traffic.replay: a replayed trace sets {extra} itself; remove them")
            if "rate" in d:
                raise WorkloadError("traffic.rate: a replayed trace sets its own rate; use "
                                    "traffic.replay.time_scale to speed it up or slow it down")
            return cls(rate=None, replay=ReplaySpec.parse(d["replay"], base_dir))
        arrivals = dist.parse_arrivals(d.get("arrivals", {"kind": "poisson"}))
        burst = getattr(arrivals, "burst_rate", None)
        if burst is not None and "rate" in d:
            raise WorkloadError("traffic.rate: give either traffic.rate or traffic.arrivals.burst_rate, not both "
                                f"(with burst_rate={burst:g} the mean rate is {arrivals.mean_rate(None):g}/s)")
        rate = None if burst is not None else _num(d, "rate", "traffic", low=0.0, low_open=True)
        return cls(
            rate=rate,
            base_fraction=_num(d, "base_fraction", "traffic", default=0.0, low=0.0, high=1.0),
            popularity=dist.parse_popularity(d.get("popularity", {"kind": "uniform"})),
            arrivals=arrivals,
            prompt_tokens=dist.parse_lengths(d.get("prompt_tokens", {"kind": "fixed", "value": 128}),
                                             "traffic.prompt_tokens", base_dir),
            output_tokens=dist.parse_lengths(d.get("output_tokens", {"kind": "fixed", "value": 64}),
                                             "traffic.output_tokens", base_dir),
        )

    @property
    def mean_rate(self) -> float | None:
        return None if self.replay else self.arrivals.mean_rate(self.rate)

    def to_dict(self) -> dict[str, Any]:
        if self.replay is not None:
            return {"replay": self.replay.to_dict()}
        out: dict[str, Any] = {}
        if self.rate is not None:
            out["rate"] = self.rate
        out.update(base_fraction=self.base_fraction, popularity=dist.to_dict(self.popularity),
                   arrivals=dist.to_dict(self.arrivals), prompt_tokens=dist.to_dict(self.prompt_tokens),
                   output_tokens=dist.to_dict(self.output_tokens))
        return out


@dataclass(frozen=True)
class SLOSpec:
    """Latency targets a request must meet to count towards goodput (None: no target)."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None
    attainment: float | None = None  # fraction of requests that must meet them (capacity search; None: 0.9)

    @classmethod
    def parse(cls, d: Any) -> "SLOSpec":
        check_keys(d, {"ttft_s", "tpot_s", "e2e_s", "attainment"}, "slo")
        out = {k: _num(d, k, "slo", default=None, low=0.0, low_open=True) for k in ("ttft_s", "tpot_s", "e2e_s")}
        out["attainment"] = _num(d, "attainment", "slo", default=None, low=0.0, low_open=True, high=1.0)
        return cls(**out)

    def limits(self) -> dict[str, float]:
        """The latency targets only (what a request must meet)."""
        return {k: v for k, v in self.to_dict().items() if k != "attainment"}

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class LoadgenSpec:
    """How the Locust process runs the trace."""

    users: int = 512  # user greenlets per worker process: the most requests in flight at once
    workers: int = 1  # Locust worker processes (1: one local runner, no master)
    request_timeout_s: float = 300.0  # a request still streaming after this is recorded as a timeout
    drain_timeout_s: float = 60.0  # after the last send, wait this long for requests in flight
    max_lag_p99_s: float = 0.05  # a run whose p99 schedule lag exceeds this is invalid (client fell behind)

    @classmethod
    def parse(cls, d: Any) -> "LoadgenSpec":
        check_keys(d, {f.name for f in dataclasses.fields(cls)}, "loadgen")
        return cls(users=_num(d, "users", "loadgen", default=cls.users, low=1, high=100_000, integer=True),
                   workers=_num(d, "workers", "loadgen", default=cls.workers, low=1, high=256, integer=True),
                   request_timeout_s=_num(d, "request_timeout_s", "loadgen", default=cls.request_timeout_s,
                                          low=0.0, low_open=True),
                   drain_timeout_s=_num(d, "drain_timeout_s", "loadgen", default=cls.drain_timeout_s, low=0.0),
                   max_lag_p99_s=_num(d, "max_lag_p99_s", "loadgen", default=cls.max_lag_p99_s, low=0.0,
                                      low_open=True))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _parse_engine(e: Any, i: int) -> str | dict[str, Any]:
    from engines.config import EngineConfig
    from engines.registry import ENGINES

    where = f"engines[{i}]"
    if isinstance(e, str):
        if e not in ENGINES:
            raise WorkloadError(f"{where}: {e!r} is not an in-process engine ({sorted(ENGINES)}); for another "
                                "server write {name: ..., kind: external, url: ...} or {kind: external, preset: ...}")
        return e
    if not isinstance(e, dict):
        raise WorkloadError(f"{where}: {e!r} must be an engine name or a mapping")
    kind = e.get("kind", "inprocess")
    if kind not in ENGINE_KINDS:
        raise WorkloadError(f"{where}.kind: {kind!r} is not one of {list(ENGINE_KINDS)}")
    if kind == "inprocess":
        check_keys(e, {"name", "kind", "options", "label"}, where)
        if e.get("name") not in ENGINES:
            raise WorkloadError(f"{where}.name: {e.get('name')!r} is not one of {sorted(ENGINES)}")
        _engine_options(e.get("options", {}), f"{where}.options")
    elif kind == "external":
        from engines.external import ExternalSpec

        check_keys(e, {f.name for f in dataclasses.fields(ExternalSpec)} | {"name", "kind", "label"}, where)
        if "url" not in e and "preset" not in e and "command" not in e:
            raise WorkloadError(f"{where}: an external engine needs a url to attach to, or a preset or command "
                                "to launch")
        if "url" in e and not str(e["url"]).startswith(("http://", "https://")):
            raise WorkloadError(f"{where}.url: {e['url']!r} must start with http:// or https://")
    else:
        check_keys(e, {"name", "kind", "options", "label"}, where)
    out = copy.deepcopy(e)
    out.setdefault("kind", kind)
    return out


def _engine_options(opts: Any, where: str) -> dict[str, Any]:
    from engines.config import EngineConfig

    if not isinstance(opts, dict):
        raise WorkloadError(f"{where}: {opts!r} must be a mapping of EngineConfig fields")
    fixed = sorted(set(opts) & {"engine", "adapters"})
    if fixed:
        raise WorkloadError(f"{where}: {fixed} are set by the harness from the workload; remove them")
    try:
        EngineConfig.from_dict(dict(opts))
    except (ValueError, TypeError) as exc:
        raise WorkloadError(f"{where}: {exc}") from None
    return copy.deepcopy(opts)


TOP_KEYS = {"name", "seed", "duration_s", "warmup_s", "model", "adapters", "traffic", "slo", "engines",
            "engine_options", "loadgen", "cpu"}


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
    engines: tuple[Any, ...]
    engine_options: dict[str, dict[str, Any]]
    loadgen: LoadgenSpec
    cpu: dict[str, Any] | None = None  # overrides applied on machines without CUDA
    base_dir: str = field(default=".", compare=False, repr=False)

    @property
    def horizon_s(self) -> float:
        return self.warmup_s + self.duration_s

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "seed": self.seed, "duration_s": self.duration_s, "warmup_s": self.warmup_s,
               "model": self.model, "adapters": self.adapters.to_dict(), "traffic": self.traffic.to_dict(),
               "slo": self.slo.to_dict(), "engines": copy.deepcopy(list(self.engines)),
               "engine_options": copy.deepcopy(self.engine_options), "loadgen": self.loadgen.to_dict()}
        if self.cpu is not None:
            out["cpu"] = copy.deepcopy(self.cpu)
        return out

    def with_overrides(self, overrides: dict[str, Any]) -> "WorkloadSpec":
        """A new validated spec with dotted keys replaced, e.g. {"traffic.rate": 4.0, "adapters.count": 100}."""
        d = self.to_dict()
        for key, value in overrides.items():
            parts = key.split(".")
            node = d
            for i, part in enumerate(parts[:-1]):
                nxt = node.get(part)
                if not isinstance(nxt, dict):
                    where = ".".join(parts[: i + 1])
                    raise WorkloadError(f"{key}: cannot override, {where} is {'missing' if nxt is None else 'not a mapping'}")
                node = nxt
            node[parts[-1]] = copy.deepcopy(value)
        return load_workload(d, base_dir=self.base_dir)

    def for_machine(self, has_cuda: bool) -> "WorkloadSpec":
        """The spec to run here: without CUDA the `cpu:` section is applied (and dropped)."""
        if has_cuda or self.cpu is None:
            return self
        return load_workload(apply_cpu(self.to_dict()), base_dir=self.base_dir)

    def engine_list(self) -> list[dict[str, Any]]:
        """Every engine as a dict with name, kind and (in-process) options merged from engine_options."""
        out = []
        for e in self.engines:
            e = {"name": e, "kind": "inprocess"} if isinstance(e, str) else copy.deepcopy(e)
            if e["kind"] == "inprocess":
                e["options"] = {**self.engine_options.get(e["name"], {}), **e.get("options", {})}
            e.setdefault("name", e.get("preset") or "external")
            out.append(e)
        return out


def apply_cpu(d: dict[str, Any]) -> dict[str, Any]:
    """Merge the `cpu:` section of a workload mapping into it (traffic shorthands and sections deep-merged)."""
    d = copy.deepcopy(d)
    cpu = d.pop("cpu", None) or {}
    for key, value in cpu.items():
        if key in CPU_TRAFFIC_KEYS:
            traffic = d.setdefault("traffic", {})
            if key == "rate" and isinstance(traffic.get("arrivals"), dict):
                traffic["arrivals"].pop("burst_rate", None)
            traffic[key] = copy.deepcopy(value)
        elif key in MERGED_SECTIONS and isinstance(value, dict) and isinstance(d.get(key), dict):
            if key == "engine_options":
                for name, opts in value.items():
                    d[key][name] = {**d[key].get(name, {}), **opts}
            else:
                d[key] = {**d[key], **value}
        else:
            d[key] = copy.deepcopy(value)
    return d


def load_workload(source: str | Path | dict[str, Any], base_dir: str | Path | None = None) -> WorkloadSpec:
    """Read and validate a workload (a YAML path or a mapping); WorkloadError names the field that is wrong."""
    if isinstance(source, (str, Path)):
        import yaml

        path = Path(source)
        if not path.is_file():
            raise WorkloadError(f"workload file {path} does not exist (see workloads/*.yaml for examples)")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise WorkloadError(f"{path}: not valid YAML ({exc})") from None
        base = Path(base_dir) if base_dir is not None else path.resolve().parent
    else:
        data, base = copy.deepcopy(source), Path(base_dir if base_dir is not None else ".").resolve()
    d = check_keys(data, TOP_KEYS, "workload")
    name = _str(d, "name", "")
    seed = _wrap_num(d, "seed", default=0, low=0, integer=True)
    cpu = d.get("cpu")
    if cpu is not None:
        check_keys(cpu, CPU_TOP_KEYS | CPU_TRAFFIC_KEYS, "cpu")
        try:
            load_workload(apply_cpu(d), base_dir=base)  # the cpu variant must be valid too
        except WorkloadError as exc:
            raise WorkloadError(f"cpu: applying the cpu section gives an invalid workload: {exc}") from None
    engines = d.get("engines", ["multilora"])
    if not isinstance(engines, list) or not engines:
        raise WorkloadError(f"engines: {engines!r} must be a non-empty list")
    opts = d.get("engine_options", {})
    if not isinstance(opts, dict):
        raise WorkloadError(f"engine_options: {opts!r} must be a mapping engine name -> EngineConfig fields")
    from engines.registry import ENGINES

    for key in opts:
        if key not in ENGINES:
            raise WorkloadError(f"engine_options.{key}: not an in-process engine ({sorted(ENGINES)})")
    spec = WorkloadSpec(
        name=name,
        seed=seed,
        duration_s=_wrap_num(d, "duration_s", low=0.0, low_open=True),
        warmup_s=_wrap_num(d, "warmup_s", default=0.0, low=0.0),
        model=_str(d, "model", "", default="tiny"),
        adapters=AdaptersSpec.parse(d.get("adapters", {"count": 0}), base),
        traffic=TrafficSpec.parse(d.get("traffic"), base) if "traffic" in d else _missing("traffic"),
        slo=SLOSpec.parse(d.get("slo", {})),
        engines=tuple(_parse_engine(e, i) for i, e in enumerate(engines)),
        engine_options={k: _engine_options(v, f"engine_options.{k}") for k, v in opts.items()},
        loadgen=LoadgenSpec.parse(d.get("loadgen", {})),
        cpu=copy.deepcopy(cpu),
        base_dir=str(base),
    )
    _check_model(spec)
    if spec.traffic.replay is None and spec.adapters.count == 0 and spec.traffic.base_fraction < 1.0:
        raise WorkloadError("adapters.count: 0 adapters, so every request goes to the base model; "
                            "set traffic.base_fraction: 1.0 to say so, or give adapters")
    return spec


def _wrap_num(d: dict[str, Any], key: str, *, low: float, low_open: bool = False,
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
    from engines.model.config import PRESETS

    inprocess = any(isinstance(e, str) or e.get("kind") == "inprocess" for e in spec.engines)
    if inprocess and spec.model not in PRESETS and not Path(spec.model).is_dir():
        raise WorkloadError(f"model: {spec.model!r} is neither a preset ({sorted(PRESETS)}) nor a folder "
                            "with config.json and safetensors")
