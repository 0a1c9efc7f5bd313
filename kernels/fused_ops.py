"""FusedOps: the model's elementwise pieces as one Triton kernel each (add+RMSNorm, RoPE+KV-cache write, SiLU-mul).

Same methods and rounding as engines.model.llama.TorchOps; a decode step launches about 30 fewer
kernels per layer, which is most of the gap to the byte floor at small batches under CUDA graphs.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import pdl


@triton.jit
def _add_rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, d_ptr, n_cols, stride_x, stride_res, stride_out, stride_d,
                         eps, HAS_RES: tl.constexpr, HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr,
                         USE_GDC: tl.constexpr):
    """out[r] = w * norm(x[r] + res[r]); res[r] = x[r] + res[r] (rounded to the dtype first, as torch adds).
    HAS_DELTA: x[r] is first x[r] + d[r] (a LoRA output in float32), rounded to the dtype as an in-place add.
    USE_GDC (PDL, kernels/pdl.py): the norm's weight is read before waiting for the kernel before."""
    if USE_GDC:
        tl.extra.cuda.gdc_launch_dependents()
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < n_cols
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if USE_GDC:
        tl.extra.cuda.gdc_wait()
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    if HAS_DELTA:
        d = tl.load(d_ptr + row * stride_d + offs, mask=mask, other=0.0)
        x = (x.to(tl.float32) + d).to(x_ptr.dtype.element_ty)
    if HAS_RES:
        r = tl.load(res_ptr + row * stride_res + offs, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(res_ptr + row * stride_res + offs, x, mask=mask)
    xf = x.to(tl.float32)
    var = tl.sum(xf * xf, axis=0) / n_cols
    y = (xf * tl.rsqrt(var + eps)).to(x_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * stride_out + offs, (w * y).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _joint_slot(tslot_ptr, ranks_ptr, scales_ptr, t, R_POW2: tl.constexpr):
    """Token t's slot (0 for none, whose rank is then 0), its scale, the rank offsets and their mask."""
    k = tl.load(tslot_ptr + t)
    kk = tl.maximum(k, 0).to(tl.int64)
    rank = tl.where(k >= 0, tl.load(ranks_ptr + kk), 0)
    rr = tl.arange(0, R_POW2)
    return kk, tl.load(scales_ptr + kk), rr, rr < rank


@triton.jit
def _joint_b(b_slot_ptr, cols, cmask, rr, rmask, R_MAX):
    """B rows `cols` of one slot (cols x rr, float32; rows R_MAX apart), zero past the rank."""
    return tl.load(b_slot_ptr + cols[:, None] * R_MAX + rr[None, :], mask=cmask[:, None] & rmask[None, :],
                   other=0.0).to(tl.float32)


@triton.jit
def _rope_cache_kernel(qkv_ptr, pos_ptr, inv_freq_ptr, slot_ptr, k_cache_ptr, v_cache_ptr, d_ptr, stride_t,
                       stride_slot, stride_d, n_heads, n_kv, s_ptr, b_ptr, tslot_ptr, ranks_ptr, scales_ptr,
                       stride_s, stride_b, HALF: tl.constexpr, HALF_POW2: tl.constexpr,
                       HAS_DELTA: tl.constexpr, HAS_JOINT: tl.constexpr, S: tl.constexpr, R_MAX,
                       R_POW2: tl.constexpr, USE_GDC: tl.constexpr):
    """Head h of token t: rotate q/k in place in the qkv row (HF rotate_half pairs (i, i + D/2));
    a k head also writes its rotated k and its v to the cache row slot[t]. HAS_DELTA: the qkv row is first
    qkv + d (a LoRA output in float32, rounded to the dtype as an in-place add), v written back too.
    HAS_JOINT (the joint path, engines/model/llama.py JointOut): the LoRA output is made here instead, from the
    token's own slot k = tslot[t]: scales[k] x the rank vector s[t, (k S + i) R_MAX ...] (slice i: 0 for q, 1 for k,
    2 for v; up to ranks[k]) times B[k] (b_ptr: slots x N_total x R_MAX); nothing for k = -1.
    USE_GDC (PDL, kernels/pdl.py): the position, the frequencies, the cache slot and (joint) the token's B rows are
    read before waiting for the kernel before."""
    if USE_GDC:
        tl.extra.cuda.gdc_launch_dependents()
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    offs = tl.arange(0, HALF_POW2)
    mask = offs < HALF
    pos = tl.load(pos_ptr + t).to(tl.float32)
    f = pos * tl.load(inv_freq_ptr + offs, mask=mask, other=0.0)
    c, s = tl.cos(f), tl.sin(f)
    if HAS_JOINT:
        kk, scale, rr, rmask = _joint_slot(tslot_ptr, ranks_ptr, scales_ptr, t, R_POW2)
        b_slot = b_ptr + kk * stride_b
        col = h * (2 * HALF) + offs
        b1 = _joint_b(b_slot, col, mask, rr, rmask, R_MAX)
        b2 = _joint_b(b_slot, col + HALF, mask, rr, rmask, R_MAX)
        s_row = s_ptr + t * stride_s + kk * (S * R_MAX)
    if USE_GDC:  # the cache slot too, before the wait (without PDL only the k heads read it, below)
        slot = tl.load(slot_ptr + t).to(tl.int64)
        tl.extra.cuda.gdc_wait()
    base = qkv_ptr + t * stride_t + h * (2 * HALF)
    x1 = tl.load(base + offs, mask=mask, other=0.0)
    x2 = tl.load(base + HALF + offs, mask=mask, other=0.0)
    if HAS_DELTA:
        dbase = d_ptr + t * stride_d + h * (2 * HALF)
        x1 = (x1.to(tl.float32) + tl.load(dbase + offs, mask=mask, other=0.0)).to(qkv_ptr.dtype.element_ty)
        x2 = (x2.to(tl.float32) + tl.load(dbase + HALF + offs, mask=mask, other=0.0)).to(qkv_ptr.dtype.element_ty)
    if HAS_JOINT:
        sv = tl.load(s_row + (h >= n_heads).to(tl.int64) * R_MAX + rr, mask=rmask, other=0.0).to(tl.float32)
        x1 = (x1.to(tl.float32) + tl.sum(b1 * sv[None, :], axis=1) * scale).to(qkv_ptr.dtype.element_ty)
        x2 = (x2.to(tl.float32) + tl.sum(b2 * sv[None, :], axis=1) * scale).to(qkv_ptr.dtype.element_ty)
    x1 = x1.to(tl.float32)
    x2 = x2.to(tl.float32)
    o1 = (x1 * c - x2 * s).to(qkv_ptr.dtype.element_ty)
    o2 = (x2 * c + x1 * s).to(qkv_ptr.dtype.element_ty)
    tl.store(base + offs, o1, mask=mask)
    tl.store(base + HALF + offs, o2, mask=mask)
    if h >= n_heads:
        kh = h - n_heads
        if not USE_GDC:
            slot = tl.load(slot_ptr + t).to(tl.int64)
        kdst = k_cache_ptr + slot * stride_slot + kh * (2 * HALF)
        tl.store(kdst + offs, o1, mask=mask)
        tl.store(kdst + HALF + offs, o2, mask=mask)
        vsrc = qkv_ptr + t * stride_t + (n_heads + n_kv + kh) * (2 * HALF)
        vdst = v_cache_ptr + slot * stride_slot + kh * (2 * HALF)
        v1 = tl.load(vsrc + offs, mask=mask)
        v2 = tl.load(vsrc + HALF + offs, mask=mask)
        if HAS_DELTA:
            dv = d_ptr + t * stride_d + (n_heads + n_kv + kh) * (2 * HALF)
            v1 = (v1.to(tl.float32) + tl.load(dv + offs, mask=mask, other=0.0)).to(qkv_ptr.dtype.element_ty)
            v2 = (v2.to(tl.float32) + tl.load(dv + HALF + offs, mask=mask, other=0.0)).to(qkv_ptr.dtype.element_ty)
            tl.store(vsrc + offs, v1, mask=mask)
            tl.store(vsrc + HALF + offs, v2, mask=mask)
        if HAS_JOINT:
            vcol = (n_heads + n_kv + kh) * (2 * HALF) + offs
            sv = tl.load(s_row + 2 * R_MAX + rr, mask=rmask, other=0.0).to(tl.float32)
            d1 = tl.sum(_joint_b(b_slot, vcol, mask, rr, rmask, R_MAX) * sv[None, :], axis=1) * scale
            d2 = tl.sum(_joint_b(b_slot, vcol + HALF, mask, rr, rmask, R_MAX) * sv[None, :], axis=1) * scale
            v1 = (v1.to(tl.float32) + d1).to(qkv_ptr.dtype.element_ty)
            v2 = (v2.to(tl.float32) + d2).to(qkv_ptr.dtype.element_ty)
            tl.store(vsrc + offs, v1, mask=mask)
            tl.store(vsrc + HALF + offs, v2, mask=mask)
        tl.store(vdst + offs, v1, mask=mask)
        tl.store(vdst + HALF + offs, v2, mask=mask)


@triton.jit
def _add_rms_norm_joint_kernel(x_ptr, res_ptr, w_ptr, out_ptr, s_ptr, b_ptr, tslot_ptr, ranks_ptr, scales_ptr,
                               part_ptr, cnt_ptr, n_cols, stride_x, stride_res, stride_out, stride_s, stride_b, eps,
                               R_MAX, R_POW2: tl.constexpr, CHUNK: tl.constexpr, CHUNKS_POW2: tl.constexpr,
                               BLOCK: tl.constexpr, USE_GDC: tl.constexpr):
    """_add_rms_norm_kernel with residual, its LoRA output made here (the joint path, one slice; see
    _rope_cache_kernel): res[r] = (x[r] + scales[k] x s[r, k R_MAX ...] B[k]^T) + res[r] with each add rounded to the
    dtype, k = tslot[r]; out[r] = w * norm(res[r]). Program (r, c) takes columns c CHUNK ... of row r (a slot's B
    rows are too many for one program): it stores its share of res and of the sum of squares, and the row's last
    program to arrive (cnt[r], reset after) normalizes the whole row (BLOCK columns, one load) from res as stored."""
    if USE_GDC:
        tl.extra.cuda.gdc_launch_dependents()
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    n_chunks = tl.num_programs(1)
    kk, scale, rr, rmask = _joint_slot(tslot_ptr, ranks_ptr, scales_ptr, row, R_POW2)
    cols = chunk * CHUNK + tl.arange(0, CHUNK)
    mask = cols < n_cols
    bt = _joint_b(b_ptr + kk * stride_b, cols, mask, rr, rmask, R_MAX)
    if USE_GDC:
        tl.extra.cuda.gdc_wait()
    sv = tl.load(s_ptr + row * stride_s + kk * R_MAX + rr, mask=rmask, other=0.0).to(tl.float32)
    d = tl.sum(bt * sv[None, :], axis=1) * scale
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    x = (x.to(tl.float32) + d).to(x_ptr.dtype.element_ty)
    r = tl.load(res_ptr + row * stride_res + cols, mask=mask, other=0.0)
    x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
    tl.store(res_ptr + row * stride_res + cols, x, mask=mask)
    xf = x.to(tl.float32)
    tl.store(part_ptr + row * CHUNKS_POW2 + chunk, tl.sum(xf * xf, axis=0))
    arrived = tl.atomic_add(cnt_ptr + row, 1, sem="acq_rel", scope="gpu")  # releases this program's stores
    if arrived == n_chunks - 1:  # the row's last: every share is stored
        ci = tl.arange(0, CHUNKS_POW2)
        parts = tl.load(part_ptr + row * CHUNKS_POW2 + ci, mask=ci < n_chunks, other=0.0, cache_modifier=".cg")
        inv = tl.rsqrt(tl.sum(parts, axis=0) / n_cols + eps)
        tl.atomic_xchg(cnt_ptr + row, 0, sem="relaxed", scope="gpu")  # ready for the next launch
        cc = tl.arange(0, BLOCK)
        m = cc < n_cols
        v = tl.load(res_ptr + row * stride_res + cc, mask=m, other=0.0, cache_modifier=".cg").to(tl.float32)
        w = tl.load(w_ptr + cc, mask=m, other=0.0).to(tl.float32)
        y = (v * inv).to(x_ptr.dtype.element_ty).to(tl.float32)
        tl.store(out_ptr + row * stride_out + cc, (w * y).to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, n, stride_gu, stride_out, BLOCK: tl.constexpr, USE_GDC: tl.constexpr):
    """out[t] = silu(gate[t]) * up[t] with gu[t] = [gate | up], each rounded to the dtype like torch.
    USE_GDC (PDL, kernels/pdl.py): waits for the kernel before first thing."""
    if USE_GDC:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n
    g = tl.load(gu_ptr + t * stride_gu + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + t * stride_gu + n + cols, mask=mask, other=0.0).to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + t * stride_out + cols, (act * u).to(out_ptr.dtype.element_ty), mask=mask)


# the joint path's consumer launches: columns per program of the add + RMSNorm (a CHUNK x rank tile of B), and warps.
# On the H200 (scripts/joint_ops_probe.py, run 17; 64 tokens over 64 rank-16 slots, llama3-8b shapes) RoPE + cache
# took 5.7 us with 2 warps against 7.7 with 4 (3.9 without LoRA, B floor 2.9); add + RMSNorm 5.1 us with 512 columns
# and 4 warps against 5.9 with 256 (1.8 without LoRA, B floor 2.0)
JOINT_NORM_CHUNK = 512
JOINT_NORM_WARPS = 4
JOINT_ROPE_WARPS = 2


def _pdl(t: torch.Tensor) -> dict:
    return pdl.launch_options(pdl.use(t.device, t.shape[0]))  # rows are the call's tokens


def _rows(x: torch.Tensor, name: str) -> None:
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"fused_ops.{name}: expected a 2-D tensor with contiguous rows, got {tuple(x.shape)} "
                         f"strides {x.stride()}")


class _NoJoint:
    """Placeholder joint arguments of a launch without the joint path (the kernel does not read them)."""

    def __init__(self, t: torch.Tensor) -> None:
        self.s = self.b = self.token_slot = self.ranks = self.scales = t
        self.num_slices, self.max_rank = 1, 16


def _joint(delta, slices: int, name: str):
    """delta if it is the joint path's output (it has rank vectors `s`) with one of the slice counts the op takes,
    else None."""
    if delta is None or isinstance(delta, torch.Tensor):
        return None
    if delta.num_slices != slices or delta.b.stride(1) != delta.max_rank or delta.b.stride(2) != 1 \
            or delta.s.stride(1) != 1:
        raise ValueError(f"fused_ops.{name}: joint LoRA output of {delta.num_slices} slices, rank {delta.max_rank}, "
                         f"B strides {delta.b.stride()}: needs {slices} slice(s) and B and the rank vectors with "
                         "contiguous rows")
    return delta


class FusedOps:
    """Triton versions of TorchOps (engines/model/llama.py); CUDA tensors only."""

    @staticmethod
    def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        _rows(x, "rms_norm")
        out = torch.empty_like(x)
        _add_rms_norm_kernel[(x.shape[0],)](x, x, w, out, x, x.shape[1], x.stride(0), 0, out.stride(0), 0, eps,
                                            HAS_RES=False, HAS_DELTA=False, BLOCK=triton.next_power_of_2(x.shape[1]),
                                            **_pdl(x))
        return out

    @staticmethod
    def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, w: torch.Tensor, eps: float,
                     delta: torch.Tensor | None = None):
        """Adds x (plus delta, a float32 LoRA output, or the joint path's JointOut to expand) into residual in place;
        returns (norm of the sum, residual)."""
        _rows(x, "add_rms_norm")
        _rows(residual, "add_rms_norm")
        joint = _joint(delta, 1, "add_rms_norm")
        if joint is not None:
            t, n = x.shape
            out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
            chunks = triton.cdiv(n, JOINT_NORM_CHUNK)
            parts = torch.empty(t, triton.next_power_of_2(chunks), dtype=torch.float32, device=x.device)
            _add_rms_norm_joint_kernel[(t, chunks)](
                x, residual, w, out, joint.s, joint.b, joint.token_slot, joint.ranks, joint.scales, parts,
                joint.counters, n, x.stride(0), residual.stride(0), out.stride(0), joint.s.stride(0),
                joint.b.stride(0), eps, joint.max_rank, R_POW2=triton.next_power_of_2(joint.max_rank),
                CHUNK=JOINT_NORM_CHUNK, CHUNKS_POW2=triton.next_power_of_2(chunks), BLOCK=triton.next_power_of_2(n),
                num_warps=JOINT_NORM_WARPS, **_pdl(x))
            return out, residual
        if delta is not None:
            _rows(delta, "add_rms_norm")
        out = torch.empty_like(x)
        d = x if delta is None else delta
        _add_rms_norm_kernel[(x.shape[0],)](x, residual, w, out, d, x.shape[1], x.stride(0), residual.stride(0),
                                            out.stride(0), d.stride(0), eps, HAS_RES=True,
                                            HAS_DELTA=delta is not None, BLOCK=triton.next_power_of_2(x.shape[1]),
                                            **_pdl(x))
        return out, residual

    @staticmethod
    def rope_tables(positions: torch.Tensor, inv_freq: torch.Tensor):
        return positions, inv_freq  # the kernel computes cos/sin from these

    @staticmethod
    def rope_and_cache(qkv, rope, n_heads, n_kv, hd, k_cache, v_cache, slot_mapping, delta=None):
        """delta: a float32 LoRA output to add, or the joint path's JointOut (engines/model/llama.py) to expand."""
        _rows(qkv, "rope_and_cache")
        if hd % 2 or not k_cache.is_contiguous() or not v_cache.is_contiguous():
            raise ValueError("fused_ops.rope_and_cache: needs an even head_dim and contiguous caches")
        joint = _joint(delta, 3, "rope_and_cache")
        if delta is not None and joint is None:
            _rows(delta, "rope_and_cache")
        positions, inv_freq = rope
        t = qkv.shape[0]
        half = hd // 2
        d = qkv if delta is None or joint is not None else delta
        j = joint or _NoJoint(qkv)
        _rope_cache_kernel[(t, n_heads + n_kv)](
            qkv, positions, inv_freq, slot_mapping, k_cache, v_cache, d, qkv.stride(0), n_kv * hd, d.stride(0),
            n_heads, n_kv, j.s, j.b, j.token_slot, j.ranks, j.scales, j.s.stride(0), j.b.stride(0), HALF=half,
            HALF_POW2=triton.next_power_of_2(half), HAS_DELTA=delta is not None and joint is None,
            HAS_JOINT=joint is not None, S=j.num_slices, R_MAX=j.max_rank, R_POW2=triton.next_power_of_2(j.max_rank),
            num_warps=JOINT_ROPE_WARPS if joint is not None else 4, **_pdl(qkv))
        q = qkv[:, : n_heads * hd].view(t, n_heads, hd)
        k = qkv[:, n_heads * hd:(n_heads + n_kv) * hd].view(t, n_kv, hd)
        v = qkv[:, (n_heads + n_kv) * hd:].view(t, n_kv, hd)
        return q, k, v

    @staticmethod
    def silu_mul(gu: torch.Tensor) -> torch.Tensor:
        _rows(gu, "silu_mul")
        n = gu.shape[1] // 2
        out = torch.empty(gu.shape[0], n, dtype=gu.dtype, device=gu.device)
        block = 1024
        _silu_mul_kernel[(gu.shape[0], triton.cdiv(n, block))](gu, out, n, gu.stride(0), out.stride(0), BLOCK=block,
                                                               **_pdl(gu))
        return out
