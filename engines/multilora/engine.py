"""MultiLoRAEngine: continuous batching over a paged KV cache with many LoRA adapters in one batch."""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engines.base import AdapterNotFoundError, Engine, EngineError, Request, StepOutput, check_prompt
from engines.config import EngineConfig, slot_rank
from engines.model.config import LORA_TARGETS, ModelArgs
from engines.model.llama import MODULE_GROUP, Transformer, build_model
from engines.multilora.adapter_pool import AdapterPool, default_host_capacity
from engines.multilora.block_manager import BlockManager
from engines.multilora.model_runner import Carry, ModelRunner, RunnerConfig, kv_block_bytes
from engines.multilora.policy import MixedAdapters
from engines.multilora.pool_api import AdapterPoolAPI
from engines.multilora.sampler import Draw, Sampler, banned_tokens, stop_reason
from engines.multilora.scheduler import Batch, Scheduler, SchedulerConfig
from engines.multilora.sequence import PENDING, Sequence, SeqStatus
from engines.model import blas
from kernels import pdl as kernels_pdl
from kernels.launch import (JOINT_FLOP_TOKENS, JOINT_FREE_SLOTS, JOINT_MAX_TOKENS, JOINT_MIN_TOKENS, JOINT_MOST_SLOTS,
                            JOINT_RATIO, ROWS_ANY_FILL_TOKENS, ROWS_AUTO_PER_TILE, ROWS_AUTO_TOKENS,
                            SIDE_STREAM_MAX_TOKENS)

CPU_KV_BLOCKS = 2048
STEP_TOKENS = 2048  # default token budget of a mixed step
# extra.lora_shrink_rows unset. On the H200 (docs/performance.md, run 11; the profile in 3 rounds, pipelined step) the
# shrink by rows took the LoRA tax at batch 64 over 64 adapters from +18.7% to +17.4% and at batch 1 from +4.8% to
# +3.2%, beyond the spread of their rounds (0.1-0.5 points); at 256 over 256 from +27.0% to +26.3%, within it
SHRINK_ROWS_DEFAULT = True
# extra.lora_fold unset: on with CUDA. On the H200 (docs/performance.md, run 14; the profile in 3 rounds, pipelined
# step, one machine) folding took the LoRA tax at batch 1 over one adapter from +6.7% to +4.6% (rounds 4.5-4.7 and
# 6.6-6.7), and from +7.0% to +5.3% with PDL; to reach 64 tokens the side stream's bound went from 32 to 64 with
# it (kernels/launch.py)
FOLD_DEFAULT_CUDA = True
# extra.lora_joint unset: on with CUDA. On the H200 (docs/performance.md, run 17 call c; the profile in 3 rounds, each
# point on both paths in turn, pipelined) the joint path took the LoRA tax at 64 decodes over 64 adapters from +10.5%
# to +9.3%, over one from +6.3% to +4.5%, at 16 over one from +5.6% to +2.7%, at 96 over 64 from +17.3% to +11.1%; at
# one token it was behind by 0.2-0.3 points (so steps of one token keep the fold); past 96 tokens see kernels/launch.py
JOINT_DEFAULT_CUDA = True
MIXED_GRAPH_ROWS = 256  # prompt tokens a graphed mixed step carries beyond max_num_seqs (extra mixed_graphs)
# engine-specific knobs in EngineConfig.extra and what they mean
EXTRA_KEYS = {
    "lora_targets": "modules the device slots cover (default: those of the start adapters, else all seven)",
    "capture_graphs": "capture every decode graph at start (default true) instead of at first use",
    "fused_ops": "Triton kernels for norms, RoPE + cache write and SiLU-mul on CUDA (default true)",
    "lora_stream": f"on CUDA, run the LoRA shrink of calls of up to {SIDE_STREAM_MAX_TOKENS} tokens on a side stream "
                   "beside their base matmul (default true); false: never; N: calls of up to N tokens",
    "lora_fold": "q,k,v and o LoRA calls that take the side stream run shrink and expand there, into a buffer the "
                 "next fused op adds (RoPE + cache write, add + RMSNorm), so no LoRA kernel waits on the main "
                 "stream (default: true on CUDA, false elsewhere)",
    "lora_joint": f"steps of {JOINT_MIN_TOKENS} to N tokens run the q,k,v and o LoRA shrink inside the base matmul "
                  "(each slot's A rows after the base weight's, one matmul over the slots up to the highest a step "
                  "uses) and expand in the op that consumes its output (RoPE + cache write, add + RMSNorm), where the step's span of "
                  f"slots is at most {JOINT_FREE_SLOTS} or {JOINT_RATIO:g} x its adapters (past {JOINT_FLOP_TOKENS} "
                  f"tokens a span counts in proportion to the tokens, and at most {JOINT_MOST_SLOTS}): auto (default: "
                  + (f"{JOINT_MAX_TOKENS} tokens on CUDA, elsewhere " if JOINT_DEFAULT_CUDA else "")
                  + f"never), true ({JOINT_MAX_TOKENS} tokens), false or N",
    "lora_expand_rows": "steps of up to N tokens expand LoRA by rows: each token gathers its own adapter's B, no "
                        f"segments (kernels/lora_expand_rows.py); auto (default): steps of up to {ROWS_AUTO_TOKENS} "
                        f"tokens with at most {ROWS_AUTO_PER_TILE:g} adapter tokens per 16-row tile of the segment "
                        f"expand (decode over many adapters, not prompts) and steps of up to {ROWS_ANY_FILL_TOKENS} "
                        "tokens; 0 or false: by segments always",
    "lora_shrink_rows": "steps that expand LoRA by rows also shrink by rows: each token reads its own adapter's A "
                        "over a share of the hidden dimension, no segments and no split-K pass "
                        f"(kernels/lora_shrink_rows.py; default {str(SHRINK_ROWS_DEFAULT).lower()})",
    "pdl": "on Hopper GPUs, launch the step's own Triton kernels (LoRA shrink and expand, norms, RoPE + cache write, "
           "SiLU-mul, attention) with programmatic dependent launch: each loads weights and metadata while the kernel "
           "before finishes (kernels/pdl.py): auto (the process's setting: LORA_FLEET_PDL if set, else calls of up "
           f"to {kernels_pdl.MAX_TOKENS} tokens), true (every call), false, or calls of up to N tokens; one setting "
           "for the process",
    "cublaslt": "on CUDA, the base model's matmuls of forward passes of up to N tokens go through cuBLASLt, above "
                "through the process's own library (engines/model/blas.py): auto (default: passes of up to "
                f"{blas.MAX_TOKENS} tokens), true (every pass), false (never), or N; one setting for the process",
    "fused_lora": "LoRA shrink+expand as one fused kernel: auto (default: where the GPU's tuned file measured it faster, "
                  "else the pair), true, false, or up to N tokens",
    "warmup": "on CUDA, prefill every token-count bucket once at start so no Triton compile stalls serving "
              "(default true)",
    "mixed_steps": "one forward pass per step decodes every running sequence and prefills the newly admitted "
                   "ones (default true; on CUDA only with cuda_graphs, since eager mixed steps measured slower "
                   "there); false: a prefill step of its own, before any decode",
    "mixed_graphs": f"prompt tokens ride as decode rows (each attends over its own cache) when a step has at most "
                    f"max_num_seqs + {MIXED_GRAPH_ROWS} tokens, so mixed steps replay CUDA graphs (default: true "
                    "on CUDA with mixed steps and cuda_graphs, false elsewhere)",
    "overlap": "launch step n+1 before reading step n's tokens, so the host schedules and prepares a step while "
               "the device runs the one before (tokens stay on the device between them; a sequence that stops "
               "drops the one token sampled after its stop) (default: true on CUDA with cuda_graphs, false "
               "elsewhere and for the merged baseline)",
    "step_tokens": f"token budget of a mixed step, decode tokens counting 1 each (default: max_num_seqs + "
                   f"{MIXED_GRAPH_ROWS} with mixed_graphs, so steps fit the graphs, else {STEP_TOKENS}; at most "
                   "max_num_batched_tokens); the first prompt of a step may exceed it",
}


@dataclass
class _Launched:
    """A step on the device: each sequence's row in its sampled tokens."""

    rows: dict[Sequence, int]
    draw: Draw


def _pending_at(output_ids: list[int]) -> int:
    """Index of a sequence's oldest placeholder: the last output, or the one before when the next step's is
    in flight too."""
    n = len(output_ids)
    return n - 2 if n >= 2 and output_ids[-2] == PENDING else n - 1


def load_model(config: EngineConfig, device: torch.device, dtype: torch.dtype) -> Transformer:
    """A preset with random weights (config.seed) or a local Hugging Face checkpoint folder."""
    from engines.model.config import PRESETS
    if config.model in PRESETS:
        return build_model(ModelArgs.from_name(config.model), dtype, device, seed=config.seed)
    if Path(config.model).is_dir():
        from engines.model.checkpoint import load_checkpoint
        args, sd = load_checkpoint(config.model, dtype=dtype, device=device)
        return build_model(args, dtype, device, state_dict=sd)
    raise ValueError(f"engine config: model={config.model!r} is neither a preset ({sorted(PRESETS)}) nor a "
                     "folder with config.json and safetensors")


class MultiLoRAEngine(Engine):
    name = "multilora"
    scheduler_policy = MixedAdapters  # the merged baseline serves one weight copy per step

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        unknown = sorted(set(config.extra) - set(EXTRA_KEYS))
        if unknown:
            raise ValueError(f"engine config: unknown extra key(s) {unknown}; known: {EXTRA_KEYS}")
        self.device = torch.device(config.resolved_device())
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise EngineError("engine config: device=cuda but torch sees no CUDA device; use device=cpu or auto")
        self.dtype = config.resolved_dtype()
        self.model = load_model(config, self.device, self.dtype)
        if self.device.type == "cuda" and config.extra.get("fused_ops", True):
            self.model.use_fused_ops()
        args = self.model.args
        self.eos_token_id = args.eos_token_id
        self.vocab_size = args.vocab_size
        self.base_model_name = config.model
        start = self._read_start_adapters()
        if config.max_lora_rank is None:  # the slots take the start adapters' rank (a copy: the caller's stays)
            rank = slot_rank(a.rank for _, a in start.values())
            self.config = config = dataclasses.replace(config, max_lora_rank=rank)
            if start:
                print(f"adapter slots of rank {rank}, sized from the {len(start)} start adapter(s); set "
                      "max_lora_rank for room for larger ones", file=sys.stderr, flush=True)
        self.pool: AdapterPoolAPI = self._make_pool(start)
        side = self._side_tokens()
        if self.device.type == "cuda" and self.model.lora_stacks and side:
            self.model.use_lora_stream(side)
        self.lora_fold = self._flag("lora_fold", FOLD_DEFAULT_CUDA and self.device.type == "cuda")
        self.model.use_lora_fold(self.lora_fold)
        self.model.use_shrink_rows(self._flag("lora_shrink_rows", SHRINK_ROWS_DEFAULT))
        self.model.use_fused_lora(config.extra.get("fused_lora", "auto"))
        self._set_pdl()
        self._set_cublaslt()
        num_blocks = config.num_kv_blocks or self._derive_kv_blocks()
        self.max_model_len = min(config.max_model_len, args.max_seq_len, config.max_num_batched_tokens,
                                 num_blocks * config.block_size)
        self.blocks = BlockManager(num_blocks, config.block_size)
        self.scheduler = Scheduler(SchedulerConfig(
            max_num_seqs=config.max_num_seqs, max_num_batched_tokens=config.max_num_batched_tokens,
            max_loras=self._max_loras(), mixed_steps=self._mixed_steps(), step_tokens=self._step_tokens()),
            self.blocks, self.scheduler_policy())
        self.runner = ModelRunner(self.model, RunnerConfig(
            block_size=config.block_size, num_blocks=num_blocks, max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens, max_model_len=self.max_model_len,
            lora_slots=self._lora_slots(), cuda_graphs=config.cuda_graphs, graph_rows=self._graph_rows()),
            self.device, self.dtype)
        self.runner.use_expand_rows(*self._expand_rows())
        self.joint_tokens = self._joint_tokens()
        self.runner.use_joint(self.joint_tokens)
        self.sampler = Sampler(self.device, config.seed)
        self._seqs: dict[str, Sequence] = {}
        self._pinned: set[str] = set()
        self._pending_out: list[StepOutput] = []
        self.overlap = self._overlap()
        self._in_flight: _Launched | None = None  # the step launched last, its tokens not read yet (overlap)
        self.steps = 0
        self.step_s = 0.0  # seconds in step(), summed
        self.tokens_generated = 0
        self.last_batch_size = 0
        self.last_decode_size = 0
        self.decode_tokens = 0
        self.last_step_s = 0.0
        self._register_start(start)
        if self.runner.graphs is not None and config.extra.get("capture_graphs", True):
            self._capture_graphs()
        if self.device.type == "cuda" and config.extra.get("warmup", True):
            self._warmup()

    # ---- construction hooks (the merged baseline overrides these) --------------------------------
    def _read_start_adapters(self) -> dict[str, tuple[str, Any]]:
        """Each start adapter folder described from its config and safetensors header (no weights read); the
        weights are read when the pool packs them (at start while the host LRU has room, else on first use)."""
        if not self.config.adapters:
            return {}
        from engines.adapters.peft_format import adapter_folders, inspect_adapter
        folders = adapter_folders(self.config.adapters)
        return {p.name: (str(p), inspect_adapter(p, self.model.args, max_rank=self.config.max_lora_rank,
                                                 name=p.name)) for p in folders}

    def _lora_targets(self, start: dict[str, tuple[str, Any]]) -> tuple[str, ...]:
        targets = self.config.extra.get("lora_targets")
        if targets is None:
            found = {m for _, a in start.values() for m in a.targets}
            targets = [m for m in LORA_TARGETS if m in found] or list(LORA_TARGETS)
        bad = [t for t in targets if t not in LORA_TARGETS]
        if bad or not targets:
            raise ValueError(f"engine config: extra.lora_targets={targets!r}; use names from {list(LORA_TARGETS)}")
        return tuple(targets)

    def _make_pool(self, start):
        groups = tuple(dict.fromkeys(MODULE_GROUP[m] for m in self._lora_targets(start)))
        self.model.enable_lora(self.config.gpu_slots, self.config.max_lora_rank, groups)
        capacity = self.config.host_adapter_capacity
        if capacity is None:
            capacity, notice = default_host_capacity([a for _, a in start.values()], self.model, self.dtype)
            if notice:
                print(notice, file=sys.stderr, flush=True)
        return AdapterPool(self.model, self.config.gpu_slots, self.config.max_lora_rank, capacity, self.device,
                           self.dtype)

    def _flag(self, key: str, default: bool) -> bool:
        value = self.config.extra.get(key, default)
        if not isinstance(value, bool):
            raise ValueError(f"engine config: extra.{key}={value!r} must be true or false")
        return value

    # On an H200 (docs/performance.md, run 6), workloads/saturate.yaml: separate steps saturated at 64 req/s
    # (7,021 tok/s, TTFT p50 1.4 s), eager mixed steps did worse (4,839), mixed steps replaying graphs with a
    # step budget that fits them served the whole 64 req/s (TTFT p50 40 ms, every request within the SLO) and
    # 8,593 tok/s at 100 req/s. Without graphs on CUDA, separate steps stay the default.
    def _graphed_mixed_steps(self) -> bool:
        """Whether this engine's default on CUDA is mixed steps replaying graphs (with cuda_graphs)."""
        return self.device.type == "cuda" and self.config.cuda_graphs

    def _token_count(self, key: str, default, true: int | None = None, least: int = 0, auto: bool = False):
        """A token-count extra: an int >= least, false for 0, (where `true` is given) true for `true`, and (with
        auto) "auto" for None: the caller's rule."""
        value = self.config.extra.get(key, default)
        if auto and value == "auto":
            return None
        if value is False or (value is True and true is not None):
            return 0 if value is False else true
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"engine config: extra.{key}={value!r} must be "
                             + ("true, false or " if true is not None else "false or ") + f"a token count >= {least}"
                             + (", or auto" if auto else ""))
        return value

    def _expand_rows(self) -> tuple[int, float, int]:
        """(max tokens, max adapter tokens per 16-row segment tile, tokens up to which any fill goes) of the steps
        that expand by rows, from extra.lora_expand_rows."""
        n = self._token_count("lora_expand_rows", "auto", auto=True)
        return (ROWS_AUTO_TOKENS, ROWS_AUTO_PER_TILE, ROWS_ANY_FILL_TOKENS) if n is None else (n, math.inf, 0)

    def _joint_tokens(self) -> int:
        """Tokens up to which a step may take the joint path (0: never), from extra.lora_joint."""
        n = self._token_count("lora_joint", "auto", true=JOINT_MAX_TOKENS, auto=True)
        if n is None:
            return JOINT_MAX_TOKENS if JOINT_DEFAULT_CUDA and self.device.type == "cuda" else 0
        return n

    def _set_pdl(self) -> None:
        """extra.pdl: auto (or unset) keeps the process's setting; else true, false or a token count sets it."""
        n = self._token_count("pdl", "auto", true=kernels_pdl.ALL, least=1, auto=True)
        if n is not None:
            kernels_pdl.set_max_tokens(n)

    def _set_cublaslt(self) -> None:
        """extra.cublaslt: auto (or unset) keeps the process's setting; else true, false or a token count sets it."""
        n = self._token_count("cublaslt", "auto", true=blas.ALL, least=1, auto=True)
        if n is not None:
            blas.set_max_tokens(n)

    def _side_tokens(self) -> int:
        """Tokens up to which a LoRA call runs beside the base matmul (0: never), from extra.lora_stream."""
        return self._token_count("lora_stream", True, true=SIDE_STREAM_MAX_TOKENS, least=1)

    # On an H200 (docs/performance.md, run 7), workloads/saturate.yaml at 100 req/s with graphed mixed steps:
    # 8,155 output tok/s with every request over the SLO's TTFT, against 11,556 and every request within it
    # when step n+1 is launched before step n's tokens are read.
    def _overlap(self) -> bool:
        return self._flag("overlap", self._graphed_mixed_steps())

    def _mixed_steps(self) -> bool:
        return self._flag("mixed_steps", self.device.type != "cuda" or self._graphed_mixed_steps())

    def _graph_rows(self) -> int:
        graphed = self._flag("mixed_graphs", self._graphed_mixed_steps() and self._mixed_steps())
        return MIXED_GRAPH_ROWS if graphed else 0

    def _step_tokens(self) -> int:
        rows = self._graph_rows()
        default = self.config.max_num_seqs + rows if rows else STEP_TOKENS
        n = self.config.extra.get("step_tokens", default)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"engine config: extra.step_tokens={n!r} must be an integer >= 1")
        return min(n, self.config.max_num_batched_tokens)

    def _max_loras(self) -> int:
        return min(self.config.max_loras, self.config.gpu_slots)

    def _lora_slots(self) -> int:
        return self.config.gpu_slots

    def _weights_for(self, batch: Batch) -> object:
        """Select the weights this batch runs with; returns the key its decode graphs are cached under."""
        return None

    def _capture_graphs(self) -> None:
        self.runner.graphs.capture_all(with_lora=True)
        self.runner.graphs.capture_all(with_lora=False)

    def _warmup(self) -> None:
        """Prefill one prompt per token-count bucket (a power of two and one below it, so Triton's
        divisible-by-16 specialisations are both built), with and without an adapter, then reset the
        counters: kernels compile here rather than in the middle of a measured run. With mixed steps each
        prompt is prefilled while the one before it decodes (eager decode attention is built too)."""
        from engines.base import SamplingParams
        names = [None] + sorted(self.pool.names())[:1]
        lengths, n = [], 1
        while n < self.max_model_len:
            lengths += [n, max(1, n - 1)]
            n *= 2
        lengths.append(self.max_model_len - 2)
        for i, length in enumerate(sorted(set(lengths))):
            for adapter in names:
                rid = f"__warmup-{i}-{adapter}"
                self.add_request(Request(rid, [self.eos_token_id % self.vocab_size] * length, adapter,
                                         SamplingParams(max_tokens=2, ignore_eos=True)))
                self.step()
                while self.has_unfinished() and not self.scheduler.config.mixed_steps:
                    self.step()
        while self.has_unfinished():
            self.step()
        self.steps = self.tokens_generated = self.decode_tokens = 0
        self.step_s = self.sampler.wait_s = 0.0

    def _derive_kv_blocks(self) -> int:
        if self.device.type != "cuda":
            return CPU_KV_BLOCKS
        torch.cuda.empty_cache()  # blocks the caching allocator holds but nothing uses count as free
        free, total = torch.cuda.mem_get_info(self.device)
        a, c = self.model.args, self.config
        # activations of the largest step (prompt tokens + a mixed step's decode tokens) and the logits of the
        # largest decode batch, plus graph pools
        reserve = ((c.max_num_batched_tokens + c.max_num_seqs) * (6 * a.dim + 3 * a.intermediate_size) * 2
                   + (c.max_num_seqs + self._graph_rows()) * a.vocab_size * 8 + (2 << 30))
        budget = total * c.gpu_memory_utilization - (total - free) - reserve
        n = int(budget // kv_block_bytes(self.model, c.block_size, self.dtype))
        if n < 1:
            raise EngineError(f"no GPU memory left for the KV cache ({budget / 2**30:.1f} GiB after weights and "
                              "adapter slots); lower gpu_slots or max_lora_rank, or raise gpu_memory_utilization")
        return n

    # ---- adapters --------------------------------------------------------------------------------
    def _register_start(self, start: dict[str, tuple[str, Any]]) -> None:
        """Register the start adapters from their descriptions, then read as many as the host LRU holds
        in parallel."""
        for name, (path, adapter) in start.items():
            self.pool.register(name, path, known=adapter, read_now=False)
        self.pool.fill_host(list(start))

    def _register(self, name: str, path: str, loader=None) -> None:
        self.pool.register(name, path, loader)

    def register_adapter(self, name: str, path: str) -> None:
        if not name or "/" in name:
            raise ValueError(f"adapter name {name!r} must be non-empty and contain no '/'")
        self._register(name, str(path))

    def register_adapter_loader(self, name: str, loader, label: str = "<memory>") -> None:
        """Register an adapter produced by loader() (a LoRAAdapter), e.g. synthetic ones in benchmarks."""
        self._register(name, label, loader=loader)

    def unregister_adapter(self, name: str) -> None:
        if name not in self.pool.names():
            raise AdapterNotFoundError(f"adapter {name!r} is not registered")
        for seq in [s for s in self._seqs.values() if s.adapter == name]:
            self._finish(seq, "error", error=f"adapter {name!r} was unregistered")
        self.pool.unregister(name)

    def adapters(self) -> dict[str, str]:
        return self.pool.names()

    # ---- requests --------------------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        ids = check_prompt(request, self.pool.names(), self.vocab_size, self.max_model_len, self.base_model_name)
        if request.request_id in self._seqs:
            raise ValueError(f"request_id {request.request_id!r} is already in flight")
        seq = Sequence(request.request_id, ids, request.adapter, request.params, request.arrival)
        self._seqs[seq.seq_id] = seq
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> None:
        seq = self._seqs.get(request_id)
        if seq is not None:
            self._release(seq, "abort")

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished() or bool(self._pending_out) or self._in_flight is not None

    def _release(self, seq: Sequence, reason: str) -> None:
        self.scheduler.remove(seq, reason)
        if seq.seq_id in self._pinned:
            self._pinned.discard(seq.seq_id)
            self.pool.unpin(seq.adapter)
        self.sampler.forget(seq.seq_id)
        self._seqs.pop(seq.seq_id, None)

    def _finish(self, seq: Sequence, reason: str, error: str | None = None) -> StepOutput:
        self._release(seq, reason)
        out = StepOutput(seq.seq_id, [], True, reason, seq.num_prompt, seq.num_output, error)
        if error is not None:
            self._pending_out.append(out)
        return out

    # ---- the loop --------------------------------------------------------------------------------
    def step(self) -> list[StepOutput]:
        """Schedule and launch one step, then read the tokens of the step before it (overlapped: the host
        schedules and prepares step n+1 while the device runs step n) or of this one (not overlapped)."""
        t0 = time.perf_counter()
        self.pool.finish_loads()
        for name, why in self.pool.take_failed().items():
            for seq in [s for s in self._seqs.values() if s.adapter == name and s.status is SeqStatus.WAITING]:
                self._finish(seq, "error", error=f"adapter {name!r} could not be loaded: {why}")
        outputs, self._pending_out = self._pending_out, []
        self.pool.want(self.scheduler.waiting_adapters())
        batch = self.scheduler.schedule(self.pool.is_ready)
        launched = None
        if batch is not None:
            for seq in batch.preempted:
                if seq.seq_id in self._pinned:
                    self._pinned.discard(seq.seq_id)
                    self.pool.unpin(seq.adapter)
            if batch.seqs:
                for seq in batch.seqs:
                    if seq.seq_id not in self._pinned:
                        self._pinned.add(seq.seq_id)
                        self.pool.pin(seq.adapter)
                launched = self._launch(batch)
            self.steps += 1
            self.last_batch_size = len(batch.seqs)
            self.last_decode_size = len(batch.decode)
            self.decode_tokens += len(batch.decode)
        previous, self._in_flight = self._in_flight, (launched if self.overlap else None)
        for done in (previous, None if self.overlap else launched):
            if done is not None:
                outputs.extend(self._collect(done))
        if batch is None and previous is None:
            if self.pool.pending():
                self.pool.wait_briefly()
            return outputs
        self.last_step_s = time.perf_counter() - t0
        self.step_s += self.last_step_s
        return outputs

    def _launch(self, batch: Batch) -> "_Launched":
        """Run the step's forward pass and sampling on the device and give each sequence a placeholder for its
        token; decode rows whose input is the previous step's token still on the device take it there."""
        seqs = batch.seqs
        carry = None
        if self._in_flight is not None:
            rows = self._in_flight.rows
            pairs = [(i, rows[s]) for i, s in enumerate(batch.decode) if s in rows]
            if pairs:
                carry = Carry(self._in_flight.draw.tokens, [i for i, _ in pairs], [j for _, j in pairs])
        logits = self.runner.step(batch.decode, batch.prefill, [self.pool.slot(s.adapter) for s in seqs],
                                  self._weights_for(batch), carry)
        draw = self.sampler.launch(logits, [s.seq_id for s in seqs], [s.params for s in seqs],
                                   [self._banned(s) for s in seqs])
        for seq in seqs:
            seq.output_ids.append(PENDING)
            # stops whatever the token: the scheduler leaves it out of the next step
            seq.final = seq.num_output >= seq.params.max_tokens or len(seq) >= self.max_model_len
        return _Launched({s: i for i, s in enumerate(seqs)}, draw)

    def _collect(self, launched: "_Launched") -> list[StepOutput]:
        """Read a launched step's tokens into its sequences and apply the stop rules. A sequence that finished
        or was aborted meanwhile drops its token; one that stops here drops any token after it."""
        tokens = self.sampler.collect(launched.draw)
        outs = []
        for seq, row in launched.rows.items():
            tok = tokens[row]
            if seq.status is SeqStatus.FINISHED:
                continue
            at = _pending_at(seq.output_ids)
            if tok is None:  # this request alone could not be sampled: it fails, the batch goes on
                self._finish(seq, "error", error=self.sampler.failures[seq.seq_id])  # reported next step
                continue
            seq.output_ids[at] = tok
            self.tokens_generated += 1
            n = at + 1
            reason = stop_reason(seq.params, tok, n, seq.num_prompt + n, self.eos_token_id, self.max_model_len)
            if reason is None:
                outs.append(StepOutput(seq.seq_id, [tok], False, None, seq.num_prompt, n))
            else:
                del seq.output_ids[n:]  # a token sampled after the stop is not part of the output
                out = self._finish(seq, reason)
                out.new_token_ids = [tok]
                outs.append(out)
        return outs

    def _banned(self, seq: Sequence) -> tuple[int, ...]:
        return banned_tokens(seq.params, seq.num_output, self.eos_token_id)

    def stats(self) -> dict[str, float]:
        out = {
            "queue_depth": len(self.scheduler.waiting),
            "running": len(self.scheduler.running),
            "batch_size": self.last_batch_size,  # sequences in the last step, decodes and prefills
            "decode_batch_size": self.last_decode_size,  # of which decoded a token
            "decode_tokens": self.decode_tokens,  # decode tokens over all steps (/ steps: decode batch per step)
            "kv_blocks_used": self.blocks.num_used,
            "kv_blocks_total": self.blocks.num_blocks,
            "preemptions": self.scheduler.num_preemptions,
            "steps": self.steps,
            "tokens_generated": self.tokens_generated,
            "step_ms": round(self.last_step_s * 1e3, 3),
            # the engine thread's seconds in steps, and of those blocked on the device's tokens: a server whose
            # steps wait little on the device is bound by its host (scheduling, preparing, sampling, streaming)
            "step_seconds": round(self.step_s, 6),
            "device_wait_seconds": round(self.sampler.wait_s, 6),
            # the step kind in effect (defaults differ by device): what the fleet simulator's fit reads
            "mixed_steps": float(self.scheduler.config.mixed_steps),
            "step_tokens": self.scheduler.config.step_tokens,
            "overlap": float(self.overlap),  # steps launched before the one before is read
            "lora_steps": self.runner.lora_steps,  # forward passes with adapters, and of those the ones whose LoRA
            "expand_rows_steps": self.runner.expand_rows_steps,  # expand went by rows (extra lora_expand_rows)
            "joint_steps": self.runner.joint_steps,  # the LoRA shrink rode in the base matmul (extra lora_joint)
        }
        out.update(self.pool.stats())
        return out

    def close(self) -> None:
        self._in_flight = None
        self.pool.close()
        for seq in list(self._seqs.values()):
            self._release(seq, "abort")
        if self.device.type == "cuda":
            self.runner.graphs = None
            torch.cuda.empty_cache()
