"""Verification against the user's own truth: scores on synthetic fields whose answers are known, grids and
times checked, and one real radar frame."""
import json
import math

import h5py
import numpy as np
import pytest
import torch

from precipfast.errors import InputFormatError
from precipfast.grid import coarsen, upsample
from precipfast.runtime.files.digest import sha256_file
from precipfast.runtime.files.input_writer import write_precipfast_input
from precipfast.runtime.files.writer import write_output
from precipfast.runtime.sampling.pipeline import fine_coords
from precipfast.verify.evaluate import BASELINES, format_table, plot_verification, regrid, run, to_json, verify

T0 = 1_500_000_000
F = 10


def _grid(h=6, w=8):
    lat_lr, lon_lr = 40.95 - 0.1 * np.arange(h), -100.95 + 0.1 * np.arange(w)
    return (lat_lr, lon_lr, *fine_coords(lat_lr, lon_lr, F))


def _rain(g, shape):
    """Rain-like: mostly light, some cells above 10 mm/h, dry patches."""
    r = g.gamma(0.6, 3.0, shape)
    r[r < 0.3] = 0.0
    return r.astype(np.float32)


def _case(tmp_path, truth, members, lr=None, *, times=(T0,), truth_times="same", record_input=True,
          truth_lat=None, truth_lon=None, name="ens.h5"):
    """Files of one verification: truth (T, H, W) and members (T, E, H, W) on the fine grid of a 0.1 deg box,
    the coarse input lr (T, h, w) (default: max-pooled truth), recorded in the ensemble like `sample` does."""
    t, _, hh, ww = members.shape
    lat_lr, lon_lr, lat, lon = _grid(hh // F, ww // F)
    lr = coarsen(truth, F, "max") if lr is None else lr
    inp = write_precipfast_input(tmp_path / "input.h5", lr, lat_lr, lon_lr, times=list(times))
    tt = list(times) if truth_times == "same" else truth_times
    tr = write_precipfast_input(tmp_path / "truth.h5", truth, lat if truth_lat is None else truth_lat,
                                lon if truth_lon is None else truth_lon, times=tt)
    attrs = {"model_name": "test", "model_sha256": "0" * 64, "steps": 8, "seed": 0, "backend": "torch",
             "input_sha256": sha256_file(inp) if record_input else "none",
             "input_file": str(inp) if record_input else "none", "input_variable": "/precip"}
    ens = write_output(tmp_path / name, {"precip": members}, lat=lat, lon=lon, lat_lr=lat_lr, lon_lr=lon_lr,
                       times=list(times), attrs=attrs)
    return ens, tr, inp


def test_perfect_ensemble_scores_crps_0_fss_1_and_spectra_ratio_1(tmp_path):
    g = np.random.default_rng(0)
    truth = _rain(g, (2, 60, 80))
    truth[1, :5, :7] = np.nan  # missing radar: left out of every score
    members = np.repeat(np.nan_to_num(truth)[:, None], 4, axis=1)
    ens, tr, _ = _case(tmp_path, truth, members, times=(T0, T0 + 1800))
    r = verify(ens, tr)
    s = r["scores"]["ensemble"]
    assert r["n_pixels"] == 2 * 60 * 80 - 35 and r["times"] == [T0, T0 + 1800]
    assert s["fair_crps"] == 0 and s["mae"] == 0 and s["rmse"] == 0 and s["bias"] == 0
    assert s["bias_ratio"] == pytest.approx(1.0) and s["corr"] == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for per_thr in s["fss"].values() for v in per_thr.values())
    assert s["psd_ratio_2_50km"] == pytest.approx(1.0) and s["psd_ratio_2_20km"] == pytest.approx(1.0)
    # every member ties the truth: ranks are drawn uniformly (Hamill 2001), so the histogram is flat
    counts = np.array(r["rank_histogram"]["counts"])
    assert counts.sum() == r["n_pixels"] and r["rank_histogram"]["reliability_index"] < 0.06
    assert r["psd"]["window"]["size_px"] == 60  # rows 0-4 of time 1 are NaN, yet a 60 px square fits beside them
    assert r["grid"]["shape"] == [60, 80] and r["scale_factor"] == F


def test_identical_members_give_crps_equal_to_mae_and_the_nearest_baselines_scores(tmp_path):
    g = np.random.default_rng(1)
    truth = _rain(g, (1, 60, 80))
    lr = coarsen(truth, F, "mean")
    field = upsample(torch.from_numpy(lr)[:, None], F, "nearest")[:, 0].numpy()
    ens, tr, _ = _case(tmp_path, truth, np.repeat(field[:, None], 3, axis=1), lr=lr)
    r = verify(ens, tr)
    s, near = r["scores"]["ensemble"], r["scores"]["nearest"]
    mae = float(np.abs(field.astype(np.float64) - truth).mean())
    assert s["fair_crps"] == pytest.approx(mae, rel=1e-9) and s["mae"] == pytest.approx(mae, rel=1e-9)
    assert near["fair_crps"] == pytest.approx(mae, rel=1e-9) and near["rmse"] == pytest.approx(s["rmse"], rel=1e-9)
    for thr, per_scale in s["fss"].items():  # ensemble fractions of identical members = the field's
        assert per_scale == pytest.approx(near["fss"][thr], abs=1e-12)
    assert s["fss"]["1mm_h"]["1km"] < s["fss"]["1mm_h"]["25km"] < 1.0 and s["fss"]["5mm_h"]["5km"] == 0.0
    assert s["spread_skill"] == 0.0
    # input = the mean-pooled truth: bilinear of the input and bilinear of the pooled truth are one field
    assert r["scores"]["bilinear"]["mae"] == pytest.approx(r["scores"]["bilinear_truth_meanpool"]["mae"], rel=1e-6)
    assert s["bias"] == pytest.approx(0.0, abs=1e-6)  # mean pooling + nearest conserves the mean


def test_calibrated_ensemble_has_a_flat_rank_histogram_and_spread_skill_one(tmp_path):
    g = np.random.default_rng(2)
    truth = _rain(g, (2, 100, 100))
    members = _rain(g, (2, 9, 100, 100))  # members and truth from one distribution, independent pixels
    ens, tr, _ = _case(tmp_path, truth, members, times=(T0, T0 + 1800))
    r = verify(ens, tr)
    rh, s = r["rank_histogram"], r["scores"]["ensemble"]
    assert rh["reliability_index"] < 0.05 and rh["delta"] < 3.0 and len(rh["counts"]) == 10
    assert s["spread_skill"] == pytest.approx(1.0, abs=0.05)
    assert s["bias_ratio"] == pytest.approx(1.0, abs=0.05)
    # an under-dispersive ensemble: members squeezed towards their mean, truth often outside them
    narrow = members.mean(axis=1, keepdims=True) + 0.2 * (members - members.mean(axis=1, keepdims=True))
    ens2, _, _ = _case(tmp_path, truth, narrow, times=(T0, T0 + 1800), name="narrow.h5")
    r2 = verify(ens2, tr)
    c = np.array(r2["rank_histogram"]["counts"])
    assert r2["scores"]["ensemble"]["spread_skill"] < 0.4 and r2["rank_histogram"]["reliability_index"] > 0.5
    assert c[0] + c[-1] > 0.5 * c.sum()


def test_bias_of_a_doubled_ensemble(tmp_path):
    g = np.random.default_rng(3)
    truth = _rain(g, (1, 60, 80))
    ens, tr, _ = _case(tmp_path, truth, np.repeat(2 * truth[:, None], 2, axis=1))
    s = verify(ens, tr)["scores"]["ensemble"]
    assert s["bias_ratio"] == pytest.approx(2.0, rel=1e-6)
    assert s["bias"] == pytest.approx(float(truth.mean()), rel=1e-5)
    assert s["corr"] == pytest.approx(1.0) and s["psd_ratio_2_20km"] == pytest.approx(4.0)  # power scales by 2^2


def test_regrid_matches_grid_upsample_and_keeps_missing_coarse_pixels_missing():
    lat_lr, lon_lr, lat, lon = _grid(5, 7)
    lr = np.random.default_rng(4).random((5, 7))
    want = upsample(torch.from_numpy(lr)[None, None], F, "bilinear")[0, 0].numpy()
    assert np.allclose(regrid(lr, lat_lr, lon_lr, lat, lon, "bilinear"), want, atol=1e-6)
    assert np.array_equal(regrid(lr, lat_lr, lon_lr, lat, lon, "nearest"),
                          lr.repeat(F, 0).repeat(F, 1).astype(np.float32))
    lr[2, 3] = np.nan
    out = regrid(lr, lat_lr, lon_lr, lat, lon, "bilinear")
    assert np.isnan(out[20:30, 30:40]).all() and np.isfinite(out).sum() == out.size - 100
    # beyond the coarse grid's outer edges: NaN (the input does not cover it)
    assert np.isnan(regrid(lr, lat_lr, lon_lr, np.array([lat_lr[0] + 0.06]), lon[:3])).all()


def test_grid_mismatch_is_one_error_naming_both_grids(tmp_path):
    g = np.random.default_rng(5)
    truth = _rain(g, (1, 60, 80))
    members = np.repeat(truth[:, None], 2, axis=1)
    _, _, lat, lon = _grid()
    ens, tr, _ = _case(tmp_path, truth, members, truth_lat=lat + 0.007)  # 0.7 px north
    with pytest.raises(InputFormatError, match="grids differ") as e:
        verify(ens, tr)
    msg = str(e.value)
    assert "truth.h5" in msg and "ens.h5" in msg and "60x80" in msg and "half a pixel" in msg
    # a truth on another part of the globe: one line naming the ensemble grid too
    far = tmp_path / "far"
    far.mkdir()
    ens2, tr2, _ = _case(far, truth, members, truth_lat=lat - 10.0)
    with pytest.raises(InputFormatError, match="does not cover the ensemble grid.*60x80"):
        verify(ens2, tr2)


def test_a_larger_truth_is_cropped_to_the_ensemble(tmp_path):
    g = np.random.default_rng(6)
    truth = _rain(g, (1, 60, 80))
    big = np.pad(truth, ((0, 0), (5, 5), (5, 5)), constant_values=50.0)
    _, _, lat, lon = _grid()
    big_lat = np.concatenate([lat[0] + 0.01 * np.arange(5, 0, -1), lat, lat[-1] - 0.01 * np.arange(1, 6)])
    big_lon = np.concatenate([lon[0] - 0.01 * np.arange(5, 0, -1), lon, lon[-1] + 0.01 * np.arange(1, 6)])
    members = np.repeat(truth[:, None], 2, axis=1)
    lat_lr, lon_lr, _, _ = _grid()
    inp = write_precipfast_input(tmp_path / "in.h5", coarsen(truth, F, "max"), lat_lr, lon_lr, times=[T0])
    tr = write_precipfast_input(tmp_path / "big_truth.h5", big, big_lat, big_lon, times=[T0])
    attrs = {"model_name": "t", "model_sha256": "0", "steps": 8, "seed": 0, "backend": "torch",
             "input_sha256": sha256_file(inp), "input_file": str(inp)}
    ens = write_output(tmp_path / "e.h5", {"precip": members}, lat=lat, lon=lon, lat_lr=lat_lr, lon_lr=lon_lr,
                       times=[T0], attrs=attrs)
    r = verify(ens, tr)
    assert r["scores"]["ensemble"]["fair_crps"] == 0 and r["n_pixels"] == 4800  # the 50 mm/h frame is cut away


def test_times_matched_by_timestamp_and_clear_errors_when_they_differ(tmp_path):
    g = np.random.default_rng(7)
    truth = _rain(g, (2, 60, 80))
    members = np.repeat(truth[:, None], 2, axis=1)
    ens, tr, _ = _case(tmp_path, truth, members, times=(T0, T0 + 1800), truth_times=[T0 + 3600, T0 + 5400])
    with pytest.raises(InputFormatError, match="times differ: 2 of the ensemble's times") as e:
        verify(ens, tr)
    assert "2017-07-14T02:40:00Z" in str(e.value) and "2017-07-14T03:40:00Z" in str(e.value)
    # truth without timestamps and another number of steps
    sub = tmp_path / "b"
    sub.mkdir()
    ens2, _, _ = _case(sub, truth, members, times=(T0, T0 + 1800))
    tr2 = write_precipfast_input(sub / "truth1.h5", truth[:1], *_grid()[2:])
    with pytest.raises(InputFormatError, match="2 time steps.*1 .*same number of steps"):
        verify(ens2, tr2)
    # only the second time is in the truth: it alone is verified, and the result says so
    tr3 = write_precipfast_input(sub / "truth2.h5", truth[1:] * 0 + truth[1:], *_grid()[2:], times=[T0 + 1800])
    r = verify(ens2, tr3)
    assert r["times"] == [T0 + 1800] and r["scores"]["ensemble"]["fair_crps"] == 0
    assert any("not in truth" in n for n in r["notes"])
    assert verify(ens2, tr3, times=[1])["times"] == [T0 + 1800]
    with pytest.raises(InputFormatError, match="out of range"):
        verify(ens2, tr3, times=[2])


def test_coarse_input_recorded_changed_or_missing(tmp_path):
    g = np.random.default_rng(8)
    truth = _rain(g, (1, 60, 80))
    members = np.repeat(truth[:, None], 2, axis=1)
    ens, tr, inp = _case(tmp_path, truth, members)
    assert verify(ens, tr)["input"] == str(inp)
    moved = inp.rename(tmp_path / "moved_input.h5")
    r = verify(ens, tr)
    assert list(r["scores"]) == ["ensemble", "bilinear_truth_meanpool"]
    assert any("not found" in n and "--input" in n for n in r["notes"])
    assert list(verify(ens, tr, input_path=moved)["scores"]) == ["ensemble", *BASELINES]
    with h5py.File(moved, "r+") as f:  # the file changes after sampling
        f["precip"][0, 0, 0] = 99.0
    moved.rename(inp)
    with pytest.raises(InputFormatError, match="changed since sampling"):
        verify(ens, tr)


def test_ensemble_files_that_are_not_ensembles_are_refused(tmp_path):
    g = np.random.default_rng(9)
    truth = _rain(g, (1, 60, 80))
    ens, tr, inp = _case(tmp_path, truth, truth[:, None])
    with pytest.raises(InputFormatError, match="1 member; expected >= 2"):
        verify(ens, tr)
    with pytest.raises(InputFormatError, match="has no 'precip'.*precipfast sample"):
        verify(_not_ensemble(tmp_path), tr)
    with pytest.raises(InputFormatError, match="does not exist"):
        verify(tmp_path / "nope.h5", tr)


def _not_ensemble(tmp_path):
    p = tmp_path / "other.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.zeros(3)
    return p


def test_run_writes_strict_json_and_a_png_and_the_table_shows_the_numbers(tmp_path):
    g = np.random.default_rng(10)
    truth = _rain(g, (1, 60, 80))
    members = np.clip(truth[:, None] + g.normal(0, 1, (1, 5, 60, 80)), 0, None).astype(np.float32)
    ens, tr, _ = _case(tmp_path, truth, members)
    r = run(ens, tr, json_path=tmp_path / "v.json", plots_dir=tmp_path / "plots")
    saved = json.loads((tmp_path / "v.json").read_text())  # strict JSON: NaN would not parse back as null
    assert "maps" not in saved
    assert saved["scores"]["ensemble"]["fair_crps"] == pytest.approx(r["scores"]["ensemble"]["fair_crps"])
    assert set(saved["scores"]) == {"ensemble", *BASELINES}
    assert "spread_skill" not in saved["scores"]["bilinear"]  # a point forecast has no spread
    png = tmp_path / "plots" / "verification.png"
    assert png.is_file() and png.stat().st_size > 50_000 and png.read_bytes()[:4] == b"\x89PNG"
    table = format_table(r)
    crps_row = next(line for line in table.splitlines() if line.startswith("fair CRPS"))
    cells = crps_row.split()[-4:]
    assert float(cells[0]) == pytest.approx(r["scores"]["ensemble"]["fair_crps"], abs=1e-3)
    assert float(cells[1]) == pytest.approx(r["scores"]["bilinear"]["mae"], abs=1e-3)
    assert "FSS >= 10 mm/h, 25 km" in table and "rank histogram (6 bins)" in table
    assert format_table(saved).splitlines()[4:] == table.splitlines()[4:]  # tables from the JSON too
    assert to_json({"a": float("nan"), "maps": 1}) == {"a": None}
    # a result read back from the JSON plots too, without the map row
    assert plot_verification(saved, tmp_path / "from_json.png").stat().st_size > 30_000


@pytest.mark.data
def test_real_radar_frame_with_a_perturbed_ensemble(tmp_path, shared_data):
    """Real MRMS radar (region_3, 2019-06-10 00:00Z) as truth, its 10 km max-pooled field as the input, and an
    ensemble of the truth under multiplicative noise (members = truth x lognormal, mean-preserving)."""
    with h5py.File(shared_data / "mrms_preciprate_20190610_0000-0110_regions.h5", "r") as f:
        hr = f["region_3/precip"][0, :200, :200].astype(np.float32)
        lat, lon = f["region_3/lat"][:200], f["region_3/lon"][:200]
        t0 = int(f["time_unix"][0])
    assert np.isfinite(hr).all() and hr.max() > 10  # a wet window with full coverage
    lat_lr, lon_lr = lat.reshape(-1, F).mean(axis=1), lon.reshape(-1, F).mean(axis=1)
    inp = write_precipfast_input(tmp_path / "in.h5", coarsen(hr, F, "max"), lat_lr, lon_lr, times=[t0])
    tr = write_precipfast_input(tmp_path / "truth.h5", hr, lat, lon, times=[t0])
    g = np.random.default_rng(11)
    sigma = 0.5
    members = hr[None] * np.exp(sigma * g.standard_normal((8, 200, 200)) - sigma ** 2 / 2)
    attrs = {"model_name": "perturbed-truth", "model_sha256": "0", "steps": 0, "seed": 11, "backend": "none",
             "input_sha256": sha256_file(inp), "input_file": str(inp), "input_variable": "/precip"}
    ens = write_output(tmp_path / "ens.h5", {"precip": members.astype(np.float32)}, lat=lat, lon=lon,
                       lat_lr=lat_lr, lon_lr=lon_lr, times=[t0], attrs=attrs)
    r = run(ens, tr, json_path=tmp_path / "v.json")
    saved = json.loads((tmp_path / "v.json").read_text())
    assert set(saved) >= {"scores", "rank_histogram", "psd", "grid", "times", "n_pixels", "notes", "input"}
    s, bil, pool = (saved["scores"][k] for k in ("ensemble", "bilinear", "bilinear_truth_meanpool"))
    assert saved["n_pixels"] == 40000 and saved["times_iso"] == ["2019-06-10T00:00:00Z"]
    # truth x noise beats interpolation clearly: CRPS well under either bilinear's MAE
    assert s["fair_crps"] < 0.5 * min(bil["mae"], pool["mae"])
    assert s["bias_ratio"] == pytest.approx(1.0, abs=0.02) and s["corr"] > 0.85
    # multiplicative noise adds small-scale power; interpolation has almost none at 2-20 km
    assert s["psd_ratio_2_20km"] > 1.0 and bil["psd_ratio_2_20km"] < 0.1
    # the max-pooled input is biased high; the mean-pooled truth is not
    assert bil["bias_ratio"] > 1.5 and pool["bias_ratio"] == pytest.approx(1.0, abs=0.02)
    assert all(s["fss"]["1mm_h"][k] > bil["fss"]["1mm_h"][k] for k in ("1km", "5km"))
    assert "fair CRPS" in format_table(r) and math.isfinite(s["spread_skill"])


def test_south_up_ensemble_without_coarse_grid_or_times_is_read_north_up(tmp_path):
    """An ensemble written by hand: lat ascending, no lat_lr/lon_lr, no timestamps. It is flipped north-up,
    matched to a 2-step truth by position, and the truth is pooled in 0.1 deg blocks from the corner."""
    g = np.random.default_rng(12)
    truth = _rain(g, (2, 60, 80))
    _, _, lat, lon = _grid()
    tr = write_precipfast_input(tmp_path / "truth.h5", truth, lat, lon)
    members = np.stack([truth, truth + 1.0], axis=1)[:, :, ::-1]  # rows south first, like lat[::-1]
    attrs = {"model_name": "t", "model_sha256": "0", "steps": 8, "seed": 0, "backend": "torch",
             "input_sha256": "none", "input_file": "none"}
    ens = write_output(tmp_path / "e.h5", {"precip": members}, lat=lat[::-1], lon=lon, attrs=attrs)
    r = verify(ens, tr)
    s = r["scores"]["ensemble"]
    assert r["times"] == [0, 1] and r["times_iso"] is None and r["scale_factor"] == F
    assert s["bias"] == pytest.approx(0.5, rel=1e-6) and s["corr"] == pytest.approx(1.0)
    # members truth and truth + 1: fair CRPS = mean |x - y| - |x1 - x2| / (E (E - 1)) * 1 = 0.5 - 0.5 = 0
    assert s["fair_crps"] == pytest.approx(0.0, abs=1e-6)
    assert list(r["scores"]) == ["ensemble", "bilinear_truth_meanpool"]
    assert any("no coarse input" in n for n in r["notes"]) and any("by position" in n for n in r["notes"])
    pooled = upsample(torch.from_numpy(coarsen(truth, F, "mean"))[:, None].double(), F, "bilinear")[:, 0].numpy()
    assert r["scores"]["bilinear_truth_meanpool"]["mae"] == pytest.approx(float(np.abs(pooled - truth).mean()),
                                                                         rel=1e-5)


def test_an_explicit_input_that_is_not_the_recorded_one_is_noted(tmp_path):
    g = np.random.default_rng(13)
    truth = _rain(g, (1, 60, 80))
    ens, tr, inp = _case(tmp_path, truth, np.repeat(truth[:, None], 2, axis=1))
    lat_lr, lon_lr, _, _ = _grid()
    other = write_precipfast_input(tmp_path / "clean.h5", coarsen(truth, F, "mean"), lat_lr, lon_lr, times=[T0])
    r = verify(ens, tr, input_path=other)
    assert r["input"] == str(other) and any("not the file the ensemble was sampled from" in n for n in r["notes"])
    assert r["scores"]["bilinear"]["bias"] == pytest.approx(0.0, abs=1e-5)  # mean pooling keeps the mean
    wrong = write_precipfast_input(tmp_path / "shifted.h5", coarsen(truth, F, "mean"), lat_lr + 0.3, lon_lr,
                                   times=[T0])
    with pytest.raises(InputFormatError, match="grids differ.*coarse grid"):
        verify(ens, tr, input_path=wrong)


def test_the_evaluate_command_prints_the_table_writes_json_and_fails_in_one_line(tmp_path):
    """`precipfast evaluate ENSEMBLE --truth TRUTH --json --plots` through the CLI, and a grid mismatch."""
    import json

    from click.testing import CliRunner

    from precipfast.cli import main
    g = np.random.default_rng(9)
    truth = _rain(g, (1, 60, 80))
    members = np.stack([truth * s for s in (0.8, 1.0, 1.2)], axis=1)
    ens, tr, _ = _case(tmp_path, truth, members)
    res = CliRunner().invoke(main, ["evaluate", str(ens), "--truth", str(tr), "--json", str(tmp_path / "v.json"),
                                    "--plots", str(tmp_path), "--quiet"])
    assert res.exit_code == 0, res.output
    scores = json.loads((tmp_path / "v.json").read_text())["scores"]
    assert scores["ensemble"]["bias_ratio"] == pytest.approx(1.0, abs=1e-4)
    assert f"{scores['ensemble']['fair_crps']:.3f}" in res.output and "bilinear" in res.output
    assert (tmp_path / "verification.png").stat().st_size > 10_000
    far = tmp_path / "far"
    far.mkdir()
    _, _, lat, lon = _grid()
    ens2, tr2, _ = _case(far, truth, members, truth_lat=lat + 0.007)
    bad = CliRunner().invoke(main, ["evaluate", str(ens2), "--truth", str(tr2), "--quiet"])
    assert bad.exit_code == 1 and "grids differ" in bad.output and "Traceback" not in bad.output
