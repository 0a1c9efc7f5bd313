"""The one sampler and stop rules of every in-process engine: greedy, temperature, top-k and top-p over a
step's logits, per-request seeds, and a row that cannot be sampled failing alone."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from engines.base import SamplingParams


def banned_tokens(params: SamplingParams, num_output: int, eos_token_id: int) -> tuple[int, ...]:
    """Tokens a request may not produce now: EOS and its stop tokens until min_tokens are out."""
    if num_output >= params.min_tokens:
        return ()
    return params.stop_token_ids + (() if params.ignore_eos else (eos_token_id,))


def stop_reason(params: SamplingParams, token: int, num_output: int, length: int, eos_token_id: int,
                max_model_len: int) -> str | None:
    """"stop", "length" or None (go on) after a request produced `token` as its num_output-th token;
    `length` is prompt + output tokens."""
    if num_output >= params.min_tokens:
        if (token == eos_token_id and not params.ignore_eos) or token in params.stop_token_ids:
            return "stop"
    if num_output >= params.max_tokens or length >= max_model_len:
        return "length"
    return None


NO_LOGITS = "the model produced no usable logits for this request (NaN, infinite, or every token banned)"


_NUMPY = {torch.long: np.int64, torch.int32: np.int32, torch.float32: np.float32}


def host_tensor(data: list, dtype: torch.dtype, pin: bool = False) -> torch.Tensor:
    """A host list (or a list of equal-length lists) as a CPU tensor, pinned if asked. Through numpy: torch.tensor
    of a Python list costs several times more (scripts/host_step_bench.py)."""
    t = torch.from_numpy(np.asarray(data, dtype=_NUMPY[dtype]))
    return t.pin_memory() if pin else t


def to_device(data: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host list on the device without a host sync (pinned, non-blocking, on CUDA); the runner's too."""
    if device.type == "cuda":
        return host_tensor(data, dtype, pin=True).to(device, non_blocking=True)
    return host_tensor(data, dtype).to(device)


def _draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row of probs (B, V), drawn in proportion to it: argmax of p / E with E ~ Exp(1), which is
    what torch.multinomial does for one sample, without its validity check that waits for the device."""
    q = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / q).argmax(dim=-1)


@dataclass
class Draw:
    """A step's sampled tokens, still on the device (launch()), and their copy to the host under way.

    tokens[i] is row i's token; code[i] is 0, or 1 (no usable logits) or 2 (temperature / top_p give no
    distribution); errors holds rows that failed on the host (a generator refusing its seed)."""

    tokens: torch.Tensor
    code: torch.Tensor
    seq_ids: list[str]
    params: list[SamplingParams]
    errors: dict[int, str]
    host: torch.Tensor | None = None
    ready: object = None  # a CUDA event recorded after the copy to `host`


class Sampler:
    """One generator per seeded request (created at its first token, so a seed gives the same tokens
    whatever else shares the batch); unseeded requests draw from the engine's generator.

    A row whose logits cannot be sampled (no finite logit left, a generator that refuses its seed) gets None
    and its reason in `failures` (seq id -> message); the other rows get the tokens they would have got
    without it, so an engine fails that one request and goes on.

    launch() samples on the device without waiting for it (no host sync on CUDA: a step's tokens can feed
    the next step before the host reads them) and starts their copy to the host; collect() waits for that
    copy and returns the tokens. Calling the sampler does both."""

    def __init__(self, device: torch.device, seed: int = 0) -> None:
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self._seeded: dict[str, torch.Generator] = {}
        self.failures: dict[str, str] = {}
        self.wait_s = 0.0  # seconds the host spent blocked on the device's tokens (collect)

    def forget(self, seq_id: str) -> None:
        self._seeded.pop(seq_id, None)

    def _gen(self, seq_id: str, seed: int) -> torch.Generator:
        if seq_id not in self._seeded:
            self._seeded[seq_id] = torch.Generator(device=self.device).manual_seed(seed)
        return self._seeded[seq_id]

    def __call__(self, logits: torch.Tensor, seq_ids: list[str], params: list[SamplingParams],
                 banned: list[tuple[int, ...]]) -> list[int | None]:
        """logits (B, V) float32 -> one token per row (None: failed, see `failures`). banned[i]: tokens row i
        may not produce now (EOS and stop tokens before min_tokens)."""
        return self.collect(self.launch(logits, seq_ids, params, banned))

    @torch.inference_mode()
    def launch(self, logits: torch.Tensor, seq_ids: list[str], params: list[SamplingParams],
               banned: list[tuple[int, ...]]) -> Draw:
        """Sample every row on the device; nothing here waits for the device."""
        dev, v = logits.device, logits.shape[-1]
        rows = [i for i, toks in enumerate(banned) for t in toks if 0 <= t < v]
        if rows:  # one indexed write for the whole batch, not one per row
            cols = [t for toks in banned for t in toks if 0 <= t < v]
            logits[to_device(rows, torch.long, dev), to_device(cols, torch.long, dev)] = float("-inf")
        top = logits.max(dim=-1, keepdim=True).values  # (B, 1); NaN when a row holds a NaN
        bad = ~torch.isfinite(top[:, 0])  # NaN, +inf, or every token banned: nothing to pick
        tokens = logits.argmax(dim=-1)  # greedy everywhere; sampled rows overwritten
        code = bad.long()  # the dtype of the host copy: a converting copy would wait for the device
        errors: dict[int, str] = {}
        sampled = [i for i, p in enumerate(params) if p.temperature > 0]
        if sampled:
            idx = to_device(sampled, torch.long, dev)
            temps = to_device([params[i].temperature for i in sampled], torch.float32, dev)
            bad_s = bad.index_select(0, idx)
            # shifted so the best token is 0: dividing by a small temperature cannot overflow to +inf
            shifted = (logits.index_select(0, idx) - top.index_select(0, idx)) / temps[:, None]
            probs = self._probs(shifted, [params[i] for i in sampled])
            usable = torch.isfinite(probs).all(dim=-1) & (probs.sum(dim=-1) > 0) & ~bad_s
            code.index_copy_(0, idx, torch.where(bad_s, 1, torch.where(usable, 0, 2)).long())
            # rows that fail draw from a uniform row instead (a NaN row would stop the device), then fail
            probs = torch.where(usable[:, None], probs, torch.full_like(probs, 1.0 / v))
            unseeded = [j for j, i in enumerate(sampled) if params[i].seed is None]
            if unseeded:
                j_dev = to_device(unseeded, torch.long, dev)
                picks = _draw(probs.index_select(0, j_dev), self.generator)
                tokens.index_copy_(0, idx.index_select(0, j_dev), picks)
            for j, i in enumerate(sampled):
                if params[i].seed is None:
                    continue
                try:
                    pick = _draw(probs[j:j + 1], self._gen(seq_ids[i], params[i].seed))
                except (RuntimeError, ValueError, OverflowError) as exc:  # its own seed or row: fails alone
                    errors[i] = f"sampling failed: {exc}"
                    continue
                tokens[i:i + 1].copy_(pick)
        draw = Draw(tokens, code, list(seq_ids), list(params), errors)
        if dev.type == "cuda":
            draw.host = torch.empty((2, len(seq_ids)), dtype=torch.long, pin_memory=True)
            draw.host[0].copy_(tokens, non_blocking=True)
            draw.host[1].copy_(code, non_blocking=True)
            draw.ready = torch.cuda.Event()
            draw.ready.record()
        return draw

    def collect(self, draw: Draw) -> list[int | None]:
        """Wait for a launched draw; its tokens (None: failed, the reason in `failures`)."""
        if draw.ready is not None:
            t0 = time.perf_counter()
            draw.ready.synchronize()
            self.wait_s += time.perf_counter() - t0
            toks, codes = draw.host[0].tolist(), draw.host[1].tolist()
        else:
            toks, codes = draw.tokens.tolist(), draw.code.tolist()
        self.failures = {}
        for i, (seq_id, c) in enumerate(zip(draw.seq_ids, codes)):
            if c == 1:
                self.failures[seq_id] = NO_LOGITS
            elif c == 2:
                p = draw.params[i]
                self.failures[seq_id] = f"sampling failed: temperature={p.temperature!r}, top_p={p.top_p!r} " \
                                        "give no distribution"
            elif i in draw.errors:
                self.failures[seq_id] = draw.errors[i]
        return [None if sid in self.failures else tok for sid, tok in zip(draw.seq_ids, toks)]

    @staticmethod
    def _probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        v, dev = logits.shape[-1], logits.device
        top_k = [p.top_k if 0 < p.top_k < v else v for p in params]
        top_p = [p.top_p for p in params]
        if min(top_k) < v or min(top_p) < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
            ranks = torch.arange(v, device=dev)[None, :]
            k = to_device(top_k, torch.long, dev)[:, None]
            sorted_logits = sorted_logits.masked_fill(ranks >= k, float("-inf"))
            p = to_device(top_p, torch.float32, dev)[:, None]
            sorted_probs = sorted_logits.softmax(dim=-1)
            # drop a token when the tokens before it already reach top_p; the best token always stays
            before = sorted_probs.cumsum(dim=-1) - sorted_probs
            sorted_logits = sorted_logits.masked_fill((before >= p) & (ranks > 0), float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
        return logits.softmax(dim=-1)
