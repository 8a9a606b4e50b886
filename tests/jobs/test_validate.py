"""Verification (precipfast/jobs/validate.py, the RAPSD in verify/scores.py): closed forms for the spectrum,
an end-to-end run on a tiny random bundle, and the shipped bundle's skill on held-out radar (pySTEPS
style: the test asserts skill, not only shapes)."""
import json
import math

import numpy as np
import pytest
import torch

from precipfast.grid import coarsen, upsample
from precipfast.jobs.validate import validate
from precipfast.options import ValidateOptions
from precipfast.verify.scores import pearson, psd_band_ratio, psd_radial


def run_validate(model, data, **kw):
    """validate() with the options object built as `precipfast validate` builds it."""
    return validate(ValidateOptions(model=str(model), data=str(data), **kw))


# ---------------------------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("window", [True, False])
@pytest.mark.parametrize("shape,ky,kx", [((64, 64), 0, 8), ((64, 64), 4, 3), ((48, 80), 0, 10)])
def test_psd_of_a_sinusoid_peaks_at_its_wavelength(window, shape, ky, kx):
    h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    field = 3.0 + np.sin(2 * np.pi * (ky * y / h + kx * x / w))  # the mean (k = 0) is left out
    wl, p = psd_radial(field, pixel_km=2.0)
    expected_km = 2.0 / math.hypot(ky / h, kx / w)
    # the peak bin is the nearest multiple of dk = 1 / (max(h, w) pixel_km): off by <= dk / 2 in wavenumber
    assert wl[np.argmax(p)] == pytest.approx(expected_km, rel=expected_km / (2 * max(h, w) * 2.0))
    # Everything else is far below the peak (Hann leakage reaches only the neighbouring bins).
    far = np.abs(1 / wl - 1 / expected_km) > 2.5 / (max(h, w) * 2.0)
    assert p[far].max() < 1e-3 * p.max()


def test_psd_of_white_noise_is_flat_at_its_variance():
    rng = np.random.default_rng(0)
    s2 = 4.0
    noise = rng.normal(0.0, math.sqrt(s2), (8, 256, 256))
    wl, p = psd_radial(noise)
    assert wl[0] == pytest.approx(256.0) and wl[-1] == pytest.approx(2.0)
    assert np.all(np.diff(wl) < 0)
    # Parseval: E|FFT|^2 / N = s^2 at every wavenumber, windowed or not. Sampling error: bin r holds about
    # pi r Hermitian-distinct modes x 8 fields, so from r = 8 on each bin averages >= 200 chi^2_2 draws
    # (rel. std <= 0.07, a bit more with the taper's correlation); 0.25 is > 3 sigma for the worst of 121.
    assert np.abs(p[7:] / s2 - 1).max() < 0.25
    assert p.mean() / s2 == pytest.approx(1.0, abs=0.03)
    slope = np.polyfit(np.log(1 / wl[7:]), p[7:] / s2, 1)[0]  # flat: no trend with log wavenumber
    assert abs(slope) < 0.03


def test_psd_rejects_nan_and_tiny_fields():
    f = np.ones((16, 16))
    f[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN-free"):
        psd_radial(f)
    with pytest.raises(ValueError, match="at least 4x4"):
        psd_radial(np.ones((3, 8)))


def test_band_ratio_and_interpolation_losing_small_scale_power():
    rng = np.random.default_rng(1)
    field = rng.gamma(0.5, 2.0, (200, 200)).astype(np.float32)
    wl, p = psd_radial(field)
    assert psd_band_ratio(wl, p, p) == pytest.approx(1.0)
    assert psd_band_ratio(wl, 4 * p, p) == pytest.approx(4.0)  # 2x the field = 4x the power
    bil = upsample(torch.from_numpy(coarsen(field, 10, "mean"))[None, None], 10)[0, 0]
    assert psd_band_ratio(wl, psd_radial(bil)[1], p) < 0.05  # bilinear keeps almost nothing at 2-20 km
    with pytest.raises(ValueError, match="no wavelength"):
        psd_band_ratio(wl, p, p, band_km=(500.0, 900.0))


def test_pearson_closed_forms():
    x = torch.arange(10.0)
    assert pearson(2 * x + 1, x) == pytest.approx(1.0)
    assert pearson(-x, x) == pytest.approx(-1.0)
    y = x.clone()
    y[3] = float("nan")
    assert pearson(y, x) == pytest.approx(1.0)
    assert math.isnan(pearson(torch.ones(5), x[:5]))


# ---------------------------------------------------------------------------------------------- end to end
KEYS = {"fair_crps", "plain_crps", "ens_mean_mae", "ens_mean_rmse", "ens_mean_corr", "spread_skill", "bilinear_mae",
        "bilinear_rmse", "bilinear_corr", "nearest_mae", "nearest_rmse", "bilinear_meanpool_mae",
        "member_min_mm_h", "truth_mean_mm_h", "ens_mean_mm_h", "psd_ratio_members", "psd_ratio_bilinear"}


@pytest.mark.data
@pytest.mark.parametrize("stages", ["downscaling", "correction,downscaling"])
def test_validate_tiny_bundle_returns_every_score_and_writes_files(tiny_bundle, shared_data, tmp_path, stages):
    out = tmp_path / stages
    mode = "full" if "correction" in stages else "downscaling"
    r = run_validate(tiny_bundle, shared_data, source="mrms/region_3", frames=(0, -1), members=2, steps=2,
                 seed=3, stages=stages, backend="torch", device="cpu", crop=65, out=str(out))
    assert r["frames"] == [0, 35] and r["crop_px"] == 60 and r["stages"] == stages.split(",")
    assert len(r["per_frame"]) == 2 and [w["size_px"] for w in r["windows"]] == [60, 60]
    keys = KEYS | ({"corrected_lr_fair_crps", "corrected_lr_plain_crps", "input_lr_mae"} if mode == "full" else set())
    for scores in (r["aggregate"], *r["per_frame"]):
        assert keys <= set(scores)
        # random weights give wild but finite rain; correlation may be NaN only for a constant field
        assert all(math.isfinite(scores[k]) for k in keys - {"ens_mean_corr", "bilinear_corr"})
        assert scores["member_min_mm_h"] >= 0
    assert r["beats_bilinear"] is (r["aggregate"]["plain_crps"] < r["aggregate"]["bilinear_mae"])
    assert r["aggregate"]["fair_crps"] <= r["aggregate"]["plain_crps"]   # the plain one is biased high
    n = len(r["psd"]["wavelength_km"])
    assert n == 30 and all(len(r["psd"][k]) == n for k in ("truth", "members", "bilinear"))
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["aggregate"]["bilinear_mae"] == pytest.approx(r["aggregate"]["bilinear_mae"])
    assert (out / "validate.png").stat().st_size > 10_000
    # Same seed, same numbers (noise is a pure function of seed, member, stage, step, pixel).
    again = run_validate(tiny_bundle, shared_data, frames=(0,), members=2, steps=2, seed=3, stages=stages,
                     backend="torch", device="cpu", crop=60)
    assert again["per_frame"][0]["fair_crps"] == pytest.approx(r["per_frame"][0]["fair_crps"], rel=1e-6)


@pytest.mark.data
def test_validate_finds_nan_free_windows_in_fmi(tiny_bundle, shared_data):
    r = run_validate(tiny_bundle, shared_data, source="fmi/fmi_20160928", frames=(-1,), members=2, steps=2,
                 backend="torch", device="cpu", crop=50)
    assert r["windows"][0]["frame"] == 19 and math.isfinite(r["aggregate"]["fair_crps"])


@pytest.mark.data
def test_validate_rejects_bad_arguments(tiny_bundle, shared_data):
    with pytest.raises(ValueError, match="--stages must be a comma list"):
        run_validate(tiny_bundle, shared_data, stages="bogus")
    with pytest.raises(ValueError, match="--stages must include downscaling"):
        run_validate(tiny_bundle, shared_data, stages="correction")
    with pytest.raises(ValueError, match="--frames 99 is out of range"):
        run_validate(tiny_bundle, shared_data, frames=(99,), backend="torch", device="cpu")
    with pytest.raises(ValueError, match=r"--members must be in \[2, 10000\], got 1"):
        run_validate(tiny_bundle, shared_data, members=1)
    with pytest.raises(ValueError, match="--crop must be >= 40"):
        run_validate(tiny_bundle, shared_data, crop=20, backend="torch", device="cpu")


# ---------------------------------------------------------------------------------------------- skill
@pytest.mark.data
@pytest.mark.slow
def test_shipped_bundle_has_skill_on_held_out_radar(shipped_bundle, shared_data):
    """Skill regression on mrms/region_3 (held out of training): the ensemble must beat interpolation.
    Ceilings, as pysteps' tests: CRPS below bilinear's MAE (a deterministic forecast's CRPS is its MAE),
    calibrated spread within a factor 3, rain never negative, and the 2-20 km power nearer the radar's
    than bilinear's (compared as |log ratio|: a factor 2 too much and too little are equally wrong)."""
    r = run_validate(shipped_bundle, shared_data, source="mrms/region_3", frames=(0, 35), members=8, steps=8,
                 seed=0, stages="downscaling", backend="auto", device="cpu", crop=200)
    a = r["aggregate"]
    assert a["plain_crps"] < a["bilinear_mae"], a
    assert r["beats_bilinear"]
    assert 0.3 < a["spread_skill"] < 3.0, a
    assert a["member_min_mm_h"] >= 0
    assert abs(math.log(a["psd_ratio_members"])) < abs(math.log(a["psd_ratio_bilinear"])), a
