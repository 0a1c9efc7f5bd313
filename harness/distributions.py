"""Traffic distributions of a workload: adapter popularity, per-adapter arrivals and token lengths, by registry."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from harness.errors import UsageError


class WorkloadError(UsageError, ValueError):
    """A workload is wrong (bad input, exit 2); the message names the dotted field, the value and the problem."""


# ---------------------------------------------------------------------------- field checks

def _num(d: dict[str, Any], key: str, where: str, *, default: Any = dataclasses.MISSING, low: float | None = None,
         low_open: bool = False, high: float | None = None, integer: bool = False) -> Any:
    """Read d[key] as a number (or the default), checking its type and bounds; errors name `where.key`."""
    if key not in d:
        if default is dataclasses.MISSING:
            raise WorkloadError(f"{where}.{key}: missing (required)")
        return default
    value = d[key]
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WorkloadError(f"{where}.{key}: {value!r} must be a number")
    if integer and float(value) != int(value):
        raise WorkloadError(f"{where}.{key}: {value!r} must be an integer")
    if not math.isfinite(float(value)):
        raise WorkloadError(f"{where}.{key}: {value!r} must be finite")
    if low is not None and (value <= low if low_open else value < low):
        raise WorkloadError(f"{where}.{key}: {value!r} must be {'>' if low_open else '>='} {low:g}")
    if high is not None and value > high:
        raise WorkloadError(f"{where}.{key}: {value!r} must be <= {high:g}")
    return int(value) if integer else float(value)


def check_keys(d: Any, allowed: set[str], where: str) -> dict[str, Any]:
    """d must be a mapping with only `allowed` keys."""
    if not isinstance(d, dict):
        raise WorkloadError(f"{where}: {d!r} must be a mapping")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise WorkloadError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return d


def _kind(d: Any, registry: dict[str, type], where: str) -> type:
    if not isinstance(d, dict):
        raise WorkloadError(f"{where}: {d!r} must be a mapping with a 'kind' ({', '.join(sorted(registry))})")
    kind = d.get("kind")
    if kind not in registry:
        raise WorkloadError(f"{where}.kind: {kind!r} is not one of {sorted(registry)}")
    return registry[kind]


def _as_dict(obj: Any) -> dict[str, Any]:
    out = {"kind": obj.kind}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is not None:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


# ---------------------------------------------------------------------------- popularity

@dataclass(frozen=True)
class Uniform:
    kind: ClassVar[str] = "uniform"

    @classmethod
    def parse(cls, d: dict[str, Any], where: str) -> "Uniform":
        check_keys(d, {"kind"}, where)
        return cls()

    def weights(self, n: int) -> np.ndarray:
        return np.full(n, 1.0 / n)


@dataclass(frozen=True)
class Zipf:
    """Adapter i (0-based) gets weight 1/(i+1)^s."""

    s: float
    kind: ClassVar[str] = "zipf"

    @classmethod
    def parse(cls, d: dict[str, Any], where: str) -> "Zipf":
        check_keys(d, {"kind", "s"}, where)
        return cls(s=_num(d, "s", where, low=0.0))

    def weights(self, n: int) -> np.ndarray:
        w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** self.s
        return w / w.sum()


@dataclass(frozen=True)
class Power:
    """S-LoRA's power law: adapter = floor(n * X), X ~ np.random.power(alpha); P(i) = ((i+1)/n)^a - (i/n)^a."""

    alpha: float
    kind: ClassVar[str] = "power"

    @classmethod
    def parse(cls, d: dict[str, Any], where: str) -> "Power":
        check_keys(d, {"kind", "alpha"}, where)
        return cls(alpha=_num(d, "alpha", where, low=0.0, low_open=True))

    def weights(self, n: int) -> np.ndarray:
        edges = (np.arange(n + 1, dtype=np.float64) / n) ** self.alpha
        w = np.diff(edges)
        return w / w.sum()


@dataclass(frozen=True)
class Weights:
    """Explicit weights, one per adapter in order (normalised)."""

    weights_: tuple[float, ...]
    kind: ClassVar[str] = "weights"

    @classmethod
    def parse(cls, d: dict[str, Any], where: str) -> "Weights":
        check_keys(d, {"kind", "weights"}, where)
        ws = d.get("weights")
        if not isinstance(ws, list) or not ws:
            raise WorkloadError(f"{where}.weights: {ws!r} must be a non-empty list of numbers")
        for i, w in enumerate(ws):
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0 or not math.isfinite(w):
                raise WorkloadError(f"{where}.weights[{i}]: {w!r} must be a finite number >= 0")
        if sum(ws) <= 0:
            raise WorkloadError(f"{where}.weights: {ws!r} must have a positive sum")
        return cls(weights_=tuple(float(w) for w in ws))

    def weights(self, n: int) -> np.ndarray:
        if len(self.weights_) != n:
            raise WorkloadError(f"traffic.popularity.weights: {len(self.weights_)} weights given for {n} adapters; "
                                "give one weight per adapter")
        w = np.asarray(self.weights_, dtype=np.float64)
        return w / w.sum()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "weights", "weights": list(self.weights_)}


POPULARITY: dict[str, type] = {c.kind: c for c in (Uniform, Zipf, Power, Weights)}


def parse_popularity(d: Any, where: str = "traffic.popularity"):
    return _kind(d, POPULARITY, where).parse(d, where)


# ---------------------------------------------------------------------------- arrivals (one adapter's process)

@dataclass(frozen=True)
class Poisson:
    kind: ClassVar[str] = "poisson"

    @classmethod
    def parse(cls, d: dict[str, Any], where: str) -> "Poisson":
        check_keys(d, {"kind"}, where)
        return cls()

    def mean_rate(self, rate: float | None) -> float | None:
        return rate

    def times(self, rng: np.random.Generator, rate: float, horizon: float) -> np.ndarray:
        if rate <= 0:
            return np.empty(0)
        n = rng.poisson(rate * horizon)
        return np.sort(rng.uniform(0.0, horizon, n))


@dataclass(frozen=True)
class Gamma:
    """Renewal process with Gamma gaps: shape 1/cv^2, scale cv^2/rate (S-LoRA); cv=1 is Poisson."""

    cv: float
    kind: ClassVar[str] = "gamma"

    @classmethod
    def parse(cls, d: dict[str, Any], where: str) -> "Gamma":
        check_keys(d, {"kind", "cv"}, where)
        return cls(cv=_num(d, "cv", where, low=0.0, low_open=True))

    def mean_rate(self, rate: float | None) -> float | None:
        return rate

    def times(self, rng: np.random.Generator, rate: float, horizon: float) -> np.ndarray:
        if rate <= 0:
            return np.empty(0)
        shape, scale = 1.0 / self.cv ** 2, self.cv ** 2 / rate
        # start in a stationary state: the first gap is a fraction of a full gap
        out: list[np.ndarray] = []
        t = -rng.gamma(shape, scale) * rng.uniform()
        while t < horizon:
            n = int(max(16, 1.5 * rate * (horizon - t) + 16))
            ts = t + np.cumsum(rng.gamma(shape, scale, n))
            out.append(ts)
            t = ts[-1]
        ts = np.concatenate(out)
        return ts[(ts >= 0) & (ts < horizon)]


@dataclass(frozen=True)
class OnOff:
    """Markov-modulated Poisson: exponential on/off periods; Poisson at the burst rate while on, silent while off.

    burst_rate (aggregate, requests/s while on) is derived as rate * (on + off) / on unless given.
    """

    mean_on_s: float
    mean_off_s: float
    burst_rate: float | None = None
    kind: ClassVar[str] = "onoff"

    @classmethod
    def parse(cls, d: dict[str, Any], where: str) -> "OnOff":
        check_keys(d, {"kind", "mean_on_s", "mean_off_s", "burst_rate"}, where)
        return cls(mean_on_s=_num(d, "mean_on_s", where, low=0.0, low_open=True),
                   mean_off_s=_num(d, "mean_off_s", where, low=0.0),
                   burst_rate=_num(d, "burst_rate", where, default=None, low=0.0, low_open=True))

    @property
    def on_fraction(self) -> float:
        return self.mean_on_s / (self.mean_on_s + self.mean_off_s)

    def mean_rate(self, rate: float | None) -> float | None:
        return self.burst_rate * self.on_fraction if self.burst_rate is not None else rate

    def times(self, rng: np.random.Generator, rate: float, horizon: float) -> np.ndarray:
        """`rate` is this adapter's mean rate; the on-state rate keeps that mean."""
        if rate <= 0:
            return np.empty(0)
        if self.mean_off_s == 0:
            return Poisson().times(rng, rate, horizon)
        on_rate = rate / self.on_fraction
        on = bool(rng.uniform() < self.on_fraction)  # stationary start; exponential periods are memoryless
        t, out = 0.0, []
        while t < horizon:
            length = rng.exponential(self.mean_on_s if on else self.mean_off_s)
            end = min(t + length, horizon)
            if on:
                n = rng.poisson(on_rate * (end - t))
                out.append(rng.uniform(t, end, n))
            t, on = t + length, not on
        return np.sort(np.concatenate(out)) if out else np.empty(0)


ARRIVALS: dict[str, type] = {c.kind: c for c in (Poisson, Gamma, OnOff)}


def parse_arrivals(d: Any, where: str = "traffic.arrivals"):
    return _kind(d, ARRIVALS, where).parse(d, where)


# ---------------------------------------------------------------------------- token lengths

@dataclass(frozen=True)
class Fixed:
    value: int
    kind: ClassVar[str] = "fixed"

    @classmethod
    def parse(cls, d: dict[str, Any], where: str, base_dir: Path) -> "Fixed":
        check_keys(d, {"kind", "value"}, where)
        return cls(value=_num(d, "value", where, low=1, integer=True))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, self.value, dtype=np.int64)


@dataclass(frozen=True)
class UniformLen:
    """Integers uniform in [low, high], both included."""

    low: int
    high: int
    kind: ClassVar[str] = "uniform"

    @classmethod
    def parse(cls, d: dict[str, Any], where: str, base_dir: Path) -> "UniformLen":
        check_keys(d, {"kind", "low", "high"}, where)
        low = _num(d, "low", where, low=1, integer=True)
        high = _num(d, "high", where, low=1, integer=True)
        if high < low:
            raise WorkloadError(f"{where}.high: {high} must be >= low ({low})")
        return cls(low=low, high=high)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(self.low, self.high + 1, n, dtype=np.int64)


@dataclass(frozen=True)
class LogNormal:
    """Lognormal with the given mean (tokens) and sigma of the underlying normal, rounded and clipped to [min, max]."""

    mean: float
    sigma: float
    min: int = 1
    max: int = 1_000_000
    kind: ClassVar[str] = "lognormal"

    @classmethod
    def parse(cls, d: dict[str, Any], where: str, base_dir: Path) -> "LogNormal":
        check_keys(d, {"kind", "mean", "sigma", "min", "max"}, where)
        out = cls(mean=_num(d, "mean", where, low=1.0), sigma=_num(d, "sigma", where, low=0.0),
                  min=_num(d, "min", where, default=1, low=1, integer=True),
                  max=_num(d, "max", where, default=1_000_000, low=1, integer=True))
        if out.max < out.min:
            raise WorkloadError(f"{where}.max: {out.max} must be >= min ({out.min})")
        return out

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        mu = math.log(self.mean) - self.sigma ** 2 / 2
        x = np.rint(rng.lognormal(mu, self.sigma, n))
        return np.clip(x, self.min, self.max).astype(np.int64)


@dataclass(frozen=True)
class FromFile:
    """Sampled with replacement from a file: one integer per line, or a CSV column."""

    path: str
    column: str | None = None
    kind: ClassVar[str] = "file"

    @classmethod
    def parse(cls, d: dict[str, Any], where: str, base_dir: Path) -> "FromFile":
        check_keys(d, {"kind", "path", "column"}, where)
        if not isinstance(d.get("path"), str):
            raise WorkloadError(f"{where}.path: {d.get('path')!r} must be a file path")
        path = Path(d["path"])
        path = path if path.is_absolute() else (base_dir / path)
        column = d.get("column")
        out = cls(path=str(path.resolve()), column=column)
        values = out.values(where)
        if len(values) == 0:
            raise WorkloadError(f"{where}.path: {path} holds no lengths")
        return out

    def values(self, where: str = "lengths") -> np.ndarray:
        import pandas as pd

        path = Path(self.path)
        if not path.is_file():
            raise WorkloadError(f"{where}.path: {path} does not exist; give a file with one length per line "
                                "or a CSV with a column")
        try:
            if self.column is not None:
                series = pd.read_csv(path)[self.column]
            else:
                series = pd.read_csv(path, header=None).iloc[:, 0]
            values = series.to_numpy(dtype=np.float64)
        except KeyError:
            raise WorkloadError(f"{where}.column: {self.column!r} is not a column of {path}") from None
        except ValueError as exc:
            raise WorkloadError(f"{where}.path: {path} does not hold numbers ({exc})") from None
        if (values < 1).any() or not np.isfinite(values).all():
            raise WorkloadError(f"{where}.path: {path} holds a length < 1 or not finite")
        return values.astype(np.int64)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        values = self.values()
        return values[rng.integers(0, len(values), n)]


LENGTHS: dict[str, type] = {c.kind: c for c in (Fixed, UniformLen, LogNormal, FromFile)}


def parse_lengths(d: Any, where: str, base_dir: Path):
    return _kind(d, LENGTHS, where).parse(d, where, base_dir)


def to_dict(obj: Any) -> dict[str, Any]:
    """A distribution back to its YAML mapping."""
    return obj.to_dict() if hasattr(obj, "to_dict") else _as_dict(obj)
