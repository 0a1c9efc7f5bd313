"""The joint path (engine extra lora_joint): the q,k,v and o LoRA shrink as extra rows of the base matmul, the expand in
the op that consumes its output. It gives the model's output and the engine's tokens of the shrink/expand pair; the
consumer kernels (Triton, by the interpreter on the CPU) match the torch ops; its rule, its CUDA graph keys and its
refusals."""
import dataclasses

import pytest
import torch

from engines.config import EngineConfig
from engines.model.config import ModelArgs
from engines.model.llama import AttnMeta, JointOut, TorchOps, build_model
from engines.registry import create_engine
from kernels.fused_ops import FusedOps
from kernels.meta import LoRAMeta
from kernels.reference import joint_expand_ref
from tests.test_engine_lora_fold import adapter_dir, make, serve  # noqa: F401  (adapter_dir: a fixture)

ARGS = ModelArgs.from_name("tiny")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def rand(*shape, seed=0, dtype=torch.float32, device=DEV):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device, dtype)


def joint_out(t, slots, out_sizes, max_rank, ranks, token_slot, seed, dtype=torch.float32, span=None):
    """A JointOut over `slots` slots (rank vectors of the first `span`), every A/B entry past a slot's rank nonzero:
    what a smaller adapter leaves in a slot a larger one held (the rank must mask it)."""
    n_total, s_count = sum(out_sizes), len(out_sizes)
    span = slots if span is None else span
    offs = torch.tensor([0] + list(torch.tensor(out_sizes).cumsum(0)), dtype=torch.int32, device=DEV)
    return JointOut(rand(t, span * s_count * max_rank, seed=seed, dtype=dtype),
                    rand(slots, n_total, max_rank, seed=seed + 1, dtype=dtype) * 0.2,
                    torch.tensor(token_slot, dtype=torch.int32, device=DEV),
                    torch.tensor(ranks, dtype=torch.int32, device=DEV),
                    torch.tensor([0.5, 2.0, 1.0, 0.25][:slots], device=DEV), offs, s_count, max_rank,
                    torch.zeros(t, dtype=torch.int32, device=DEV))


def loop_expand(j: JointOut) -> torch.Tensor:
    """joint_expand_ref's formula, token by token and slice by slice (float64, on the host)."""
    out = torch.zeros(j.s.shape[0], j.b.shape[1], dtype=torch.float64)
    offs = j.slice_offsets.tolist()
    s, b = j.s.double().cpu(), j.b.double().cpu()
    for t, k in enumerate(j.token_slot.tolist()):
        if k < 0:
            continue
        rank, scale = int(j.ranks[k]), float(j.scales[k])
        for i in range(j.num_slices):
            v = s[t, (k * j.num_slices + i) * j.max_rank:][:rank]  # the token's rank vector of slice i
            out[t, offs[i]:offs[i + 1]] = scale * (b[k, offs[i]:offs[i + 1], :rank] @ v)
    return out


def test_the_reference_expand_takes_each_tokens_own_slot_up_to_its_rank():
    j = joint_out(5, 3, (8, 4, 4), 6, [6, 3, 0], [1, -1, 0, 2, 1], seed=1)
    got = joint_expand_ref(j.s, j.b, j.token_slot, j.ranks, j.scales, j.slice_offsets, 3, 6)
    torch.testing.assert_close(got.double().cpu(), loop_expand(j), atol=1e-5, rtol=1e-5)
    assert got[1].abs().max() == 0 and got[3].abs().max() == 0  # no adapter; a slot of rank 0
    assert got[0].abs().min() > 0  # every column of an adapted token moves


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_and_cache_expands_a_joint_output_as_torch_adds_it(dtype):
    n_heads, n_kv, hd, t, max_rank = 4, 2, 16, 6, 6  # a rank that is no power of two: the kernel pads and masks
    j = joint_out(t, 3, (n_heads * hd, n_kv * hd, n_kv * hd), max_rank, [6, 4, 2], [2, 0, -1, 1, 1, 0], seed=3,
                  dtype=dtype)
    qkv = rand(t, (n_heads + 2 * n_kv) * hd, seed=4, dtype=dtype)
    positions = torch.tensor([0, 1, 2, 7, 30, 100], device=DEV)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, device=DEV).float() / hd))
    cache_slots = torch.tensor([5, 6, 7, 12, 29, 3], device=DEV)
    caches = [torch.zeros((8, 4, n_kv, hd), dtype=dtype, device=DEV) for _ in range(6)]
    added = (qkv.float() + loop_expand(j).float().to(DEV)).to(dtype)
    want = TorchOps.rope_and_cache(added, TorchOps.rope_tables(positions, inv_freq), n_heads, n_kv, hd, caches[0],
                                   caches[1], cache_slots)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=6e-2, rtol=1.6e-2)
    for ops, (kc, vc) in ((TorchOps, caches[2:4]), (FusedOps, caches[4:])):
        got = ops.rope_and_cache(qkv.clone(), ops.rope_tables(positions, inv_freq), n_heads, n_kv, hd, kc, vc,
                                 cache_slots, delta=j)
        for w, g in zip(want, got):
            torch.testing.assert_close(g, w, **tol)
        torch.testing.assert_close(kc, caches[0], **tol)
        torch.testing.assert_close(vc, caches[1], **tol)
    plain = FusedOps.rope_and_cache(qkv.clone(), FusedOps.rope_tables(positions, inv_freq), n_heads, n_kv, hd,
                                    *caches[4:], cache_slots)
    assert not torch.allclose(plain[2].float(), want[2].float(), **tol)  # a dropped v delta would be seen


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_rms_norm_expands_a_joint_output_across_its_column_chunks(dtype):
    dim, t = 1100, 4  # past two 512-column chunks, the last one partial
    j = joint_out(t, 4, (dim,), 16, [16, 8, 4, 16], [3, -1, 1, 2], seed=5, dtype=dtype, span=4)
    x, res, w = rand(t, dim, seed=1, dtype=dtype), rand(t, dim, seed=2, dtype=dtype), rand(dim, seed=3, dtype=dtype)
    added = (x.float() + loop_expand(j).float().to(DEV)).to(dtype)
    want_out, want_res = TorchOps.add_rms_norm(added, res.clone(), w, 1e-6)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=6e-2, rtol=1.6e-2)
    for ops in (TorchOps, FusedOps, FusedOps):  # twice: the row counters are back at zero after a launch
        r = res.clone()
        out, got_res = ops.add_rms_norm(x, r, w, 1e-6, delta=j)
        torch.testing.assert_close(got_res, want_res, **tol)
        torch.testing.assert_close(out, want_out, **tol)
        assert not j.counters.any()
    with pytest.raises(ValueError, match="1 slice"):
        FusedOps.add_rms_norm(x, res.clone(), w, 1e-6, delta=joint_out(t, 2, (dim // 2, dim // 2), 16, [16, 8],
                                                                       [0, 1, 1, 0], seed=6, dtype=dtype))


def lora_model(args, seed=0):
    """The tiny model with q,k,v,o and down slots (4 of rank 8): slot 1 first holds a rank-8 adapter, then a rank-4
    one over it (its stale rows past rank 4 stay); slot 3 stays empty."""
    model = build_model(args, torch.float32, "cpu", seed=seed)
    model.enable_lora(4, 8, ("qkv", "o", "down"))
    g = torch.Generator().manual_seed(seed + 1)

    def packed(rank):
        out = {}
        for group in ("qkv", "o", "down"):
            outs, fin = model.group_slices(group)
            out[group] = (torch.randn(args.n_layers, len(outs), rank, fin, generator=g) * 0.3,
                          torch.randn(args.n_layers, sum(outs), rank, generator=g) * 0.3)
        return out
    model.set_slot(0, packed(8), 8, 2.0)
    model.set_slot(1, packed(8), 8, 1.0)
    model.set_slot(1, packed(4), 4, 0.5)
    model.set_slot(2, packed(2), 2, 1.0)
    return model


def forward(model, token_slots, joint: int):
    t = len(token_slots)
    ids = torch.arange(3, 3 + t)
    attn = AttnMeta(True, torch.arange(t), seq_lens=[t])
    for blk in model.model.layers:
        blk.self_attn.k_cache = torch.zeros(4, 16, model.args.n_kv_heads, model.args.head_dim)
        blk.self_attn.v_cache = torch.zeros_like(blk.self_attn.k_cache)
    meta = LoRAMeta(16, 4).prepare(token_slots, joint=joint)
    return model(ids, torch.arange(t), attn, meta), meta


@pytest.mark.parametrize("bias", [False, True])
def test_the_joint_path_gives_the_models_output_of_the_pair(bias):
    args = dataclasses.replace(ARGS, qkv_bias=bias)
    model = lora_model(args)
    slots = [1, -1, 0, 2, 1, 0, -1, 2]
    want, _ = forward(model, slots, joint=0)
    got, meta = forward(model, slots, joint=4)
    assert meta.joint == 4
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    base, _ = forward(model, [-1] * len(slots), joint=0)
    assert not torch.allclose(got[0], base[0], atol=1e-3)  # the adapters move the output


def test_the_base_weights_live_in_the_joint_tensor_and_a_copy_put_in_their_place_falls_back():
    args = dataclasses.replace(ARGS, qkv_bias=True)
    fresh = build_model(args, torch.float32, "cpu")
    sd = {k: v.clone() for k, v in fresh.hf_state_dict().items()}
    model = lora_model(args)
    stack = model.lora_stacks["qkv"]
    for layer, blk in enumerate(model.model.layers):
        assert blk.self_attn.qkv_proj.weight.data_ptr() == stack.joint[layer].data_ptr()
        assert blk.self_attn.qkv_proj.bias.data_ptr() == stack.joint_bias[layer].data_ptr()
        assert blk.self_attn.o_proj.weight.data_ptr() == model.lora_stacks["o"].joint[layer].data_ptr()
    assert model.lora_stacks["down"].joint is None  # the MLP's groups keep the pair
    for k, v in model.hf_state_dict().items():
        torch.testing.assert_close(v, sd[k], atol=0, rtol=0)  # enabling LoRA moved the weights, changed none
    slots = [1, 0, -1, 2]
    want, _ = forward(model, slots, joint=0)
    blk = model.model.layers[1].self_attn
    blk.qkv_proj.weight = torch.nn.Parameter(blk.qkv_proj.weight.clone(), requires_grad=False)
    assert stack.joint_rows(blk.qkv_proj.weight, 1, 4) == 0 and stack.joint_rows(
        model.model.layers[0].self_attn.qkv_proj.weight, 0, 4) == stack.base_rows + 4 * 3 * 8
    got, _ = forward(model, slots, joint=4)  # layer 1's q,k,v take the pair, the rest the joint path
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_the_rule_picks_a_span_of_slots_per_step():
    meta = LoRAMeta(128, 64)
    assert meta.prepare([0, 1]).joint == 0  # never until told
    meta.use_joint(96, free_slots=16, ratio=2.0, min_span=4)
    assert meta.joint_spans() == [4, 8, 16, 32, 64]
    assert meta.prepare([0]).joint == 4  # one adapter in slot 0: the smallest span
    assert meta.prepare([-1, 5, 5]).joint == 8
    assert meta.prepare([16, -1]).joint == 0  # 32 slots for one adapter: past the free 16 and 2 x 1
    assert meta.prepare(list(range(20))).joint == 32  # 20 adapters: 32 slots <= 2 x 20
    assert meta.prepare(list(range(63))).joint == 64
    assert meta.prepare([-1, -1]).joint == 0  # no adapter
    assert meta.prepare([0] * 97).joint == 0  # past max_tokens
    assert meta.prepare([0] * 97, joint=8).joint == 8  # told (as the graphs capture)
    odd = LoRAMeta(32, 30)
    odd.use_joint(32, 16, 2.0, 4)
    assert odd.joint_spans() == [4, 8, 16, 30] and odd.prepare(list(range(29))).joint == 30
    meta.prepare([3, 3], expand_rows=True)
    assert meta.path == (False, 4)  # a joint step's expand path does not matter to the q,k,v and o groups...
    meta.use_joint(96, 16, 2.0, 4, others=True)
    assert meta.prepare([3, 3], expand_rows=True).path == (True, 4)  # ...unless other groups expand
    with pytest.raises(ValueError, match="use_joint"):
        meta.use_joint(-1, 16, 2.0)
    with pytest.raises(ValueError, match="joint span"):
        meta.prepare([0], joint=65)


def test_the_engine_serves_the_tokens_of_the_pair_on_the_joint_path(adapter_dir):
    want, _ = serve(make(adapter_dir, lora_joint=False))
    eng = make(adapter_dir, lora_joint=8)
    got, _ = serve(eng)
    assert got == want
    stats = eng.stats()
    assert 0 < stats["joint_steps"] < stats["lora_steps"]  # decodes of up to 8 tokens; the prompts took the pair
    assert make(adapter_dir).joint_tokens == 0  # the CPU default: off
    assert make(adapter_dir, lora_joint=True).joint_tokens == 256
    for bad in (-1, "yes", 2.5):
        with pytest.raises(ValueError, match="extra.lora_joint"):
            make(adapter_dir, lora_joint=bad)


def test_cuda_graphs_are_keyed_by_the_joint_span(adapter_dir):
    from engines.multilora.cuda_graphs import DecodeGraphs
    eng = make(adapter_dir, lora_joint=16)
    graphs = DecodeGraphs(eng.model, 32, 8, 4, torch.device("cpu"))
    graphs.meta.use_joint(16, 16, 2.0, 4, others=True)
    graphs.meta.use_expand_rows(64)
    assert graphs.paths(8) == [(False, 0), (True, 0), (False, 4), (True, 4)]
    assert graphs.paths(24) == [(False, 0), (True, 0)]  # past the joint rule's tokens
    graphs.meta.use_joint(16, 16, 2.0, 4, others=False, min_tokens=2)
    assert graphs.paths(8) == [(False, 0), (True, 0), (False, 4)]
    assert graphs.paths(1) == [(False, 0), (True, 0)]  # below the rule's tokens


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs and the compiled consumer kernels need a GPU")
def test_on_the_gpu_joint_graphs_serve_the_tokens_of_the_pair(adapter_dir):
    gpu = dict(model="tiny", device="cuda", dtype="float32", adapters=str(adapter_dir), num_kv_blocks=512)
    plain = create_engine(EngineConfig(**gpu, extra={"lora_joint": False}))
    want, _ = serve(plain)
    plain.close()
    eng = create_engine(EngineConfig(**gpu, extra={"lora_joint": True}))
    graphs = eng.runner.graphs
    at_start = set(graphs.graphs)
    meta = graphs.meta  # every span the rule can give a bucket captured at start
    assert {k[2][1] for k in at_start if k[1]} == {0} | {s for b in graphs.buckets if b <= meta.joint_max_tokens
                                                         for s in meta.joint_spans(b)}
    got, _ = serve(eng)
    stats = eng.stats()
    eng.close()
    assert got == want
    assert set(graphs.graphs) == at_start  # nothing captured while serving
    assert stats["joint_steps"] > 0


def test_the_profiles_joint_and_nojoint_paths_set_the_rule_and_the_rest_keep_the_engines(adapter_dir):
    import engines.profile as prof
    eng = make(adapter_dir, lora_joint=8)
    for mode, want in ((prof.JOINT, 256), (prof.NO_JOINT, 0), ("auto", 8), (prof.FOLD, 8), ("joint320", 320)):
        prof.set_lora_path(eng, mode)
        assert eng.runner.meta.joint_max_tokens == want, mode
    assert prof._fused_mode(prof.JOINT) == "auto" and prof._fused_mode(prof.NO_JOINT) == "auto"


def test_past_the_flop_bound_a_span_counts_in_proportion_to_the_tokens():
    meta = LoRAMeta(512, 256)
    meta.use_joint(512, free_slots=16, ratio=2.0, min_span=4, flop_tokens=160)
    assert meta.prepare([0] * 160).joint == 4 and meta.prepare([0] * 320).joint == 4  # 4 x 2 = 8 <= 16
    assert meta.prepare([0] * 480 + [8]).joint == 0  # 16 x 3 = 48 > max(16, 2 x 2)
    assert meta.prepare([0] * 96 + [8]).joint == 16  # under 160 tokens: 16 <= 16
    assert meta.prepare(list(range(64)) * 4).joint == 64  # 256 tokens over 64 slots: 64 x 1.6 = 102 <= 2 x 64
    assert meta.prepare(list(range(24, 64)) * 6 + [0] * 16).joint == 0  # over 41: 102 > 2 x 41
    meta.use_joint(512, free_slots=16, ratio=2.0, min_span=4, flop_tokens=160, most=128, min_tokens=2)
    assert meta.prepare([0]).joint == 0 and meta.prepare([0, -1]).joint == 4  # one token keeps the pair
    assert meta.prepare(list(range(64)) * 4).joint == 64  # 102 counted slots, under the cap
    assert meta.prepare(list(range(256))).joint == 0  # 256 x 1.6 = 410 > 128 (it was <= 2 x 256)
    assert meta.prepare(list(range(128))).joint == 128  # 128 <= 128 below 160 tokens
    assert meta.joint_spans(256) == [4, 8, 16, 32, 64] and meta.joint_spans(64) == [4, 8, 16, 32, 64, 128]
    assert meta.joint_spans(8) == [4, 8, 16]  # 8 tokens: at most 8 adapters, so spans up to max(16, 2 x 8)
    with pytest.raises(ValueError, match="flop_tokens"):
        meta.use_joint(96, 16, 2.0, 4, flop_tokens=-1)
