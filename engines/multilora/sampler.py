"""Sampler: greedy, temperature, top-k and top-p sampling over a step's logits, with per-request seeds."""
from __future__ import annotations

import torch

from engines.base import SamplingParams


class Sampler:
    """One generator per seeded request (created at its first token, so a seed gives the same tokens
    whatever else shares the batch); unseeded requests draw from the engine's generator."""

    def __init__(self, device: torch.device, seed: int = 0) -> None:
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self._seeded: dict[str, torch.Generator] = {}

    def forget(self, seq_id: str) -> None:
        self._seeded.pop(seq_id, None)

    def _gen(self, seq_id: str, seed: int) -> torch.Generator:
        if seq_id not in self._seeded:
            self._seeded[seq_id] = torch.Generator(device=self.device).manual_seed(seed)
        return self._seeded[seq_id]

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, seq_ids: list[str], params: list[SamplingParams],
                 banned: list[tuple[int, ...]]) -> list[int]:
        """logits (B, V) float32 -> one token per row. banned[i]: tokens row i may not produce now
        (EOS and stop tokens before min_tokens)."""
        rows = [i for i, toks in enumerate(banned) for _ in toks]
        if rows:  # one indexed write for the whole batch, not one per row
            cols = [t for toks in banned for t in toks]
            logits[torch.tensor(rows, device=logits.device), torch.tensor(cols, device=logits.device)] = float("-inf")
        out = logits.argmax(dim=-1)  # greedy for every row; sampled rows are overwritten below
        rows = [i for i, p in enumerate(params) if p.temperature > 0]
        if rows:
            idx = torch.tensor(rows, device=logits.device)
            temps = torch.tensor([params[i].temperature for i in rows], device=logits.device)
            probs = self._probs(logits.index_select(0, idx) / temps[:, None], [params[i] for i in rows])
            unseeded = [j for j, i in enumerate(rows) if params[i].seed is None]
            if unseeded:
                j = torch.tensor(unseeded, device=logits.device)
                picks = torch.multinomial(probs.index_select(0, j), 1, generator=self.generator)[:, 0]
                out[idx[j]] = picks
            for j, i in enumerate(rows):
                if params[i].seed is not None:
                    out[i] = torch.multinomial(probs[j], 1, generator=self._gen(seq_ids[i], params[i].seed))[0]
        return out.tolist()

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
            # drop a token when the tokens before it already reach top_p (the first token always stays)
            before = sorted_probs.cumsum(dim=-1) - sorted_probs
            sorted_logits = sorted_logits.masked_fill(before >= p, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
        return logits.softmax(dim=-1)
