"""Triton helpers shared by the kernels: map a flat program id onto variable-sized groups of tiles."""
import triton
import triton.language as tl


@triton.jit
def locate_tile(pid, sizes, BLOCK: tl.constexpr, N_POW2: tl.constexpr):
    """Groups of sizes[i] rows are cut into tiles of BLOCK rows, numbered group after group.

    Returns (group, tile within the group, valid) for flat tile number `pid`; valid is False past the
    last tile. `sizes` is an int32 vector of N_POW2 entries (0 for absent groups). This lets a launch
    over a host-side bound cover segments whose lengths only the device knows (CUDA-graph replay).
    """
    offs = tl.arange(0, N_POW2)
    tiles = (sizes + BLOCK - 1) // BLOCK
    ends = tl.cumsum(tiles, 0)  # inclusive prefix sums
    group = tl.sum((ends <= pid).to(tl.int32), 0)
    begin = tl.sum(tl.where(offs == group, ends - tiles, 0), 0)
    total = tl.sum(tiles, 0)
    return group, pid - begin, pid < total


@triton.jit
def segment_lens(nseg_ptr, seg_len_ptr, SEG_POW2: tl.constexpr, SEG_MAX: tl.constexpr):
    """The step's segment lengths (LoRAMeta) as a SEG_POW2 vector, 0 past its last segment; the count and the
    lengths are loaded together (no dependent round trip)."""
    offs_seg = tl.arange(0, SEG_POW2)
    n_seg = tl.load(nseg_ptr)
    lens = tl.load(seg_len_ptr + offs_seg, mask=offs_seg < SEG_MAX, other=0)
    return tl.where(offs_seg < n_seg, lens, 0)


@triton.jit
def tile_total(sizes, BLOCK: tl.constexpr):
    """Tiles of BLOCK rows that groups of sizes[i] rows are cut into (locate_tile's numbering ends there)."""
    return tl.sum((sizes + BLOCK - 1) // BLOCK, 0)


@triton.jit
def locate_program(pid_m, pid_n, tok_ptr, seg_start_ptr, seg_len_ptr, seg_slot_ptr, nseg_ptr, rank_ptr, off_ptr, r_max,
                   S: tl.constexpr, S_POW2: tl.constexpr, SEG_POW2: tl.constexpr, SEG_MAX: tl.constexpr,
                   BLOCK_M: tl.constexpr, CHUNK: tl.constexpr):
    """A (token tile, column chunk) program of the expand-shaped kernels: pid_m walks the segments' BLOCK_M-token
    tiles (LoRAMeta), pid_n the slices' CHUNK-column chunks (slice i spans columns off[i]..off[i+1]).

    Returns (slot, rank, tok, m_mask, slice, chunk within it, the slice's first and end column): the tile's
    adapter slot and its rank (capped at r_max; 0 past the last tile, so `rank > 0` also means valid), its
    token rows (int64) and their mask. The step metadata loads are issued together: no dependent round trip
    before the tile search.
    """
    lens = segment_lens(nseg_ptr, seg_len_ptr, SEG_POW2, SEG_MAX)
    offs_s = tl.arange(0, S_POW2)
    lo = tl.load(off_ptr + offs_s, mask=offs_s < S, other=0)
    hi = tl.load(off_ptr + offs_s + 1, mask=offs_s < S, other=0)
    seg, m_tile, valid_m = locate_tile(pid_m, lens, BLOCK_M, SEG_POW2)
    sl, n_chunk, valid_n = locate_tile(pid_n, hi - lo, CHUNK, S_POW2)
    valid = valid_m & valid_n
    slot = tl.load(seg_slot_ptr + seg, mask=valid, other=0)
    start = tl.load(seg_start_ptr + seg, mask=valid, other=0)
    length = tl.load(seg_len_ptr + seg, mask=valid, other=0)
    rank = tl.where(valid, tl.minimum(tl.load(rank_ptr + slot, mask=valid, other=0), r_max), 0)
    offs_m = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < length
    tok = tl.load(tok_ptr + start + offs_m, mask=m_mask, other=0).to(tl.int64)
    n_lo = tl.sum(tl.where(offs_s == sl, lo, 0), 0)
    n_hi = tl.sum(tl.where(offs_s == sl, hi, 0), 0)
    return slot, rank, tok, m_mask, sl, n_chunk, n_lo, n_hi


def tile_bound(total_rows: int, max_groups: int, block: int) -> int:
    """Most tiles that groups of at most `max_groups` non-empty groups over `total_rows` rows can need.

    Each non-empty group wastes less than one tile, so cdiv(total, block) + groups - 1 bounds the sum.
    """
    groups = max(1, min(total_rows, max_groups))
    return max(1, triton.cdiv(total_rows, block) + groups - 1)


def hidden_shares(hidden: int, block_k: int, split_k: int) -> tuple[int, int]:
    """(shares, columns per share) of a hidden dimension split `split_k` ways in whole block_k steps: at most one
    share per step; the last shares may be short or, for the semaphore kernels that count every share, empty."""
    split = max(1, min(split_k, triton.cdiv(hidden, block_k)))
    return split, triton.cdiv(triton.cdiv(hidden, block_k), split) * block_k
