"""benchmarks/bench_cuda.py at a tiny size on the CPU: the records carry what the GPU run must report,
their figures follow from one another, and the two ways of sampling give the same members."""
import json

import pytest

from precipfast.benchmarks import bench_cuda

TINY = ["--device", "cpu", "--members", "2", "--domains", "32", "--tile", "32", "--overlap", "8", "--steps", "2",
        "--repeat", "1", "--threads", "1"]


def _records(capsys, *extra):
    assert bench_cuda.main(TINY + list(extra)) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_records_have_every_figure(capsys):
    base, fast, cmp_ = _records(capsys)
    assert [r["variant"] for r in (base, fast, cmp_)] == ["baseline", "precipfast", "comparison"]
    assert 1.6e6 < base["params"] < 1.8e6  # the peer's net size: 1.7 M parameters
    assert base["unet"]["model_channels"] == 32 and base["unet"]["channel_mult"] == [1, 2, 2]
    assert (base["precision"], base["torch_compile"], base["cuda_graphs"], base["step"]) == ("fp32", False, False,
                                                                                          "reference")
    # On the CPU the fast path keeps what runs there: no compile, no graphs, the in-place step.
    assert (fast["torch_compile"], fast["cuda_graphs"], fast["step"]) == (False, False, "inplace")
    for r in (base, fast):
        assert r["evaluations"] == 3 and r["tiles"] == 1 and r["members"] == 2 and r["domain_hw"] == [32, 32]
        assert 0 < r["p20_ms"] <= r["p50_ms"] <= r["p80_ms"] and r["repeat"] == 1 and r["warmup_s"] > 0
        unit = r["p50_ms"] / (2 * 32 * 32 / 1e6 * 3)  # ms per member * Mpx * evaluation
        assert r["ms_per_member_mpx_eval"] == pytest.approx(unit, rel=1e-3)
        assert r["peak_mem_gib"] > 0 and r["peak_mem_kind"] == "process_VmHWM" and r["finite"]
        assert r["gflop_per_member_eval"] > 0 and r["tflop_per_s"] > 0
    assert cmp_["peer_ms_per_member_mpx_eval"] == 22.1 and "CorrDiff" in cmp_["peer"]
    assert cmp_["speedup_vs_baseline"] == pytest.approx(base["p50_ms"] / fast["p50_ms"], rel=2e-3)
    assert cmp_["speedup_vs_peer"] == pytest.approx(22.1 / fast["ms_per_member_mpx_eval"], rel=2e-3)
    assert cmp_["same_device_as_peer"] is False
    # float32 both ways, and the in-place step repeats the reference's roundings: the same members.
    assert cmp_["rel_diff_vs_baseline"] == 0.0 and cmp_["member_spread_rel"] > 0.1


def test_bf16_fast_path_on_a_tiled_domain(capsys):
    *_, cmp_ = _records(capsys, "--precision", "bf16", "--domains", "40x56")
    assert cmp_["tiles"] == 4 and cmp_["tile_overhead"] > 1
    # bf16 moves the members by its rounding only: far less than members differ from one another.
    assert 0 < cmp_["rel_diff_vs_baseline"] < 0.01 * cmp_["member_spread_rel"]


def test_cuda_only_switches_are_refused_on_the_cpu():
    with pytest.raises(ValueError, match="--torch-compile runs on CUDA only"):
        bench_cuda.main(TINY + ["--torch-compile"])


def test_the_old_flag_names_point_to_the_new_ones(capsys):
    with pytest.raises(SystemExit) as e:
        bench_cuda.main(TINY + ["--compile"])
    assert e.value.code == 2 and "--compile is now --torch-compile" in capsys.readouterr().err
