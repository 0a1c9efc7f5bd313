"""The one sampler and stop rules of every in-process engine: greedy, temperature, top-k and top-p over a
step's logits, per-request seeds, and a row that cannot be sampled failing alone."""
from __future__ import annotations

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


class Sampler:
    """One generator per seeded request (created at its first token, so a seed gives the same tokens
    whatever else shares the batch); unseeded requests draw from the engine's generator.

    A row whose logits cannot be sampled (no finite logit left, a generator that refuses its seed) gets None
    and its reason in `failures` (seq id -> message); the other rows get the tokens they would have got
    without it, so an engine fails that one request and goes on."""

    def __init__(self, device: torch.device, seed: int = 0) -> None:
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self._seeded: dict[str, torch.Generator] = {}
        self.failures: dict[str, str] = {}

    def forget(self, seq_id: str) -> None:
        self._seeded.pop(seq_id, None)

    def _gen(self, seq_id: str, seed: int) -> torch.Generator:
        if seq_id not in self._seeded:
            self._seeded[seq_id] = torch.Generator(device=self.device).manual_seed(seed)
        return self._seeded[seq_id]

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, seq_ids: list[str], params: list[SamplingParams],
                 banned: list[tuple[int, ...]]) -> list[int | None]:
        """logits (B, V) float32 -> one token per row (None: failed, see `failures`). banned[i]: tokens row i
        may not produce now (EOS and stop tokens before min_tokens)."""
        self.failures = {}
        v = logits.shape[-1]
        rows = [i for i, toks in enumerate(banned) for t in toks if 0 <= t < v]
        if rows:  # one indexed write for the whole batch, not one per row
            cols = [t for toks in banned for t in toks if 0 <= t < v]
            logits[torch.tensor(rows, device=logits.device), torch.tensor(cols, device=logits.device)] = float("-inf")
        top = logits.max(dim=-1, keepdim=True).values  # (B, 1); NaN when a row holds a NaN
        bad = (~torch.isfinite(top[:, 0])).tolist()  # NaN, +inf, or every token banned: nothing to pick
        for i, is_bad in enumerate(bad):
            if is_bad:
                self.failures[seq_ids[i]] = "the model produced no usable logits for this request (NaN, " \
                                            "infinite, or every token banned)"
        out: list[int | None] = logits.argmax(dim=-1).tolist()  # greedy everywhere; sampled rows overwritten
        sampled = [i for i, p in enumerate(params) if p.temperature > 0 and not bad[i]]
        if sampled:
            idx = torch.tensor(sampled, device=logits.device)
            temps = torch.tensor([params[i].temperature for i in sampled], device=logits.device)
            # shifted so the best token is 0: dividing by a small temperature cannot overflow to +inf
            shifted = (logits.index_select(0, idx) - top.index_select(0, idx)) / temps[:, None]
            probs = self._probs(shifted, [params[i] for i in sampled])
            usable = (torch.isfinite(probs).all(dim=-1) & (probs.sum(dim=-1) > 0)).tolist()
            for j, i in enumerate(sampled):
                if not usable[j]:
                    self.failures[seq_ids[i]] = f"sampling failed: temperature={params[i].temperature!r}, " \
                                                f"top_p={params[i].top_p!r} give no distribution"
            unseeded = [j for j, i in enumerate(sampled) if params[i].seed is None and usable[j]]
            if unseeded:
                picks = torch.multinomial(probs[unseeded], 1, generator=self.generator)[:, 0].tolist()
                for j, tok in zip(unseeded, picks):
                    out[sampled[j]] = tok
            for j, i in enumerate(sampled):
                if params[i].seed is not None and usable[j]:
                    try:
                        out[i] = int(torch.multinomial(probs[j], 1, generator=self._gen(seq_ids[i], params[i].seed)))
                    except (RuntimeError, ValueError, OverflowError) as exc:  # its own seed or row: fails alone
                        self.failures[seq_ids[i]] = f"sampling failed: {exc}"
        return [None if seq_ids[i] in self.failures else tok for i, tok in enumerate(out)]

    @staticmethod
    def _probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        v = logits.shape[-1]
        top_k = [p.top_k if 0 < p.top_k < v else v for p in params]
        top_p = [p.top_p for p in params]
        if min(top_k) < v or min(top_p) < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
            ranks = torch.arange(v, device=logits.device)[None, :]
            k = torch.tensor(top_k, device=logits.device)[:, None]
            sorted_logits = sorted_logits.masked_fill(ranks >= k, float("-inf"))
            p = torch.tensor(top_p, device=logits.device, dtype=torch.float32)[:, None]
            sorted_probs = sorted_logits.softmax(dim=-1)
            # drop a token when the tokens before it already reach top_p; the best token always stays
            before = sorted_probs.cumsum(dim=-1) - sorted_probs
            sorted_logits = sorted_logits.masked_fill((before >= p) & (ranks > 0), float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
        return logits.softmax(dim=-1)
