"""Synthetic LoRA adapters of chosen ranks and targets for a base, written in PEFT format, reused when present."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError, safe_open

from engines.adapters.lora import LoRAAdapter
from engines.adapters.peft_format import CONFIG_NAME, WEIGHTS_NAME, write_adapter
from engines.model.config import LORA_TARGETS, ModelArgs

STAMP_KEY = "lora_fleet_synth"  # safetensors metadata entry that says how an adapter was generated
_OURS = {CONFIG_NAME, WEIGHTS_NAME, WEIGHTS_NAME + ".tmp", CONFIG_NAME + ".tmp"}
# Each adapter moves a projection's output by about this fraction of what a Normal(0, 0.02) base
# weight produces, so adapters visibly change the tokens without swamping the base model.
EFFECT = 0.25
BASE_STD = 0.02


def check_request(count: int, ranks: Sequence[int], targets: Sequence[str], dtype: torch.dtype,
                  alpha: float | None, prefix: str) -> None:
    """ValueError naming the argument when a request for synthetic adapters cannot be met."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count={count!r} must be an integer >= 0")
    if not ranks or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in ranks):
        raise ValueError(f"ranks={list(ranks)!r} must be a non-empty list of integers >= 1")
    unknown = [t for t in targets if t not in LORA_TARGETS]
    if not targets or unknown or len(set(targets)) != len(targets):
        raise ValueError(f"targets={list(targets)!r} must be distinct names from {list(LORA_TARGETS)}"
                         + (f" (unknown: {unknown})" if unknown else ""))
    if not dtype.is_floating_point:
        raise ValueError(f"dtype={dtype} must be a floating-point dtype (float16, bfloat16, float32)")
    if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha={alpha!r} must be a positive number (or None for 2 * rank)")
    if not prefix or "/" in prefix or "\\" in prefix or prefix.startswith("."):
        raise ValueError(f"prefix={prefix!r} must be a plain folder-name prefix (no slashes, not hidden)")


def adapter_nbytes(base: ModelArgs, rank: int, targets: Sequence[str], dtype: torch.dtype) -> int:
    """Bytes of one adapter of this rank on these targets, on every layer of `base`."""
    shapes = base.module_shapes()
    per_layer = sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)
    return base.n_layers * per_layer * torch.empty((), dtype=dtype).element_size()


def _stamp(base: ModelArgs, index: int, rank: int, alpha: float, targets: Sequence[str], seed: int,
           dtype: torch.dtype, base_path: str | None = None) -> str:
    shape = {k: getattr(base, k) for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                                           "intermediate_size")}
    stamp = {"index": index, "rank": rank, "alpha": alpha, "targets": sorted(targets), "seed": seed,
             "dtype": str(dtype).removeprefix("torch."), "base": shape}
    if base_path is not None:  # recorded as base_model_name_or_path: a new path rewrites the config
        stamp["base_path"] = base_path
    return json.dumps(stamp, sort_keys=True)


def synth_adapter(base: ModelArgs, index: int, rank: int, targets: Sequence[str], seed: int = 0,
                  dtype: torch.dtype = torch.float16, alpha: float | None = None, name: str = "") -> LoRAAdapter:
    """One random adapter: A ~ N(0, 1/in), B random and small but non-zero (unlike PEFT's init, B = 0).

    The values depend only on (seed, index), so adapter i is the same whatever `count` is asked for.
    """
    alpha = float(2 * rank if alpha is None else alpha)
    scaling = alpha / rank
    digest = hashlib.sha256(f"lora-fleet/{seed}/{index}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    weights = {}
    for layer in range(base.n_layers):
        for module in sorted(targets, key=LORA_TARGETS.index):
            fin, fout = base.module_shapes()[module]
            # |x| ~ 1 per element gives |A x| ~ 1 per rank; pick B's std for an output change of
            # EFFECT times the base projection's own output (BASE_STD * sqrt(in))
            b_std = EFFECT * BASE_STD * math.sqrt(fin) / (scaling * math.sqrt(rank))
            a = torch.randn(rank, fin, generator=gen) / math.sqrt(fin)
            b = torch.randn(fout, rank, generator=gen) * b_std
            weights[(layer, module)] = (a.to(dtype), b.to(dtype))
    return LoRAAdapter(name=name or f"synth-{index}", path="", rank=rank, alpha=alpha, scaling=scaling,
                       targets=tuple(sorted(targets, key=LORA_TARGETS.index)), weights=weights)


def is_current(folder: Path, stamp: str) -> bool:
    """Whether `folder` already holds the adapter this stamp describes, from the file header alone."""
    try:
        with safe_open(str(folder / WEIGHTS_NAME), framework="pt") as f:
            found = (f.metadata() or {}).get(STAMP_KEY)
        return found == stamp and (folder / CONFIG_NAME).is_file()
    except (SafetensorError, OSError):
        return False


def _foreign(folder: Path) -> list[str]:
    """Names in `folder` that make_adapters did not write (a file in its place counts as one)."""
    if not folder.exists():
        return []
    if not folder.is_dir():
        return [folder.name]
    return sorted(p.name for p in folder.iterdir() if p.name not in _OURS)


def _install(tmp: Path, folder: Path, stamp: str, attempts: int = 20) -> None:
    """Move a finished adapter into place; when parallel makers race for the folder, any one's copy wins
    (all are identical), and a stale folder (ours only: checked before) is replaced."""
    for attempt in range(attempts):
        if is_current(folder, stamp):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
            return
        except OSError:  # another maker put a folder there between our rmtree and rename
            time.sleep(0.01 * (attempt + 1))
    shutil.rmtree(tmp, ignore_errors=True)
    raise OSError(f"{folder}: could not be replaced after {attempts} attempts while other processes wrote it; "
                  "run one make_adapters per folder at a time")


@dataclass(frozen=True)
class Planned:
    """One adapter of a make_adapters request: where it goes, what it is, and whether it is already there."""

    index: int
    rank: int
    alpha: float
    folder: Path
    stamp: str
    current: bool
    base_path: str | None = None


def plan_adapters(base: ModelArgs, count: int, ranks: Sequence[int], targets: Sequence[str], out_dir,
                  seed: int = 0, prefix: str = "adapter-", dtype: torch.dtype = torch.float16,
                  alpha: float | None = None, base_path: str | None = None) -> list[Planned]:
    """What make_adapters would write, checking the request and reading only file headers.

    base_path (a checkpoint folder) is what the adapters' base_model_name_or_path records; else the base's name.
    """
    ranks, targets = list(ranks), list(targets)
    check_request(count, ranks, targets, dtype, alpha, prefix)
    plan = []
    for i in range(count):
        rank = ranks[i % len(ranks)]
        a = float(2 * rank if alpha is None else alpha)
        folder = Path(out_dir) / f"{prefix}{i:04d}"
        stamp = _stamp(base, i, rank, a, targets, seed, dtype, base_path)
        plan.append(Planned(i, rank, a, folder, stamp, is_current(folder, stamp), base_path))
    return plan


def _write_planned(base: ModelArgs, p: Planned, targets: Sequence[str], seed: int, dtype: torch.dtype,
                   out: Path) -> None:
    """Generate and install one planned adapter (unless a parallel maker already wrote it)."""
    if not p.current and not is_current(p.folder, p.stamp):
        tmp = out / f".{p.folder.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        adapter = synth_adapter(base, p.index, p.rank, targets, seed, dtype, p.alpha, name=p.folder.name)
        write_adapter(adapter, tmp, p.base_path or base.name, n_layers=base.n_layers, metadata={STAMP_KEY: p.stamp})
        _install(tmp, p.folder, p.stamp)


def _write_chunk(base, chunk, targets, seed, dtype, out) -> int:
    torch.set_num_threads(1)  # the parallelism is across processes
    for p in chunk:
        _write_planned(base, p, targets, seed, dtype, out)
    return len(chunk)


def make_adapters(base: ModelArgs, count: int, ranks: Sequence[int], targets: Sequence[str], out_dir,
                  seed: int = 0, prefix: str = "adapter-", dtype: torch.dtype = torch.float16,
                  alpha: float | None = None, progress: bool = False, jobs: int = 1,
                  base_path: str | None = None) -> list[Path]:
    """Write `count` adapters out_dir/<prefix>0000 ... (ranks round-robin) and return their folders.

    One adapter is in memory at a time per process (`jobs` processes write in parallel; the files
    do not depend on jobs). Folders that already hold the same adapter (same base shape, rank,
    alpha, targets, seed, index and dtype) are kept as they are, so repeated calls are fast. The
    disk space the new ones need is checked before the first is written.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs={jobs!r} must be an integer >= 1")
    plan = plan_adapters(base, count, ranks, targets, out_dir, seed, prefix, dtype, alpha, base_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    todo = [p for p in plan if not p.current]
    need = sum(adapter_nbytes(base, p.rank, targets, dtype) for p in todo)
    free = shutil.disk_usage(out).free
    if need > free:
        raise ValueError(f"{out}: the {len(todo)} new adapters need {need / 1e9:.2f} GB but only "
                         f"{free / 1e9:.2f} GB is free; free space, use fewer or smaller adapters "
                         "(e.g. --targets q_proj,v_proj), or write elsewhere")
    for p in todo:
        extra = _foreign(p.folder)
        if extra:
            raise ValueError(f"{p.folder}: exists and holds {extra[:5]}, which make_adapters did not write; "
                             "choose another out_dir or prefix, or remove the folder yourself")
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=count, desc="adapters", unit="adapter", initial=count - len(todo))
        bar.set_postfix(reused=count - len(todo), refresh=False)
    try:
        if jobs == 1 or len(todo) < 2:
            for p in todo:
                _write_planned(base, p, targets, seed, dtype, out)
                if bar is not None:
                    bar.update(1)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed
            size = max(1, min(16, len(todo) // (4 * jobs)))  # small chunks keep the bar moving
            chunks = [todo[i:i + size] for i in range(0, len(todo), size)]
            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = [pool.submit(_write_chunk, base, c, list(targets), seed, dtype, out) for c in chunks]
                for fut in as_completed(futures):
                    done = fut.result()
                    if bar is not None:
                        bar.update(done)
    finally:
        if bar is not None:
            bar.close()
    return [p.folder for p in plan]
