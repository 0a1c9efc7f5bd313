"""AdapterPool: registered adapters, an LRU of them packed in pinned host memory, and device slots filled asynchronously."""
from __future__ import annotations

import math
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import torch

from engines.base import AdapterFileError, AdapterNotFoundError, EngineError
from engines.model.llama import LORA_GROUPS, MODULE_GROUP, Transformer
from engines.multilora.adapter_lru import AdapterLRU

HOST_UNLIMITED = 1 << 30


@dataclass
class HostAdapter:
    """An adapter packed in the device slot layout: packed[group] = (A [L, S, r, in], B [L, N_total, r])."""

    name: str
    rank: int
    scaling: float
    targets: tuple[str, ...]
    packed: dict[str, tuple[torch.Tensor, torch.Tensor]]
    nbytes: int


@dataclass
class _Load:
    name: str
    slot: int
    started: float
    done: torch.cuda.Event | None = None
    start_event: torch.cuda.Event | None = None


def packed_shapes(adapter, model: Transformer) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Per targeted group, the shapes of the packed A [L, S, r, in] and B [L, N_total, r]."""
    shapes = {}
    for group, mods in LORA_GROUPS.items():
        if any(m in adapter.targets for m in mods):
            outs, fin = model.group_slices(group)
            shapes[group] = ((model.args.n_layers, len(mods), adapter.rank, fin),
                             (model.args.n_layers, sum(outs), adapter.rank))
    return shapes


def packed_nbytes(adapter, model: Transformer, dtype: torch.dtype) -> int:
    """Host bytes of pack_adapter(adapter): known from its description alone (inspect_adapter)."""
    size = torch.empty((), dtype=dtype).element_size()
    return sum(math.prod(a) * size + math.prod(b) * size for a, b in packed_shapes(adapter, model).values())


def pack_adapter(adapter, model: Transformer, dtype: torch.dtype, pin: bool) -> HostAdapter:
    """Stack an adapter's per-(layer, module) A/B into per-group tensors; untargeted slices stay zero."""
    packed = {}
    for group, (a_shape, b_shape) in packed_shapes(adapter, model).items():
        mods = LORA_GROUPS[group]
        outs, _ = model.group_slices(group)
        a = torch.zeros(a_shape, dtype=dtype, pin_memory=pin)
        b = torch.zeros(b_shape, dtype=dtype, pin_memory=pin)
        off = [0]
        for n in outs:
            off.append(off[-1] + n)
        for (layer, module), (wa, wb) in adapter.weights.items():
            if MODULE_GROUP[module] != group:
                continue
            i = mods.index(module)
            a[layer, i].copy_(wa)
            b[layer, off[i]:off[i + 1]].copy_(wb)
        packed[group] = (a, b)
    nbytes = sum(t.numel() * t.element_size() for ab in packed.values() for t in ab)
    return HostAdapter(adapter.name, adapter.rank, float(adapter.scaling), tuple(adapter.targets), packed, nbytes)


HOST_RAM_SHARE = 0.25  # without host_adapter_capacity, start adapters may pack into this share of host RAM


def host_ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no limit is derived
        return None


def default_host_capacity(adapters: list, model: Transformer, dtype: torch.dtype,
                          ram_bytes: int | None = None) -> tuple[int | None, str | None]:
    """The host LRU's capacity when none is configured: None (all of them) unless the adapters' packed
    bytes exceed HOST_RAM_SHARE of host RAM, then as many as fit; with a line that says so."""
    ram = host_ram_bytes() if ram_bytes is None else ram_bytes
    if not adapters or ram is None:
        return None, None
    sizes = [packed_nbytes(a, model, dtype) for a in adapters]
    budget, total, fit = HOST_RAM_SHARE * ram, 0, 0
    for size in sizes:
        total += size
        if total > budget:
            break
        fit += 1
    if fit == len(adapters):
        return None, None
    need = sum(sizes)
    return max(fit, 1), (f"adapters: the {len(adapters)} start adapters take {need / 1e9:.1f} GB packed; "
                         f"{max(fit, 1)} stay in pinned host memory ({HOST_RAM_SHARE:.0%} of the host's "
                         f"{ram / 1e9:.0f} GB), the rest are read from disk when first requested; set "
                         "host_adapter_capacity in the engine config to choose")


class AdapterPool:
    """Every registered adapter has a source (a PEFT folder or an in-memory loader). Up to
    host_capacity of them stay packed in pinned host memory (LRU; the rest are re-read on demand in a
    worker thread); up to `slots` of them sit in the model's device slots (LRU over unpinned slots).

    want(names) starts the loads for waiting requests; a device load is an async copy on a side
    stream, and is_ready() turns true once its event has completed, so the running batch never waits.
    """

    def __init__(self, model: Transformer, slots: int, max_rank: int, host_capacity: int | None,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.model = model
        self.max_rank = max_rank
        self.device, self.dtype = device, dtype
        self.cuda = device.type == "cuda"
        self.gpu = AdapterLRU(slots)
        self.host = AdapterLRU(host_capacity or HOST_UNLIMITED)
        self._host_data: dict[str, HostAdapter] = {}
        self._sources: dict[str, tuple[str, Callable[[], object]]] = {}
        self._ready: set[str] = set()
        self._loading: dict[str, _Load] = {}
        self._fetching: dict[str, Future] = {}
        self.failed: dict[str, str] = {}  # adapter -> why re-reading it failed (its requests get an error)
        self._io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="adapter-read")
        self.stream = torch.cuda.Stream(device=device) if self.cuda else None
        self.groups = tuple(model.lora_stacks)
        self.modules = tuple(m for g in self.groups for m in LORA_GROUPS[g])
        self.loads = 0
        self.load_seconds = 0.0
        self.recent_load_seconds: deque[float] = deque(maxlen=4096)  # each device copy, for profiling
        self.host_reads = 0

    # ---- registry ------------------------------------------------------------------------------
    def register(self, name: str, path: str, loader: Callable[[], object] | None = None,
                 known=None, read_now: bool = True) -> None:
        """Register from a PEFT folder or from loader() returning a LoRAAdapter. `known` (the adapter, or its
        description by inspect_adapter) is checked instead of reading the weights; they are read now only
        while the host LRU has room (and read_now), else by fill_host or when a request first wants them."""
        if name in self._sources:
            raise EngineError(f"adapter {name!r} is already registered (from {self._sources[name][0]!r}); "
                              "unregister it first to replace it")
        if loader is None:
            from engines.adapters.peft_format import read_adapter

            def loader(path=path, name=name):
                return read_adapter(path, self.model.args, max_rank=self.max_rank, name=name)
        adapter = loader() if known is None else known
        self._check(adapter, path)
        self._sources[name] = (path, loader)
        if read_now and len(self.host) < self.host.capacity:  # a full host LRU packs it when a request wants it
            self._store_host(name, self._pack(adapter if adapter.loaded else loader()))

    def fill_host(self, names: list[str], workers: int | None = None) -> None:
        """Read and pack registered adapters into the host LRU while it has room, `workers` at a time (the
        same read-and-pack the serving path runs in its reader threads). The first adapter that fails to
        read raises, in `names` order."""
        room = self.host.capacity - len(self.host)
        todo = [n for n in names if n in self._sources and n not in self._host_data][:max(room, 0)]
        if not todo:
            return
        workers = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="adapter-fill") as pool:
            packed = list(pool.map(lambda n: self._pack(self._sources[n][1]()), todo))
        for name, host in zip(todo, packed):
            self._store_host(name, host)

    def unregister(self, name: str) -> None:
        if name not in self._sources:
            raise AdapterNotFoundError(f"adapter {name!r} is not registered; registered: {sorted(self._sources)[:20]}")
        if self.gpu.pinned(name):
            raise EngineError(f"adapter {name!r} is serving requests; abort them before unregistering it")
        self.finish_loads(wait=True)
        del self._sources[name]
        slot = self.gpu.remove(name)
        if slot is not None:
            self.model.clear_slot(slot)
        self._ready.discard(name)
        if name in self._fetching:
            self._fetching.pop(name).cancel()
        if name in self.host and not self.host.pinned(name):
            self.host.remove(name)
            self._host_data.pop(name, None)

    def names(self) -> dict[str, str]:
        return {n: p for n, (p, _) in self._sources.items()}

    def __contains__(self, name: str | None) -> bool:
        return name is None or name in self._sources

    def _check(self, adapter, path: str) -> None:
        if adapter.rank > self.max_rank:
            raise AdapterFileError(f"{path}: rank {adapter.rank} > max_lora_rank={self.max_rank} (the slots' rank; "
                                   "unset, it is sized from the adapters at start); raise max_lora_rank in the "
                                   "engine config")
        extra = [m for m in adapter.targets if m not in self.modules]
        if extra:
            raise AdapterFileError(f"{path}: targets {extra} but the engine's LoRA slots cover only {list(self.modules)}; "
                                   "set extra.lora_targets in the engine config to include them")

    def _pack(self, adapter) -> HostAdapter:
        return pack_adapter(adapter, self.model, self.dtype, pin=self.cuda)

    def _store_host(self, name: str, host: HostAdapter) -> bool:
        got = self.host.assign(name)
        if got is None:
            return False  # every host entry is in use; this one is re-read when needed
        _, evicted = got
        if evicted is not None:
            self._host_data.pop(evicted, None)
        self._host_data[name] = host
        return True

    # ---- device slots ---------------------------------------------------------------------------
    def is_ready(self, name: str | None) -> bool:
        return name is None or name in self._ready

    def slot(self, name: str | None) -> int:
        return -1 if name is None else self.gpu.slot(name)

    def pin(self, name: str | None) -> None:
        if name is not None:
            self.gpu.pin(name)

    def unpin(self, name: str | None) -> None:
        if name is not None and self.gpu.pinned(name):
            self.gpu.unpin(name)

    def pending(self) -> bool:
        return bool(self._loading or self._fetching)

    def want(self, names: list[str | None]) -> None:
        """Start loads for the adapters waiting requests name, in order, while slots can be had."""
        wanted = frozenset(n for n in names if n is not None)
        for name in names:
            if name is None or name in self._ready or name in self._loading or name in self._fetching:
                if name is not None and name in self.gpu:
                    self.gpu.touch(name)
                continue
            if name not in self._sources:
                continue
            if name not in self._host_data:
                self._fetch(name)
                continue
            if not self._start_load(name, wanted):
                break  # no slot free: the rest wait for running requests to finish

    def _fetch(self, name: str) -> None:
        _, loader = self._sources[name]
        self.host_reads += 1
        self._fetching[name] = self._io.submit(lambda: self._pack(loader()))

    def _start_load(self, name: str, protected: frozenset[str]) -> bool:
        got = self.gpu.assign(name, protected)
        if got is None:
            return False
        slot, evicted = got
        if evicted is not None:
            self._ready.discard(evicted)
        host = self._host_data[name]
        self.host.pin(name)  # the pinned tensors must live until the copy is done
        self.gpu.pin(name)
        load = _Load(name, slot, time.perf_counter())
        if self.cuda:
            load.start_event = torch.cuda.Event(enable_timing=True)
            load.done = torch.cuda.Event(enable_timing=True)
            with torch.cuda.stream(self.stream):
                load.start_event.record(self.stream)
                self.model.set_slot(slot, host.packed, host.rank, host.scaling, non_blocking=True)
                load.done.record(self.stream)
        else:
            self.model.set_slot(slot, host.packed, host.rank, host.scaling)
        self._loading[name] = load
        if not self.cuda:
            self.finish_loads()
        return True

    def finish_loads(self, wait: bool = False) -> list[str]:
        """Mark completed copies ready (wait=True: wait for all); move finished host reads in."""
        for name, fut in list(self._fetching.items()):
            if wait or fut.done():
                del self._fetching[name]
                try:
                    host = fut.result()
                except (AdapterFileError, OSError) as exc:  # the folder broke after registration
                    self.failed[name] = str(exc)
                    continue
                self._store_host(name, host)
        done = []
        for name, load in list(self._loading.items()):
            if load.done is not None:
                if wait:
                    load.done.synchronize()
                elif not load.done.query():
                    continue
                secs = load.start_event.elapsed_time(load.done) / 1e3
            else:
                secs = time.perf_counter() - load.started
            del self._loading[name]
            self.host.unpin(name)
            self.gpu.unpin(name)
            self._ready.add(name)
            self.loads += 1
            self.load_seconds += secs
            self.recent_load_seconds.append(secs)
            done.append(name)
        return done

    def take_failed(self) -> dict[str, str]:
        failed, self.failed = self.failed, {}
        return failed

    def wait_briefly(self, seconds: float = 0.001) -> None:
        """Nothing could run but loads are in flight: let them progress without spinning hot."""
        time.sleep(seconds)

    def stats(self) -> dict[str, float]:
        return {
            "adapters_registered": len(self._sources),
            "adapters_resident": len(self._ready),
            "adapters_host": len(self._host_data),
            "adapter_loads": self.loads,
            "adapter_evictions": self.gpu.evictions,
            "adapter_load_seconds": round(self.load_seconds, 6),
            "adapter_host_reads": self.host_reads,
            "adapter_host_evictions": self.host.evictions,
        }

    def close(self) -> None:
        self._io.shutdown(wait=False, cancel_futures=True)
