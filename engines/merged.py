"""MergedEngine: the one-deployment-per-adapter baseline; each adapter merged into its own copy of the weights, one copy per step."""
from __future__ import annotations

import time
from typing import Callable

import torch

from engines.base import AdapterFileError, AdapterNotFoundError, EngineError
from engines.model.config import LORA_TARGETS
from engines.model.llama import LORA_GROUPS, Transformer
from engines.multilora.adapter_lru import AdapterLRU
from engines.multilora.engine import MultiLoRAEngine
from engines.multilora.policy import OneAdapterPerStep
from engines.multilora.scheduler import Batch

CPU_COPIES = 4


class MergedPool:
    """Device copies of the layer weights (qkv, o, gate_up, down of every layer), each holding W + s·B·A of
    one adapter. A cold adapter takes a free copy or evicts the least recently used unpinned one and is
    merged into it, synchronously: that stall is the baseline's real cost and is timed (swaps, seconds).
    The same interface as AdapterPool, so the multilora scheduler and runner serve it unchanged."""

    def __init__(self, model: Transformer, copies: int, max_rank: int, device: torch.device) -> None:
        self.model, self.device, self.max_rank = model, device, max_rank
        # detached: they keep the base storage while the parameters point at a copy
        self.base = {k: w.detach() for k, w in model.linear_weights().items()}
        self.copies = [{k: torch.empty_like(w) for k, w in self.base.items()} for _ in range(copies)]
        self.lru = AdapterLRU(copies)
        self._sources: dict[str, tuple[str, Callable[[], object]]] = {}
        self._cache: dict[str, object] = {}
        self.current: int | None = None
        self.swaps = 0
        self.swap_seconds = 0.0

    # ---- registry --------------------------------------------------------------------------------
    def register(self, name: str, path: str, loader: Callable[[], object] | None = None,
                 known=None) -> None:
        """Read the adapter now (a merge needs its values) and keep it in host memory; `known` is reused
        when it holds the weights, not just their description."""
        if name in self._sources:
            raise EngineError(f"adapter {name!r} is already registered; unregister it first to replace it")
        if loader is None:
            from engines.adapters.peft_format import read_adapter

            def loader(path=path, name=name):
                return read_adapter(path, self.model.args, max_rank=self.max_rank, name=name)
        adapter = known if known is not None and known.loaded else loader()
        bad = [m for m in adapter.targets if m not in LORA_TARGETS]
        if bad:
            raise AdapterFileError(f"{path}: targets {bad} cannot be merged into a Llama-family model")
        self._sources[name] = (path, loader)
        self._cache[name] = adapter

    def unregister(self, name: str) -> None:
        if name not in self._sources:
            raise AdapterNotFoundError(f"adapter {name!r} is not registered")
        if self.lru.pinned(name):
            raise EngineError(f"adapter {name!r} is serving requests; abort them before unregistering it")
        self.lru.remove(name)
        del self._sources[name]
        self._cache.pop(name, None)

    def names(self) -> dict[str, str]:
        return {n: p for n, (p, _) in self._sources.items()}

    # ---- copies ----------------------------------------------------------------------------------
    def is_ready(self, name: str | None) -> bool:
        return name is None or name in self.lru

    def slot(self, name: str | None) -> int:
        return -1 if name is None else self.lru.slot(name)

    def pin(self, name: str | None) -> None:
        if name is not None:
            self.lru.pin(name)

    def unpin(self, name: str | None) -> None:
        if name is not None and self.lru.pinned(name):
            self.lru.unpin(name)

    def pending(self) -> bool:
        return False

    def finish_loads(self, wait: bool = False) -> list[str]:
        return []

    def wait_briefly(self, seconds: float = 0.0) -> None:
        return None

    def take_failed(self) -> dict[str, str]:
        return {}  # adapters are read when registered (a merge needs the values): a bad one raises there

    def want(self, names: list[str | None]) -> None:
        wanted = frozenset(n for n in names if n is not None)
        for name in names:
            if name is None or name not in self._sources:
                continue
            if name in self.lru:
                self.lru.touch(name)
                continue
            got = self.lru.assign(name, wanted)
            if got is None:
                break
            self._merge(name, got[0])

    @torch.no_grad()
    def _merge(self, name: str, copy: int) -> None:
        t0 = time.perf_counter()
        adapter = self._cache.get(name)
        if adapter is None:
            adapter = self._cache[name] = self._sources[name][1]()
        target = self.copies[copy]
        shapes = self.model.args.module_shapes()
        for (layer, group), w in self.base.items():
            dst = target[(layer, group)]
            dst.copy_(w)
            off = 0
            for module in LORA_GROUPS[group]:
                n = shapes[module][1]
                if (layer, module) in adapter.weights:
                    a, b = (t.to(self.device, torch.float32) for t in adapter.weights[(layer, module)])
                    dst[off:off + n].add_((adapter.scaling * (b @ a)).to(dst.dtype))
                off += n
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.swaps += 1
        self.swap_seconds += time.perf_counter() - t0

    def use(self, copy: int | None) -> None:
        """Point the model's layer weights at a copy (None: the base weights)."""
        if copy == self.current:
            return
        weights = self.base if copy is None else self.copies[copy]
        for i, blk in enumerate(self.model.model.layers):
            blk.self_attn.qkv_proj.weight.data = weights[(i, "qkv")]
            blk.self_attn.o_proj.weight.data = weights[(i, "o")]
            blk.mlp.gate_up_proj.weight.data = weights[(i, "gate_up")]
            blk.mlp.down_proj.weight.data = weights[(i, "down")]
        self.current = copy

    def stats(self) -> dict[str, float]:
        return {
            "adapters_registered": len(self._sources),
            "adapters_resident": len(self.lru),
            "merged_copies": len(self.copies),
            "adapter_loads": self.swaps,
            "adapter_evictions": self.lru.evictions,
            "adapter_load_seconds": round(self.swap_seconds, 6),
            "merged_swaps": self.swaps,
            "merged_swap_seconds": round(self.swap_seconds, 6),
        }

    def close(self) -> None:
        self.use(None)
        self.copies.clear()


class MergedEngine(MultiLoRAEngine):
    """The multilora scheduler (policy OneAdapterPerStep) and runner: steps rotate round-robin over the
    adapters (weight copies) that have work; LoRA ops never run."""

    name = "merged"
    scheduler_policy = OneAdapterPerStep

    def _register_start(self, start) -> None:
        for name, (path, adapter) in start.items():  # each is read now: a merge needs the values
            self.pool.register(name, path, known=adapter)

    def _make_pool(self, start) -> MergedPool:
        return MergedPool(self.model, self._copies(), self.config.max_lora_rank, self.device)

    def _copies(self) -> int:
        if self.config.merged_copies is not None:
            if self.config.merged_copies < 1:
                raise ValueError(f"engine config: merged_copies={self.config.merged_copies} must be >= 1")
            return self.config.merged_copies
        if self.device.type != "cuda":
            return CPU_COPIES
        per_copy = sum(w.numel() * w.element_size() for w in self.model.linear_weights().values())
        torch.cuda.empty_cache()  # blocks the caching allocator holds but nothing uses count as free
        free, total = torch.cuda.mem_get_info(self.device)
        # copies take at most 70% of what the memory budget leaves; the rest is the KV cache
        budget = 0.7 * (total * self.config.gpu_memory_utilization - (total - free))
        n = int(budget // per_copy)
        if n < 1:
            raise EngineError(f"one merged copy needs {per_copy / 2**30:.1f} GiB and {budget / 2**30:.1f} GiB is "
                              "free for copies; raise gpu_memory_utilization or use a smaller model")
        return n

    def _max_loras(self) -> int:
        return self.config.max_loras

    def _graphed_mixed_steps(self) -> bool:
        # the step-kind defaults stay as measured for this baseline on CUDA (separate prefill steps): mixed steps'
        # graphs of up to max_num_seqs + 256 rows would be captured once per merged copy
        return False

    def _overlap(self) -> bool:
        # a merge rewrites a copy's weights between steps: this baseline reads each step's tokens before the next
        if self._flag("overlap", False):
            raise ValueError("engine config: extra.overlap is not supported by the merged baseline")
        return False

    def _lora_slots(self) -> int:
        return 0

    def _weights_for(self, batch: Batch) -> object:
        copy = self.pool.slot(batch.seqs[0].adapter)
        copy = None if copy == -1 else copy
        self.pool.use(copy)
        return copy

    def _capture_graphs(self) -> None:
        self.runner.graphs.capture_all(with_lora=False, weights_key=None)
        for c in range(len(self.pool.copies)):
            self.pool.use(c)
            self.runner.graphs.capture_all(with_lora=False, weights_key=c)
        self.pool.use(None)
