"""Triton LoRA pair by rows in one launch (decode): the shrink by rows (kernels.lora_shrink_rows) and the expand by
rows (kernels.lora_expand_rows) as one grid, the shrink's programs first. An expand program reads its first chunk of
B, then waits only for the shrink programs of its own rows, which count themselves into an int32 per block of rows
once their planes are stored; a second launch waits for the whole shrink grid to end (with PDL, for the grid's end
and its memory flush), so its rows' B streams only after the slowest share of the shrink.

Programs start in the order of their ids, so every shrink program has started before any expand program spins and
none waits on a program that cannot run; the CPU interpreter runs them one after another in that order, so there
every count is complete when it is read. Waiting programs poll with a sleep between reads. The last expand program of
each block of rows puts its counts back to 0 for the next launch (the counters are the LoRAMeta's, owner "pair").
Same semantics as the two kernels in turn."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import pdl as pdl_switch
from kernels.interpret import interpreting, patch_interpreter
from kernels.launch import RowsPairConfig, expand_key, launch_fitting, lookup, shrink_key
from kernels.lora_expand import _check as _check_expand
from kernels.lora_expand import device_offsets
from kernels.lora_expand_rows import _expand_rows_tile, default_expand_rows
from kernels.lora_shrink import _check as _check_shrink
from kernels.lora_shrink_rows import _shrink_rows_tile, default_shrink_rows
from kernels.meta import LoRAMeta
from kernels.tiles import hidden_shares, tile_bound

patch_interpreter()


@triton.jit
def _rows_pair_kernel(
    x_ptr, a_ptr, b_ptr, y_ptr, planes_ptr, cnt_ptr, off_ptr, tok_ptr, slot_ptr, scale_ptr, rank_ptr,
    T, hidden, k_per_split, r_max, n_shrink, n_cols, n_blocks,
    stride_xt, stride_xh, stride_aslot, stride_as, stride_ar, stride_ah,
    stride_pp, stride_ps, stride_pt, stride_pr, stride_bslot, stride_bn, stride_bk, stride_yt, stride_yn,
    S: tl.constexpr, S_PAD: tl.constexpr, R_PAD: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_MS: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_ME: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, NE: tl.constexpr, LATE_RANK: tl.constexpr,
    OVERWRITE: tl.constexpr, USE_GDC: tl.constexpr, BACKOFF: tl.constexpr,
):
    """Programs 0..n_shrink-1: shrink tiles (BLOCK_MS rows, share pid % SPLIT of the hidden dimension, into that
    plane), then +1 on the count of each block of BLOCK_ME rows they cover (NE of them). The rest: expand tiles
    (BLOCK_ME rows x column tile; row blocks in order, so the first rows' expands start first), each waiting for
    SPLIT x (the shrink tiles over its rows) on its block's count; cnt[n_blocks + block] counts the block's expand
    programs past their wait, and the block's last puts both of its counts back to 0."""
    if USE_GDC:
        tl.extra.cuda.gdc_launch_dependents()
    pid = tl.program_id(0)
    if pid < n_shrink:
        pm = pid // SPLIT
        _shrink_rows_tile(x_ptr, a_ptr, planes_ptr, tok_ptr, slot_ptr, scale_ptr, rank_ptr, pm, pid % SPLIT,
                          T, hidden, k_per_split, r_max, stride_xt, stride_xh, stride_aslot, stride_as, stride_ar,
                          stride_ah, stride_pp, stride_ps, stride_pt, stride_pr, S, S_PAD, R_PAD, BLOCK_MS, BLOCK_K,
                          EVEN_K, USE_GDC)
        tl.debug_barrier()  # every thread's plane entries are stored before the release below
        blocks = (pm * BLOCK_MS) // BLOCK_ME + tl.arange(0, NE)
        tl.atomic_add(cnt_ptr + blocks, 1, mask=blocks * BLOCK_ME < T, sem="release", scope="gpu")
    else:
        e = pid - n_shrink
        pm = e // n_cols
        first = (pm * BLOCK_ME) // BLOCK_MS
        last = (tl.minimum(T, (pm + 1) * BLOCK_ME) - 1) // BLOCK_MS
        _expand_rows_tile(planes_ptr, b_ptr, y_ptr, off_ptr, tok_ptr, slot_ptr, rank_ptr, e % n_cols, pm, T, r_max,
                          cnt_ptr + pm, SPLIT * (last - first + 1), stride_pp, stride_ps, stride_pt, stride_pr,
                          stride_bslot, stride_bn, stride_bk, stride_yt, stride_yn, S, S_PAD, BLOCK_ME, BLOCK_N,
                          BLOCK_R, SPLIT, USE_GDC, LATE_RANK, OVERWRITE, True, BACKOFF)
        # past the wait (its read of the count is done): the block's last puts its counts back for the next launch
        if tl.atomic_add(cnt_ptr + n_blocks + pm, 1, sem="relaxed", scope="gpu") == n_cols - 1:
            tl.atomic_xchg(cnt_ptr + pm, 0, sem="relaxed", scope="gpu")
            tl.atomic_xchg(cnt_ptr + n_blocks + pm, 0, sem="relaxed", scope="gpu")


def rows_pair_config(tokens: int, hidden: int, n_total: int, slices: int, max_rank: int, dtype,
                     device) -> RowsPairConfig:
    """The two halves' tuned configs for the shape (kernels/configs/<gpu>.json: shrink_rows, expand_rows), else
    their defaults."""
    shrink = lookup("shrink_rows", shrink_key(tokens, hidden, slices, max_rank, dtype), device,
                    default_shrink_rows(tokens, hidden, slices, max_rank))
    expand = lookup("expand_rows", expand_key(tokens, n_total, slices, max_rank, dtype), device,
                    default_expand_rows(max_rank))
    return RowsPairConfig(shrink=shrink, expand=expand)


def lora_rows_pair(x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, meta: LoRAMeta,
                   scales: torch.Tensor, ranks: torch.Tensor, slice_offsets: torch.Tensor, buf: torch.Tensor,
                   y: torch.Tensor, config: RowsPairConfig | None = None, pdl: bool | None = None,
                   overwrite: bool = False) -> torch.Tensor:
    """y (+)= the LoRA update of x, as kernels.lora_shrink_rows into buf then kernels.lora_expand_rows into y, in one
    launch. buf: the float32 [S, T, R_max] rank vectors' room, used when the config does not split the hidden
    dimension (else the planes are a new [P, S, T, R_max]). overwrite, pdl: as lora_expand_rows's. Returns y."""
    _check_shrink(x, lora_a, meta, scales, ranks, buf)
    _check_expand(buf, lora_b, meta, ranks, slice_offsets, y)
    t, hidden = x.shape
    n_y = y.shape[1]
    slices, r_max = lora_a.shape[1], lora_a.shape[2]
    if t == 0:
        return y
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"lora_rows_pair: x has {x.shape[0]} rows but y {y.shape[0]}")
    if overwrite and meta.num_tokens != t:  # rows past the prepared tokens would take stale token indices
        raise ValueError(f"lora_rows_pair(overwrite=True): y has {t} rows, the LoRAMeta was prepared for "
                         f"{meta.num_tokens} tokens")
    key = f"{shrink_key(t, hidden, slices, r_max, x.dtype)}+N{lora_b.shape[1]}"
    asked = config or rows_pair_config(t, hidden, lora_b.shape[1], slices, r_max, x.dtype, x.device)
    offs = device_offsets(slice_offsets, y.device)
    gdc = pdl_switch.use(x.device, t) if pdl is None else pdl

    def launch(cfg: RowsPairConfig) -> None:
        s_cfg, e_cfg = cfg.shrink, cfg.expand
        _, k_per_split = hidden_shares(hidden, s_cfg.block_k, s_cfg.split_k)
        split = triton.cdiv(hidden, k_per_split)  # no empty share: each writes a plane the expand sums
        planes = buf.unsqueeze(0) if split == 1 else torch.empty(split, *buf.shape, dtype=buf.dtype,
                                                                 device=buf.device)
        n_shrink = triton.cdiv(t, s_cfg.block_m) * split
        n_blocks = triton.cdiv(t, e_cfg.block_m)
        n_cols = tile_bound(n_y, slices, e_cfg.block_n)  # spare tiles store nothing
        cnt = meta.counters(2 * n_blocks, owner="pair")
        _rows_pair_kernel[(n_shrink + n_blocks * n_cols,)](
            x, lora_a, lora_b, y, planes, cnt, offs, meta.token_indices, meta.sorted_slot, scales, ranks,
            t, hidden, k_per_split, r_max, n_shrink, n_cols, n_blocks,
            x.stride(0), x.stride(1), lora_a.stride(0), lora_a.stride(1), lora_a.stride(2), lora_a.stride(3),
            planes.stride(0), planes.stride(1), planes.stride(2), planes.stride(3),
            lora_b.stride(0), lora_b.stride(1), lora_b.stride(2), y.stride(0), y.stride(1),
            S=slices, S_PAD=triton.next_power_of_2(slices),
            R_PAD=triton.next_power_of_2(r_max), SPLIT=split, BLOCK_MS=s_cfg.block_m, BLOCK_K=s_cfg.block_k,
            EVEN_K=k_per_split * split == hidden, BLOCK_ME=e_cfg.block_m, BLOCK_N=e_cfg.block_n,
            BLOCK_R=e_cfg.block_r, NE=max(1, s_cfg.block_m // e_cfg.block_m), LATE_RANK=e_cfg.late_rank,
            OVERWRITE=overwrite, BACKOFF=not interpreting(), num_warps=max(s_cfg.num_warps, e_cfg.num_warps),
            **pdl_switch.launch_options(gdc),
        )
    launch_fitting("rows_pair", key, asked, launch)
    return y
