"""The sections of a workload (adapters, traffic, slo, loadgen) as frozen dataclasses, each parsed and checked once."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import distributions as dist
from harness.distributions import WorkloadError, check_keys

_num = dist._num  # a number field; errors read "where.key: value must be ..."


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
            found = len(_checked_folders(path))
            count = _num(d, "count", "adapters", default=found, low=0, high=found, integer=True)
        else:
            count = _num(d, "count", "adapters", low=0, high=100_000, integer=True)
        return cls(count=count, ranks=tuple(ranks), targets=tuple(targets), path=path)

    def names(self) -> list[str]:
        """Adapter names as the server registers them (folder names)."""
        if self.path is not None:
            from engines.adapters.folders import adapter_folders

            return [p.name for p in adapter_folders(self.path)][: self.count]
        return [f"adapter-{i:04d}" for i in range(self.count)]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.count, "ranks": list(self.ranks), "targets": list(self.targets)}
        if self.path is not None:
            out["path"] = self.path
        return out


def _checked_folders(path: str) -> list[Path]:
    from engines.adapters.folders import check_adapter_folders

    try:
        return check_adapter_folders(path)
    except ValueError as exc:
        raise WorkloadError(f"adapters.path: {exc}") from None


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
