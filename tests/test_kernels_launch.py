"""Launch configs as data, autotune spaces, tile bounds, bench/tune floors and their refusal without a GPU."""
import json
import random

import pytest
import torch
import triton

from kernels import launch
from kernels.cases import ATTENTION_CASES, LORA_CASES, AttentionCase
from kernels.launch import ExpandConfig, ShrinkConfig
from kernels.tiles import tile_bound


def test_gpu_slug_and_bucket():
    assert launch.gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert [launch.bucket(n) for n in (1, 16, 17, 64, 65, 4096)] == [16, 16, 32, 64, 128, 4096]


def test_keys_separate_shapes_and_dtypes():
    k1 = launch.shrink_key(64, 4096, 1, 16, torch.bfloat16)
    assert k1 == "T64-H4096-S1-R16-bfloat16"
    assert k1 != launch.shrink_key(64, 4096, 1, 16, torch.float16)
    assert launch.shrink_key(50, 4096, 1, 16, torch.bfloat16) == k1  # same bucket
    assert launch.expand_key(4096, 6144, 3, 16, torch.bfloat16) == "T4096-N6144-S3-R16-bfloat16"
    one = launch.attention_key(1, 128, 16, 32, 8, 128, torch.bfloat16)
    assert one == "B1-L2048-bs16-Hq32-Hkv8-D128-bfloat16"
    assert one != launch.attention_key(16, 128, 16, 32, 8, 128, torch.bfloat16)


def test_the_expand_by_rows_space():
    rows = launch.expand_rows_space(16)
    assert rows and len(set(rows)) == len(rows)
    assert {c.late_rank for c in rows} == {False, True}
    assert all(c.block_m * c.block_n <= 512 and c.block_r == 16 for c in rows)  # the register tile
    assert {c.num_warps for c in rows} == {4, 8} and all(c.block_m * c.block_n >= 256 for c in rows if c.num_warps == 8)
    assert {c.block_r for c in launch.expand_rows_space(64)} == {32}


@pytest.mark.parametrize("tokens", [1, 64, 256, 4096])
def test_spaces_are_valid_and_distinct(tokens):
    for space in (launch.shrink_space(tokens, 64, 3), launch.expand_space(tokens, 64), launch.attention_space(tokens)):
        assert space and len(set(space)) == len(space)
        for cfg in space:
            for name in ("block_m", "block_r", "block_k", "block_n", "pages_per_tile"):
                v = getattr(cfg, name, None)
                assert v is None or (v >= 1 and v & (v - 1) == 0), (cfg, name)
            if hasattr(cfg, "block_m"):
                assert cfg.block_m >= 16  # tl.dot needs 16 rows
            if isinstance(cfg, ShrinkConfig):
                assert launch._shrink_smem(cfg, 3) <= launch.SHRINK_SMEM_LIMIT


@pytest.mark.parametrize("tokens,slices,rank", [(13, 3, 128), (13, 3, 16), (1, 1, 128), (4096, 3, 64), (64, 2, 64)])
def test_launch_fitting_steps_down_until_triton_accepts(tokens, slices, rank):
    """Triton refuses a kernel whose compiled shared memory exceeds the device (OutOfResources, raised
    before anything runs); the launcher steps down and remembers the config that launched."""
    from triton.runtime.errors import OutOfResources

    limit = 232_448
    need = lambda c: launch._shrink_smem(c, slices, elem=4)  # float32 tiles: twice the 16-bit estimate
    asked = launch.default_shrink(tokens, 4096, slices, rank)
    launched = []

    def fake_launch(cfg):
        if need(cfg) > limit:
            raise OutOfResources(need(cfg), limit, "shared memory")
        launched.append(cfg)
        return "ran"
    launch._FITTED.clear()
    assert launch.launch_fitting("shrink", "k", asked, fake_launch) == "ran"
    got = launched[-1]
    assert need(got) <= limit
    assert got.split_k == asked.split_k and got.num_warps == asked.num_warps
    if need(asked) > limit:
        assert got != asked and launch.launch_fitting("shrink", "k", asked, fake_launch) == "ran"
        assert launched[-1] == got  # the second call starts from the fitted config: one launch, no refusal


def test_launch_fitting_reraises_when_nothing_fits_and_passes_other_errors():
    from triton.runtime.errors import OutOfResources

    def never(cfg):
        raise OutOfResources(1 << 30, 232_448, "shared memory")
    for cfg in (ShrinkConfig(), ExpandConfig(), launch.AttentionConfig()):
        with pytest.raises(OutOfResources):
            launch.launch_fitting("op", "never", cfg, never)
    seen = []

    def broken(cfg):
        seen.append(cfg)
        raise RuntimeError("not a resource error")
    with pytest.raises(RuntimeError):
        launch.launch_fitting("op", "broken", ShrinkConfig(), broken)
    assert len(seen) == 1


def test_step_down_ends_at_the_smallest_config():
    for cfg in (ShrinkConfig(block_m=64, block_r=64, block_k=1024, num_stages=4), ExpandConfig(block_m=64, block_n=256,
                block_r=64, num_stages=3), launch.AttentionConfig(pages_per_tile=8, num_stages=3)):
        steps = 0
        while (nxt := launch.step_down(cfg)) is not None:
            assert type(nxt) is type(cfg) and nxt != cfg
            cfg, steps = nxt, steps + 1
        assert 3 <= steps < 20


def test_default_shrink_fills_the_gpu_at_batch_one():
    one = launch.default_shrink(1, 4096, 3, 16, tiles=1, sms=132)
    assert one.split_k == 32 and 4096 // one.split_k >= one.block_k
    many = launch.default_shrink(256, 4096, 3, 16, tiles=271, sms=132)
    assert many.split_k == 1
    assert launch.default_shrink(1, 64, 1, 16, tiles=1, sms=132).split_k == 1  # too little hidden to split



def test_load_table_rejects_bad_files(tmp_path):
    bad_op = tmp_path / "a.json"
    bad_op.write_text(json.dumps({"shrnk": {}}))
    with pytest.raises(ValueError, match=r"a\.json: unknown op 'shrnk'"):
        launch.load_table(bad_op)
    bad_field = tmp_path / "b.json"
    bad_field.write_text(json.dumps({"expand": {"k": {"block_n": 64, "blockm": 16}}}))
    with pytest.raises(ValueError, match=r"expand\['k'\] has unknown field\(s\) \['blockm'\]"):
        launch.load_table(bad_field)
    broken = tmp_path / "c.json"
    broken.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        launch.load_table(broken)


def test_lookup_uses_the_gpu_file_and_defaults_otherwise(tmp_path, monkeypatch):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    key = launch.shrink_key(8, 64, 1, 16, torch.float32)
    (tmp_path / "test-gpu.json").write_text(json.dumps({
        "gpu": "Test GPU", "shrink": {key: {"block_m": 16, "block_r": 16, "block_k": 32, "split_k": 2}}}))
    monkeypatch.setattr(launch, "CONFIG_DIR", tmp_path)
    monkeypatch.setattr(launch, "_device_name", lambda device: "Test GPU")
    launch._table_for.cache_clear()
    try:
        default = ShrinkConfig(block_k=999)
        got = launch.lookup("shrink", key, torch.device(dev), default)
        assert got == ShrinkConfig(block_m=16, block_r=16, block_k=32, split_k=2)
        assert launch.lookup("shrink", "T16-H1-S1-R1-float32", torch.device(dev), default) is default
        assert launch.lookup("expand", key, torch.device(dev), ExpandConfig()) == ExpandConfig()

        # the wrapper picks the tuned entry: split_k=2 allocates the meta's split-K semaphores
        from kernels.lora_shrink import lora_shrink
        from kernels.meta import LoRAMeta
        meta = LoRAMeta(8, 2, device=dev).prepare([0] * 8)
        out = torch.zeros(1, 8, 16, device=dev)
        lora_shrink(torch.randn(8, 64, device=dev), torch.randn(1, 1, 16, 64, device=dev), meta,
                    torch.ones(1, device=dev), torch.tensor([16], dtype=torch.int32, device=dev), out)
        assert len(meta._counters) == 1 and int(meta._counters[0].abs().sum()) == 0
    finally:
        launch._table_for.cache_clear()


def test_tile_bound_covers_every_segmentation():
    rng = random.Random(0)
    for _ in range(500):
        block = rng.choice([16, 32, 64])
        n = rng.randint(1, 12)
        lens = [rng.randint(1, 100) for _ in range(n)]
        need = sum(triton.cdiv(x, block) for x in lens)
        assert need <= tile_bound(sum(lens), max_groups=n, block=block)
        assert need <= tile_bound(sum(lens), max_groups=64, block=block)


def test_floors_match_the_anchor_figures():
    """ANCHORS.md: byte floors at 3.0 TB/s of 6.1, 24.4 and 3.3 us for the three decode targets."""
    floors = {c.name: c.bytes_moved() / 3.0e12 * 1e6 for c in LORA_CASES}
    assert floors["decode-64x64-r16"] == pytest.approx(6.1, abs=0.1)
    assert floors["decode-256x256-r16"] == pytest.approx(24.4, abs=0.2)
    assert floors["decode-64x8-r64"] == pytest.approx(3.3, abs=0.1)
    targets = {c.name: (c.target_us, c.target_floor_ratio) for c in LORA_CASES}
    assert targets["decode-64x64-r16"][0] == 10.0 and targets["prefill-4096x8-r16-qkv"][1] == 1.3
    # one decode step of Llama-3-8B reads 128 KiB of KV per token over 32 layers: 4 KiB per layer
    assert AttentionCase("x", 1, 1).bytes_moved() - 2 * 32 * 128 * 2 == 4096
    assert {(c.batch, c.context) for c in ATTENTION_CASES} >= {(1, 512), (256, 2048)}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on machines without CUDA")
def test_bench_and_tune_refuse_without_a_gpu(capsys):
    from kernels import bench, tune
    assert bench.main([]) == 2
    assert tune.main([]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err


def test_tuner_choice_minimises_total_over_cases_sharing_a_key():
    from kernels.tune import choose
    a, b = ShrinkConfig(split_k=1), ShrinkConfig(split_k=4)
    times = {("shrink", "K"): {a: {"many-adapters": 5.0, "few-adapters": 20.0},
                               b: {"many-adapters": 9.0, "few-adapters": 7.0}},
             ("expand", "E"): {ExpandConfig(n_steps=2): {"x": 3.0}, ExpandConfig(n_steps=4): {"y": 1.0}}}
    table = {}
    choose(times, table, log=lambda msg: None)
    assert table["shrink"]["K"]["split_k"] == 4  # 16 us in total beats 25 us, though a wins one case
    assert "expand" not in table  # no config was measured on every case of the key


def test_tuner_refuses_a_config_that_only_launches_stepped_down():
    from kernels.tune import stepped_down
    big, small = ShrinkConfig(block_k=1024, num_stages=4), ShrinkConfig(block_k=1024, num_stages=3)
    launch._FITTED.clear()
    launch._FITTED[("shrink", "T16-H4096-S3-R16-float32", big)] = small
    launch._FITTED[("shrink", "T16-H4096-S1-R16-float32", small)] = small
    assert "stepped down" in stepped_down("shrink", big)
    assert stepped_down("shrink", small) is None and stepped_down("expand", big) is None
    launch._FITTED.clear()


def test_mixed_case_puts_decodes_first_then_one_adapter_per_prompt():
    case = next(c for c in LORA_CASES if c.name == "mixed-512x30-r16-qkv")
    slots = case.slots()
    assert len(slots) == 512 and slots[:31] == list(range(30)) + [0]  # decodes round-robin over the 30
    assert slots[256:384] == [0] * 128 and slots[384:] == [1] * 128  # two 128-token prompts, one adapter each
    from kernels.launch import expand_space
    assert {c.block_m for c in expand_space(512)} == {16, 32, 64}  # 16-row tiles for the decodes' short segments
    assert {c.block_m for c in expand_space(4096)} == {32, 64}


def test_tuner_ops_filter_and_refusal(capsys):
    from kernels.tune import _spaces, main
    case = next(c for c in LORA_CASES if c.name == "decode-256x30-r16-qkv")
    assert {op for op, _, _ in _spaces(case)} == {"fused", "shrink", "shrink_rows", "expand", "expand_rows"}
    prompts = next(c for c in LORA_CASES if c.name.startswith("prefill-"))
    by_rows = {"shrink_rows", "expand_rows"}
    assert not by_rows & {op for op, _, _ in _spaces(prompts)}  # by rows only at the decode sizes
    assert {op for op, _, _ in _spaces(case, ("expand",))} == {"expand"}
    assert main(["--ops", "expand,shrinkk"]) == 2  # refused before anything needs a GPU
    assert "--ops='expand,shrinkk'" in capsys.readouterr().err


def test_cases_bound_their_grids_by_the_engines_slots():
    """A case's LoRAMeta has the segment capacity the engine's slots give (64 by default), or its adapters where
    they are more, so the segment kernels launch the grid the engine launches for that step."""
    from kernels.cases import ENGINE_SLOTS, lora_inputs
    from engines.config import EngineConfig
    one = next(c for c in LORA_CASES if c.name == "decode-64x1-r16")
    many = next(c for c in LORA_CASES if c.name == "decode-256x256-r16")
    assert ENGINE_SLOTS == EngineConfig().gpu_slots
    assert lora_inputs(one, dtype=torch.float32, device="cpu").meta.max_segments == ENGINE_SLOTS
    assert many.segments() == 256
    assert tile_bound(one.tokens, one.segments(), 16) == 4 + 63  # 4 tiles hold the tokens
