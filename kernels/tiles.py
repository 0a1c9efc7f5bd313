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


def tile_bound(total_rows: int, max_groups: int, block: int) -> int:
    """Most tiles that groups of at most `max_groups` non-empty groups over `total_rows` rows can need.

    Each non-empty group wastes less than one tile, so cdiv(total, block) + groups - 1 bounds the sum.
    """
    groups = max(1, min(total_rows, max_groups))
    return max(1, triton.cdiv(total_rows, block) + groups - 1)


@triton.jit
def step_tile(pid, tiles_ptr, max_tiles, seg_start_ptr, seg_len_ptr, seg_slot_ptr, nseg_ptr,
              BLOCK_M: tl.constexpr, SEG_POW2: tl.constexpr, SEG_MAX: tl.constexpr, TILES: tl.constexpr):
    """(slot, first row in token_indices, rows, valid) of flat token tile `pid` of this step.

    TILES (BLOCK_M is LoRAMeta's TILE_M): three independent loads from the step's precomputed tile
    table, so the weights' loads start one memory round trip later instead of three. Otherwise the
    tile is located among the segments (locate_tile over the segment lengths).
    """
    if TILES:
        inside = pid < max_tiles
        row0 = tl.load(tiles_ptr + pid, mask=inside, other=0)
        rows = tl.load(tiles_ptr + max_tiles + pid, mask=inside, other=0)
        slot = tl.load(tiles_ptr + 2 * max_tiles + pid, mask=inside, other=0)
        valid = pid < tl.load(tiles_ptr + 3 * max_tiles)
    else:
        offs_seg = tl.arange(0, SEG_POW2)
        n_seg = tl.load(nseg_ptr)  # issued together with the lengths: no dependent round trip
        lens = tl.load(seg_len_ptr + offs_seg, mask=offs_seg < SEG_MAX, other=0)
        lens = tl.where(offs_seg < n_seg, lens, 0)
        seg, m_tile, valid = locate_tile(pid, lens, BLOCK_M, SEG_POW2)
        slot = tl.load(seg_slot_ptr + seg, mask=valid, other=0)
        row0 = tl.load(seg_start_ptr + seg, mask=valid, other=0) + m_tile * BLOCK_M
        rows = tl.load(seg_len_ptr + seg, mask=valid, other=0) - m_tile * BLOCK_M
    return slot, row0, rows, valid
