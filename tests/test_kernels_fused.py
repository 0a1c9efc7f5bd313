"""Triton fused LoRA (shrink + expand in one launch) against the float64 reference; path choice and modes."""
import dataclasses

import pytest
import torch

from kernels import launch
from kernels.launch import FusedConfig
from kernels.lora_fused import lora_fused
from kernels.meta import LoRAMeta
from kernels.reference import lora_expand_ref, lora_shrink_ref
from tests.test_kernels_lora import make_inputs, rand_slots, rel

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# the rank vector is an fp32 accumulation of exact products; it enters the expand as tf32; y is rounded once
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)


def run_case(hidden, widths, ranks, slots, dtype, cfg=None, max_segments=8, seed=0, poison_rows=True):
    """lora_fused on y with NaN rows for tokens without an adapter (they must stay NaN) against float64."""
    s, r_max, t, n_total = len(widths), max(max(ranks), 1), len(slots), sum(widths)
    x, a, b, scales, ranks_t, offs, y0 = make_inputs(hidden, widths, ranks, t, dtype, seed)
    for k, r in enumerate(ranks):  # stale values past a slot's rank (a previous adapter's) must not be read
        a[k, :, r:] = float("nan")
        b[k, :, r:] = float("nan")
    untouched = torch.tensor([sl < 0 or ranks[sl] == 0 for sl in slots], dtype=torch.bool)
    if poison_rows:
        y0[untouched] = float("nan")

    meta_ref = LoRAMeta(max(t, 1), max_segments).prepare(slots)
    buf_ref = torch.zeros(s, t, r_max, dtype=torch.float64)
    lora_shrink_ref(x.double(), a.double().nan_to_num(), meta_ref, scales.double(), ranks_t, buf_ref)
    y_ref = y0.double().clone()
    lora_expand_ref(buf_ref, b.double().nan_to_num(), meta_ref, ranks_t, offs, y_ref)

    meta = LoRAMeta(max(t, 1), max_segments, device=DEV).prepare(slots)
    y = y0.to(DEV).clone()
    lora_fused(x.to(DEV), a.to(DEV), b.to(DEV), meta, scales.to(DEV), ranks_t.to(DEV), offs.to(DEV), y, config=cfg)
    y = y.cpu()
    assert same(y[:, n_total:], y0[:, n_total:]), "touched columns past N_total"
    assert same(y[untouched], y0[untouched]), "touched rows without an adapter"
    done = ~untouched
    assert not y[done].isnan().any(), "read past a slot's rank or missed a column"
    if done.any():
        assert rel(y[done], y_ref[done]) < TOL[dtype]
    return meta


SMALL = FusedConfig(block_m=16, block_n=32, block_k=64, n_steps=2, num_stages=2)  # several chunks per slice


@pytest.mark.parametrize("hidden,widths,ranks,dtype", [
    (896, [896], [8, 16], torch.float32),  # Qwen2.5-0.5B hidden, not a power of two
    (320, [160, 48, 48], [1, 8, 16, 64, 128], torch.bfloat16),  # mixed ranks 1-128, qkv-like unequal slices
    (200, [72, 40], [16, 64, 8], torch.float16),  # two slices, the second starts off a multiple of 16
])
@pytest.mark.parametrize("cfg", [None, SMALL])
def test_random_mappings(hidden, widths, ranks, dtype, cfg):
    run_case(hidden, widths, ranks, rand_slots(13, len(ranks), seed=hidden), dtype, cfg)


def test_all_tokens_on_one_adapter_span_several_tiles():
    run_case(128, [96, 32], [0, 32], [1] * 37, torch.bfloat16, SMALL)


def test_no_token_on_any_adapter_leaves_everything():
    run_case(128, [64, 32], [8, 16], [-1] * 9, torch.float32)


def test_every_token_its_own_adapter_like_decode():
    run_case(256, [128, 32, 32], [16] * 12, list(range(12)), torch.bfloat16, max_segments=16)


def test_rank_zero_slot_and_unused_segment_capacity():
    # slot 1 has rank 0 (adapter without this module); meta has room for 64 segments, 3 used
    run_case(192, [96], [8, 0, 4], [0, 1, 2, 1, -1, 0, 2], torch.float16, max_segments=64)


def test_single_token_rank_128_three_slices():
    run_case(512, [128, 32, 32], [128], [0], torch.float32, FusedConfig(block_k=64, block_n=32, n_steps=1))


@pytest.mark.parametrize("split", [3, 8])
def test_split_hidden_dim_reduces_and_resets_its_counters(split):
    # 200 = 3.1 blocks of 64: the last share is partial; split 3 (2 blocks each) leaves one empty; 8 is capped at 4
    cfg = FusedConfig(block_m=16, block_n=32, block_k=64, n_steps=2, split_k=split, num_stages=2)
    meta = run_case(200, [72, 40, 40], [16, 40, 1], rand_slots(11, 3, seed=split, none_frac=0.1), torch.bfloat16,
                    cfg)
    assert meta._counters and all(int(c.abs().sum()) == 0 for c in meta._counters), "counters must return to 0"


def test_mlp_down_default_splits_the_hidden_dim():
    assert launch.default_fused(1, 14336, 96, 1, 16, tiles=1, sms=8).split_k == 4
    meta = run_case(14336, [96], [16, 8], [1, -1, 0], torch.bfloat16)  # the default config: split 4
    assert meta._counters and all(int(c.abs().sum()) == 0 for c in meta._counters)


def test_same_function_as_the_pair_in_graph_like_reuse():
    """One meta refilled with new mappings, one y buffer: the fused path follows each new mapping."""
    from kernels.lora_expand import lora_expand
    from kernels.lora_shrink import lora_shrink

    g = torch.Generator().manual_seed(3)
    t, h, r = 6, 128, 16
    x = torch.randn(t, h, generator=g).to(DEV)
    a = (torch.randn(4, 2, r, h, generator=g) / 12).to(DEV)
    b = (torch.randn(4, 80, r, generator=g) / 4).to(DEV)
    scales, ranks = torch.ones(4, device=DEV), torch.tensor([16, 8, 4, 16], dtype=torch.int32, device=DEV)
    offs = torch.tensor([0, 48, 80], dtype=torch.int32, device=DEV)
    meta = LoRAMeta(t, 4, device=DEV)
    y = torch.empty(t, 80, device=DEV)
    for slots in ([0, 1, 2, 3, 0, 1], [3, 3, -1, 2, 2, 2]):
        meta.prepare(slots)
        y.zero_()
        lora_fused(x, a, b, meta, scales, ranks, offs, y, config=dataclasses.replace(SMALL, split_k=2))
        buf = torch.zeros(2, t, r, device=DEV)
        y_pair = torch.zeros(t, 80, device=DEV)
        lora_shrink(x, a, meta, scales, ranks, buf)
        lora_expand(buf, b, meta, ranks, offs, y_pair)
        assert rel(y.cpu(), y_pair.cpu()) < 1e-5


def test_bad_inputs_name_the_field():
    meta = LoRAMeta(4, 2).prepare([0, 0, 0, 0])
    x, y = torch.randn(4, 64), torch.zeros(4, 16)
    a, b = torch.randn(1, 1, 8, 64), torch.randn(1, 16, 8)
    ok = dict(scales=torch.ones(1), ranks=torch.tensor([8], dtype=torch.int32),
              slice_offsets=torch.tensor([0, 16], dtype=torch.int32))
    with pytest.raises(ValueError, match="share a dtype"):
        lora_fused(x, a, b.half(), meta, y=y, **ok)
    with pytest.raises(ValueError, match="agree on slots and R_max"):
        lora_fused(x, a, torch.randn(1, 16, 4), meta, y=y, **ok)
    with pytest.raises(ValueError, match="hidden size"):
        lora_fused(x, torch.randn(1, 1, 8, 32), b, meta, y=y, **ok)
    with pytest.raises(ValueError, match="only 8"):
        lora_fused(x, a, b, meta, y=torch.zeros(4, 8), **ok)


def test_fused_mode_parsing_and_path_choice():
    assert [launch.fused_mode(v) for v in ("auto", True, False, "on", "off", "true", 64, "128")] == \
        ["auto", True, False, True, False, True, 64, 128]
    for bad in ("maybe", -1, 1.5, None):
        with pytest.raises(ValueError, match="fused_lora=.*auto, true, false or a token count"):
            launch.fused_mode(bad)
    shape = dict(hidden=4096, n_total=6144, slices=3, max_rank=16, dtype=torch.bfloat16, device=torch.device("cpu"))
    # no tuned file on this machine: auto keeps the pair, whatever the size
    assert not any(launch.fused_wanted("auto", t, **shape) for t in (1, launch.FUSED_MAX_TOKENS, 4096))
    assert launch.fused_wanted(True, 4096, **shape) and not launch.fused_wanted(False, 1, **shape)
    assert launch.fused_wanted(64, 64, **shape) and not launch.fused_wanted(64, 65, **shape)


def test_auto_follows_the_gpu_files_lora_path(tmp_path, monkeypatch):
    import json
    key = launch.fused_key(64, 4096, 6144, 3, 16, torch.bfloat16)
    key16 = launch.fused_key(16, 4096, 6144, 3, 16, torch.bfloat16)
    (tmp_path / "test-gpu.json").write_text(json.dumps({"lora_path": {key: {"fused": False}, key16: {"fused": True}}}))
    monkeypatch.setattr(launch, "CONFIG_DIR", tmp_path)
    monkeypatch.setattr(launch, "_device_name", lambda device: "Test GPU")
    launch._table_for.cache_clear()
    try:
        shape = dict(hidden=4096, n_total=6144, slices=3, max_rank=16, dtype=torch.bfloat16, device="cpu")
        assert not launch.fused_wanted("auto", 64, **shape)  # the file says the pair won at this key
        assert launch.fused_wanted("auto", 16, **shape)  # the file says fused won at this key
        assert not launch.fused_wanted("auto", 200, **shape)  # no entry: the pair
        assert launch.fused_wanted(True, 64, **shape)  # forced on
    finally:
        launch._table_for.cache_clear()


def test_default_fused_chunks_and_step_down():
    def chunk(c):
        return c.block_n * c.n_steps
    qkv = (4096, 6144, 3, 16)
    one = launch.default_fused(1, *qkv, tiles=1, sms=132)
    assert chunk(one) == 512 and one.block_m == 16 and one.split_k == 1  # 12 programs, 8 shrink steps each
    assert chunk(launch.default_fused(32, 4096, 4096, 1, 16, tiles=33, sms=132)) == 1024  # 4 x 33 programs
    assert chunk(launch.default_fused(64, *qkv, tiles=67, sms=132)) == 4096  # whole slices: no recompute
    assert chunk(launch.default_fused(64, 4096, 4096, 1, 64, tiles=11, sms=132)) == 2048  # rank 64: wider
    down = launch.default_fused(1, 14336, 4096, 1, 16, tiles=1, sms=132)
    assert down.split_k == 4 and -(-14336 // (down.split_k * down.block_k)) <= 8
    assert launch.default_fused(64, 4096, 4096, 1, 16).split_k == 1
    big = launch.default_fused(64, 4096, 4096, 1, 128)
    assert big.block_n == 64 and big.block_k == 64
    assert launch.default_fused(4096, 4096, 6144, 3, 16).block_m == 64  # prefill, when forced
    cfg, steps = big, 0
    while (nxt := launch.step_down(cfg)) is not None:
        assert nxt.block_n * nxt.n_steps == cfg.block_n * cfg.n_steps  # the chunk (the work split) is kept
        cfg, steps = nxt, steps + 1
    assert cfg.block_k == 16 and cfg.block_n == 16 and cfg.num_stages == 1 and steps < 20
    for tokens in (1, 64, 256):
        space = launch.fused_space(tokens, 16)
        assert space and len(set(space)) == len(space)


def test_bench_row_times_fused_beside_the_pair(monkeypatch, capsys):
    """kernels.bench's LoRA row on a small case (CPU: interpreter, one call per timing): the fused columns,
    their floors and errors, and the path auto takes, as the integrator's one GPU run prints them."""
    from kernels import bench
    from kernels.cases import LoRACase, lora_inputs

    case = LoRACase("decode-4x4-r16-qkv-small", 4, 4, 16, hidden=128, widths=(64, 32, 32))
    calls = []
    monkeypatch.setattr(bench, "lora_sets", lambda c: [lora_inputs(c, dtype=torch.float32, device=DEV)])
    monkeypatch.setattr(bench, "time_sets", lambda fns, replays=40: [f() for f in fns] and calls.append(1) or 2.0)
    row = bench.bench_lora(case, bw=1e12, peak=1e15)
    # shrink, expand, pair, fused, torch; rows: default + space; the rows pair (shrink and expand by rows); the pair
    # whose segment kernels loop over the real tiles (m_programs)
    assert len(calls) == 5 + 1 + len(bench.ROWS_SPACE) + 1 + 1
    assert row["rows_pair_us"] == 2.0 and row["rows_pair_rel_err_vs_segments"] < 1e-5
    assert row["loop_pair_us"] == 2.0 and row["loop_pair_rel_err_vs_segments"] < 1e-6  # same sums, other programs
    assert row["expand_rows_us"] == row["expand_rows_best_us"] == 2.0 and row["expand_byte_floor_us"] > 0
    assert row["expand_rows_rel_err_vs_segments"] < 1e-5  # float32: the rows expand adds what the segment one does
    assert row["fused_us"] == row["us"] == 2.0 and row["auto_path"] == "pair" and row["auto_us"] == row["us"]  # no tuned file
    assert row["fused_bytes"] == row["bytes"] - 2 * 3 * 4 * 16 * 4  # no fp32 intermediate written and read
    assert row["fused_rel_err_vs_reference"] < 1e-5 and row["rel_err_vs_reference"] < 1e-5
    # default 512-column chunks: one per slice of <= 512 columns, so only x is read again (by 2 of 3 slices)
    assert row["fused_recompute_mb"] == 2 * 4 * 128 * 2 / 1e6
    bench.print_tables({"gpu": "cpu", "copy_bandwidth_GBps": 1e3, "matmul_TFLOPs": 1e3, "kernel_launch_floor_us": 2.0,
                        "versions": {"torch": "x", "triton": "y"}, "lora": [row], "attention": []})
    assert "| decode-4x4-r16-qkv-small | 2.0 | 2.0 | pair |" in capsys.readouterr().out


def test_recompute_bytes_follow_chunks_and_tiles():
    from kernels.cases import LORA_CASES

    case = next(c for c in LORA_CASES if c.name == "decode-64x64-r16-qkv")
    assert case.recompute_bytes(4096) == 2 * 64 * 4096 * 2  # one chunk per slice: only x is read again (k, v)
    # 512-column chunks: 12 chunks for 3 slices, 9 extra A reads of 16 x 4096 per token tile, 11 extra x reads
    assert case.recompute_bytes(512) == 9 * 64 * 16 * 4096 * 2 + 11 * 64 * 4096 * 2


def test_tuner_writes_the_faster_path_per_fused_key():
    from dataclasses import asdict

    from kernels.cases import LORA_CASES
    from kernels.launch import ExpandConfig, ShrinkConfig
    from kernels.tune import _keys, _spaces, choose, choose_paths

    one = next(c for c in LORA_CASES if c.name == "decode-1x1-r16-qkv")
    big = next(c for c in LORA_CASES if c.name == "decode-256x256-r16-qkv")
    prefill = next(c for c in LORA_CASES if c.name.startswith("prefill"))
    assert _spaces(one)[0][0] == "fused" and not [s for s in _spaces(prefill) if s[0] == "fused"]
    f, s, e = FusedConfig(), ShrinkConfig(), ExpandConfig()

    def paths(one_us, big_us):
        times = {}
        for case, (tf, ts, te) in ((one, one_us), (big, big_us)):
            k = _keys(case)
            times[("fused", k["fused"])] = {f: {case.name: tf}}
            times[("shrink", k["shrink"])] = {s: {case.name: ts}}
            times[("expand", k["expand"])] = {e: {case.name: te}}
        table = {}
        choose(times, table, log=lambda m: None)
        choose_paths(times, table, [one, big, prefill], log=lambda m: None)
        assert table["fused"][_keys(one)["fused"]] == asdict(f)
        return {k: v["fused"] for k, v in table["lora_path"].items()}

    one_key, big_key = _keys(one)["fused"], _keys(big)["fused"]
    # at 1 token the pair's shrink runs on the side stream beside the base matmul: only the expand counts
    # (the H200's tune: fused 6.9 us beat 4.6 + 2.4 but not 2.4, and the step with it was slower)
    assert paths((6.9, 4.6, 2.4), (90.0, 30.0, 57.0)) == {one_key: False, big_key: False}
    assert paths((2.0, 4.6, 2.4), (80.0, 30.0, 57.0)) == {one_key: True, big_key: True}  # 80 < 30 + 57


def test_model_lora_path_follows_the_engine_extra(monkeypatch):
    """lora_linear takes the fused op or the shrink/expand pair as the model's mode and the call size say;
    an engine given a bad fused_lora value fails at start naming it."""
    from engines.config import EngineConfig
    from engines.model import llama
    from engines.registry import create_engine

    calls = []
    for name in ("lora_fused", "lora_shrink", "lora_expand"):
        monkeypatch.setattr(llama.kops, name, lambda *a, _n=name: calls.append(_n))
    model = llama.build_model(llama.ModelArgs.from_name("tiny"), torch.float32, "cpu")
    model.enable_lora(2, 8, ("qkv",))
    stack = model.lora_stacks["qkv"]
    meta = LoRAMeta(300, 2).prepare([0])
    blk = model.model.layers[0].self_attn
    for mode, tokens, want in (("auto", 1, "lora_shrink"), ("auto", 300, "lora_shrink"), (False, 1, "lora_shrink"),
                               (True, 300, "lora_fused"), (16, 16, "lora_fused"), ("16", 17, "lora_shrink")):
        model.use_fused_lora(mode)
        calls.clear()
        llama.lora_linear(torch.zeros(tokens, model.args.dim), blk.qkv_proj.weight, blk.qkv_proj.bias, stack, 0, meta)
        assert calls[0] == want, (mode, tokens, calls)
    with pytest.raises(ValueError, match="fused_lora='sometimes'"):
        create_engine(EngineConfig(model="tiny", device="cpu", extra={"fused_lora": "sometimes"}))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs exist on GPUs only")
@pytest.mark.parametrize("split", [1, 4])
def test_cuda_graph_replays_new_mappings(split):
    """Captured once (no host sync inside), replayed after meta.prepare refills: follows each new mapping."""
    g = torch.Generator(device="cuda").manual_seed(5)
    t, h, r = 16, 1024, 16
    x = torch.randn(t, h, device="cuda", generator=g).bfloat16()
    a = (torch.randn(6, 3, r, h, device="cuda", generator=g) / 32).bfloat16()
    b = (torch.randn(6, 768, r, device="cuda", generator=g) / 4).bfloat16()
    scales, ranks = torch.ones(6, device="cuda"), torch.tensor([16, 8, 4, 16, 1, 16], dtype=torch.int32, device="cuda")
    offs = torch.tensor([0, 512, 640, 768], dtype=torch.int32, device="cuda")
    meta = LoRAMeta(t, 6, device="cuda").prepare([-1] * t)
    y = torch.zeros(t, 768, device="cuda", dtype=torch.bfloat16)
    cfg = FusedConfig(block_n=128, block_k=256, n_steps=2, split_k=split)

    def run():
        y.zero_()
        lora_fused(x, a, b, meta, scales, ranks, offs, y, config=cfg)
    run()  # compiles outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    for slots in ([0, 1, 2, 3, 4, 5] * 2 + [-1] * 4, [5] * 16, list(range(-1, 5)) * 2 + [3] * 4):
        meta.prepare(slots)
        graph.replay()
        torch.cuda.synchronize()
        ref = torch.zeros(t, 768, dtype=torch.float64)
        ref_meta = LoRAMeta(t, 6).prepare(slots)
        buf = torch.zeros(3, t, r, dtype=torch.float64)
        lora_shrink_ref(x.cpu().double(), a.cpu().double(), ref_meta, scales.cpu().double(), ranks.cpu(), buf)
        lora_expand_ref(buf, b.cpu().double(), ref_meta, ranks.cpu(), offs.cpu(), ref)
        assert rel(y.cpu(), ref) < 1e-2, slots
