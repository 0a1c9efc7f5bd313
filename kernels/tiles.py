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
