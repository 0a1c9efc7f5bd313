"""A replica's service model (decode step vs batch and distinct adapters, prefill per token, adapter load, slots),
fitted from a run directory's per-request token times."""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from engines.config import EngineConfig
from harness.errors import UsageError
from harness.simulate.samples import counter_by_replica, counter_total, has_counter
from harness.store import load_run

MAX_FIT_GAPS = 60_000  # token gaps used in the least-squares fit (a sample when a run has more)
# what a simulated fleet is and is not, printed beside its figures
SCOPE = ("Simulated replicas are the fitted engine behind the router, with no serving layer between: the relay of "
         "token chunks through Ray Serve (streaming generator, ingress, proxy) is not modelled, so a measured Ray "
         "fleet can serve less (an H200 pair, unbatched relay: 1,282 tok/s measured vs 4,512 simulated; "
         "docs/fleet.md).")


@dataclass(frozen=True)
class ServiceModel:
    """Times in seconds. A decode step of b sequences over a distinct adapters takes
    step_s + per_seq_s*b + per_adapter_s*a; a prefill step of k sequences with n prompt tokens in all takes
    prefill_s + per_prompt_token_s*n + per_prefill_seq_s*k. With mixed steps, a step that admits requests
    takes the decode step of the running ones plus that prefill cost."""

    step_s: float
    per_seq_s: float
    per_adapter_s: float
    prefill_s: float
    per_prompt_token_s: float
    per_prefill_seq_s: float = 0.0
    latency_s: float = 0.0  # added to first token and end without holding the engine (HTTP, streaming)
    adapter_load_s: float = 0.0
    async_loads: bool = True  # CUDA: a load copies beside the steps; CPU: it runs inside the step that needs it
    mixed_steps: bool = False  # a step decodes the running requests and prefills the admitted ones together
    step_tokens: int = 2048  # mixed steps: decode tokens + prompt tokens in one step
    slots: int = 256  # sequences running at once (max_num_seqs)
    max_batched_tokens: int = 8192  # prompt tokens in one prefill step
    adapter_slots: int = 64  # adapters one replica keeps resident (its LRU; gpu_slots)
    max_loras: int = 64  # distinct adapters among the running requests (the scheduler's limit)
    source: str = ""  # the run it was fitted from

    def decode_s(self, batch: int, adapters: int) -> float:
        return self.step_s + self.per_seq_s * batch + self.per_adapter_s * adapters

    def prefill_step_s(self, tokens: int, seqs: int = 1) -> float:
        return self.prefill_s + self.per_prompt_token_s * tokens + self.per_prefill_seq_s * seqs

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (f"decode step {self.step_s * 1e3:.2f} ms + {self.per_seq_s * 1e3:.3f} ms/seq + "
                f"{self.per_adapter_s * 1e3:.3f} ms/adapter; prefill step {self.prefill_s * 1e3:.1f} ms + "
                f"{self.per_prompt_token_s * 1e6:.1f} us/token + {self.per_prefill_seq_s * 1e3:.2f} ms/seq; latency "
                f"{self.latency_s * 1e3:.1f} ms; adapter load {self.adapter_load_s * 1e3:.2f} ms; {self.slots} slots, "
                f"{self.adapter_slots} adapter slots, {self.max_loras} adapters running at most; "
                + (f"mixed steps of {self.step_tokens} tokens" if self.mixed_steps else "prefill-first steps"))

    def scaled(self, factor: float) -> "ServiceModel":
        """Every step cost (decode and prefill terms) times factor; latency and loads unchanged."""
        costs = ("step_s", "per_seq_s", "per_adapter_s", "prefill_s", "per_prompt_token_s", "per_prefill_seq_s")
        return self.with_(**{k: getattr(self, k) * factor for k in costs})

    def with_(self, **changes) -> "ServiceModel":
        return ServiceModel(**{**asdict(self), **changes})


def _running_at(starts: np.ndarray, ends: np.ndarray, t: np.ndarray) -> np.ndarray:
    """How many intervals [start, end) contain each time in t."""
    return np.searchsorted(np.sort(starts), t, side="right") - np.searchsorted(np.sort(ends), t, side="right")


def _gaps(ok: pd.DataFrame, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) of every gap between consecutive streamed tokens of the ok requests (a sample if many)."""
    starts, ends = [], []
    for times in ok["token_times"]:
        t = np.asarray(times if times is not None else [], dtype=np.float64)
        if len(t) > 1:
            starts.append(t[:-1])
            ends.append(t[1:])
    if not starts:
        raise UsageError("simulate --run: the run has no request with two streamed tokens to fit a step time from")
    lo, hi = np.concatenate(starts), np.concatenate(ends)
    keep = hi > lo  # a chunk of several tokens arrives at once: no step boundary between them
    lo, hi = lo[keep], hi[keep]
    if len(lo) > MAX_FIT_GAPS:
        pick = rng.choice(len(lo), MAX_FIT_GAPS, replace=False)
        lo, hi = lo[pick], hi[pick]
    return lo, hi


def _decoding(ok: pd.DataFrame, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Requests decoding (first token seen, not ended) at each time in t, and their distinct adapters."""
    batch = _running_at(ok["first_token"].to_numpy(np.float64), ok["end"].to_numpy(np.float64), t)
    adapters = np.zeros(len(t))
    for name, g in ok.groupby("adapter"):
        if str(name):  # the base model is not an adapter
            adapters += _running_at(g["first_token"].to_numpy(np.float64), g["end"].to_numpy(np.float64), t) > 0
    return batch, adapters


def _first_tokens_inside(first_sorted: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each (lo, hi): the index of the first first-token strictly inside it and how many are inside."""
    start = np.searchsorted(first_sorted, lo, side="right")
    return start, np.searchsorted(first_sorted, hi, side="left") - start


ONE_STEP = 0.25  # first tokens closer than this share of the fitted decode constant came from one prefill step


def fit_records(records: pd.DataFrame, config: EngineConfig, adapter_load_s: float = 0.0, source: str = "",
                async_loads: bool = True, mixed_steps: bool = False, step_tokens: int = 2048) -> ServiceModel:
    """Three least-squares fits over the client's token times.

    Decode step: a gap between two streamed tokens of one request with no other request's first token inside
    it is one decode step (plus the server's time outside it) of the b requests decoding at its midpoint over
    a distinct adapters. Prefill step: a gap whose k first tokens inside all arrived together (one prefill
    step streams them at once) held that step and one decode step, so gap - decode(b, a) = prefill(n prompt
    tokens, k sequences). With mixed steps the admitted requests' first tokens stream right after the running
    ones' tokens of the same step, so a gap counts the first tokens up to half a short step after its end
    (not after its start), and that step is decode(b, a) + prefill(n, k). Latency: what a request that waited
    for nobody spent beyond half a decode step and the step it was prefilled in (HTTP, tokenizing, streaming:
    time that does not hold the engine) is added to its first token and its end."""
    ok = records[(records["status"] == "ok") & records["first_token"].notna()]
    ok = ok[ok["output_tokens"] >= 1]
    if len(ok) < 5:
        raise UsageError(f"simulate --run {source}: only {len(ok)} completed request(s); need at least 5 to fit")
    order = np.argsort(ok["first_token"].to_numpy(np.float64))
    first_sorted = ok["first_token"].to_numpy(np.float64)[order]
    prompt_cum = np.concatenate([[0.0], np.cumsum(ok["prompt_tokens"].to_numpy(np.float64)[order])])
    lo, hi = _gaps(ok, np.random.default_rng(0))
    shift = 0.5 * float(np.quantile(hi - lo, 0.1)) if mixed_steps else 0.0  # half a short step
    start, inside = _first_tokens_inside(first_sorted, lo + shift, hi + shift)
    pure = inside == 0
    if pure.sum() < 3:
        raise UsageError(f"simulate --run {source}: too few token gaps without a prefill inside to fit a decode "
                         "step (a run of a few seconds at a low rate has too few)")
    batch, adapters = _decoding(ok, (lo[pure] + hi[pure]) / 2)
    step = _nonneg_lstsq(np.column_stack([np.ones_like(batch), batch, adapters]), hi[pure] - lo[pure])

    def decode(b: np.ndarray, a: np.ndarray) -> np.ndarray:
        return step[0] + step[1] * b + step[2] * a

    end = start + inside
    spread = first_sorted[np.maximum(end - 1, 0)] - first_sorted[np.minimum(start, len(first_sorted) - 1)]
    tol = ONE_STEP * max(step[0], 1e-4)
    one = (inside >= 1) & (spread <= tol)
    if one.sum() < 3:
        raise UsageError(f"simulate --run {source}: too few token gaps with one prefill step inside to fit the "
                         "prefill time (a run of a few seconds at a low rate has too few)")
    b, a = _decoding(ok, (lo[one] + hi[one]) / 2)
    # pooled over every running request's gap, so a prefill step counts as often as requests waited through it
    # (a first token that arrived late inside a plain decode gap counts once)
    tokens, seqs = prompt_cum[end[one]] - prompt_cum[start[one]], inside[one].astype(np.float64)
    prefill = _nonneg_lstsq(np.column_stack([np.ones_like(tokens), tokens, seqs]),
                            hi[one] - lo[one] - decode(b, a))
    sent, first = ok["actual_send"].to_numpy(np.float64), ok["first_token"].to_numpy(np.float64)
    alone = _first_tokens_inside(first_sorted, sent, first - tol)[1] == 0
    b, a = _decoding(ok, sent[alone])
    lo_step = np.searchsorted(first_sorted, first[alone] - tol, side="left")  # its prefill step's requests
    hi_step = np.searchsorted(first_sorted, first[alone] + tol, side="right")
    rest = (first - sent)[alone] - (0.5 * (b > 0) + mixed_steps) * decode(b, a) - prefill[0] \
        - prefill[1] * (prompt_cum[hi_step] - prompt_cum[lo_step]) - prefill[2] * (hi_step - lo_step)
    latency = max(0.0, float(np.median(rest))) if len(rest) else 0.0
    return ServiceModel(step_s=step[0], per_seq_s=step[1], per_adapter_s=step[2], prefill_s=prefill[0],
                        per_prompt_token_s=prefill[1], per_prefill_seq_s=prefill[2], latency_s=latency,
                        adapter_load_s=adapter_load_s, async_loads=async_loads, slots=config.max_num_seqs,
                        max_batched_tokens=config.max_num_batched_tokens, adapter_slots=config.gpu_slots,
                        max_loras=config.max_loras, mixed_steps=mixed_steps, step_tokens=step_tokens, source=source)


def _nonneg_lstsq(x: np.ndarray, y: np.ndarray) -> list[float]:
    """Least squares with every coefficient >= 0 (a cost cannot be negative): the best over the subsets of
    columns whose unconstrained fit is non-negative (exact for the 2-3 columns used here)."""
    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
    xs = x / scale
    best, best_err = np.zeros(x.shape[1]), float(np.sum(y ** 2))
    for subset in itertools.product((False, True), repeat=x.shape[1]):
        cols = np.flatnonzero(subset)
        if not len(cols):
            continue
        coef = np.linalg.lstsq(xs[:, cols], y, rcond=None)[0]
        if (coef < 0).any():
            continue
        err = float(np.sum((xs[:, cols] @ coef - y) ** 2))
        if err < best_err:
            best, best_err = np.zeros(x.shape[1]), err
            best[cols] = coef
    return [float(c) for c in best / scale]


def _adapter_load_s(server: pd.DataFrame) -> float:
    """Mean seconds per adapter load from the server samples (0 when the run loaded none)."""
    loads = counter_total(server, "lora_fleet_adapter_loads")
    return counter_total(server, "lora_fleet_adapter_load_seconds") / loads if loads > 0 else 0.0


def _step_kind(run, options: dict, extra: dict) -> tuple[bool, int]:
    """(mixed steps?, step token budget) of the engine a run measured: what its server said it used (the
    lora_fleet_mixed_steps and lora_fleet_step_tokens gauges), else what its engine then defaulted to. Before
    those gauges: mixed steps on the CPU, prefill-first on CUDA, and no mixed steps at all before the decode-token
    counter existed."""
    said = {m: counter_by_replica(run.server, f"lora_fleet_{m}") for m in ("mixed_steps", "step_tokens")}
    if said["mixed_steps"]:
        mixed = any(last > 0 for _, last in said["mixed_steps"].values())
        budget = max((last for _, last in said["step_tokens"].values()), default=2048)
        return mixed, int(budget)
    on_gpu = str(options.get("device") or ("cuda" if run.summary.get("gpu") else "cpu")).startswith("cuda")
    mixed = bool(extra.get("mixed_steps", not on_gpu and has_counter(run.server, "lora_fleet_decode_tokens")))
    return mixed, int(extra.get("step_tokens", 2048))


def fit_run(run_dir: str | Path) -> ServiceModel:
    """The service model of the engine a run directory measured (its records, config and server samples)."""
    try:
        run = load_run(run_dir)
    except (OSError, ValueError) as exc:
        raise UsageError(f"simulate --run {run_dir}: not a readable run directory ({exc})") from None
    options = {k: v for k, v in (run.config.get("engine", {}).get("options") or {}).items()
               if k in EngineConfig.__dataclass_fields__}
    config = EngineConfig(**options)
    extra = config.extra or {}
    mixed, step_tokens = _step_kind(run, options, extra)
    step_tokens = min(step_tokens, config.max_num_batched_tokens)
    return fit_records(run.records, config, _adapter_load_s(run.server), source=str(run_dir),
                       async_loads=bool(run.summary.get("gpu")), mixed_steps=mixed, step_tokens=step_tokens)
