"""scripts/step_breakdown.py: kernel names sorted into kinds, and a run that writes each kind beside its floors."""
import importlib.util
import json
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("step_breakdown",
                                              Path(__file__).parents[1] / "scripts" / "step_breakdown.py")
sb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sb)


@pytest.mark.parametrize("name,kind", [
    ("_expand_rows_kernel", "lora_expand"), ("_expand_kernel", "lora_expand"), ("_shrink_kernel", "lora_shrink"),
    ("_paged_attention_kernel", "attention"), ("nvjet_hsh_256x128_64x4_2x1_v_bz_coopA_TNT", "matmul"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32", "matmul"), ("_add_rms_norm_kernel", "norm_rope"),
    ("_rope_and_cache_kernel", "norm_rope"), ("void at::native::reduce_kernel<argmax>", "sampling"),
    ("Memcpy HtoD (Pinned -> Device)", "other"),
])
def test_kernel_names_fall_into_kinds(name, kind):
    assert sb.kind_of(name) == kind


def test_points_parse():
    assert sb.parse_points("1x0,64x64,256,256x30+256") == [(1, 0, 0), (64, 64, 0), (256, 0, 0), (256, 30, 256)]
    with pytest.raises(SystemExit, match="BATCHxADAPTERS"):
        sb.parse_points("64xx")


def test_cpu_smoke_run_writes_each_kind_beside_its_floors(tmp_path, capsys):
    out = tmp_path / "bd.json"
    assert sb.main(["--points", "2x0,2x2,2x2+20", "--steps", "1", "--context", "24", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["copy_rate_bps"] > 0 and data["matmul_flop_s"] > 0
    mm = {(r["adapters"], r["prompt_tokens"]): r for r in data["rows"] if r["kind"] == "matmul"}
    assert set(mm) == {(0, 0), (2, 0), (2, 20)}
    # the mixed step reads the same weights and multiplies 22 rows by them where the decode step has 2
    assert mm[2, 20]["byte_floor_us"] == mm[2, 0]["byte_floor_us"]
    assert mm[2, 20]["flop_floor_us"] == pytest.approx(11 * mm[2, 0]["flop_floor_us"])
    for r in mm.values():
        assert r["byte_floor_us"] > 0 and r["flop_floor_us"] > 0
        assert r["x_floor"] == pytest.approx(r["us_per_step"] / max(r["byte_floor_us"], r["flop_floor_us"]))
    assert "all kernels" in capsys.readouterr().out


def test_slots_size_the_engine_and_refuse_too_few(tmp_path, monkeypatch, capsys):
    seen = []
    real = sb._engine
    monkeypatch.setattr(sb, "_engine", lambda cfg, slots, *a, **k: seen.append(slots) or real(cfg, slots, *a, **k))
    assert sb.main(["--points", "2x2", "--steps", "1", "--context", "24", "--slots", "5",
                    "--json", str(tmp_path / "bd.json")]) == 0
    assert seen == [5]
    with pytest.raises(SystemExit):
        sb.main(["--points", "2x2", "--slots", "1"])
    assert "--slots 1: the points need 2 adapters" in capsys.readouterr().err
