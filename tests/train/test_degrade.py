"""train/degrade.py: each satellite-error component does what its parameter says, deterministically."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from precipfast.config import WIDE_ERROR_PRIOR, DegradationConfig
from precipfast.train.degrade import (
    degradation_stats,
    degrade,
    displacement,
    draw_error_model,
    margin_px,
    rain_centroid,
    shift_bilinear,
)

OFF = DegradationConfig(bias_a=1.0, gamma_exp=1.0, detect_mm_h=0.5, p_miss=0.0, shift_px=0.0, blur_px=0.0,
                        noise_std=0.0)


def only(**kw) -> DegradationConfig:
    return dataclasses.replace(OFF, **kw)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def rain(shape=(4, 1, 48, 48), seed=0):
    """Half the pixels dry, the rest exponential with mean 3 mm/h."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(shape, generator=g)
    return torch.where(u < 0.5, torch.zeros(shape), -3.0 * torch.log(torch.rand(shape, generator=g)))


def blob(h=64, w=64, cy=32.0, cx=30.0, s=3.0):
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                          indexing="ij")
    return 20 * torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * s * s))


def test_all_off_is_identity_and_disabled_is_identity():
    r = rain()
    torch.testing.assert_close(degrade(r, OFF, gen()), r)
    torch.testing.assert_close(degrade(r, DegradationConfig(enabled=False), gen()), r)


def test_bias_only_is_power_law():
    r = rain()
    cfg = only(bias_a=0.7, gamma_exp=0.8)
    torch.testing.assert_close(degrade(r, cfg, gen()), 0.7 * r.pow(0.8))


def test_missed_rain_zeroes_light_pixels_with_probability_p_miss():
    n, p = 40_000, 0.35
    light = torch.rand(n, generator=gen(1)) * 0.45 + 0.01        # 0.01 .. 0.46 mm/h, all below 0.5
    heavy = torch.rand(n, generator=gen(2)) * 10 + 0.5           # never below the threshold
    r = torch.cat([light, heavy]).reshape(1, 1, 400, 200)
    out = degrade(r, only(p_miss=p, detect_mm_h=0.5), gen(3)).flatten()
    zeroed = (out[:n] == 0).double().mean().item()
    assert abs(zeroed - p) < 4 * math.sqrt(p * (1 - p) / n)      # 4 binomial standard errors
    torch.testing.assert_close(out[n:], heavy)                   # heavy rain untouched
    nz = out[:n] != 0
    torch.testing.assert_close(out[:n][nz], light[nz])           # the rest unchanged


def test_noise_only_has_the_configured_log_std_and_keeps_the_mean():
    s = 0.4
    r = torch.full((1, 1, 200, 200), 3.0, dtype=torch.float64)
    out = degrade(r, only(noise_std=s), gen(4))
    log_ratio = torch.log(out / r).flatten()
    n = log_ratio.numel()
    assert abs(log_ratio.std().item() - s) < 4 * s / math.sqrt(2 * n)   # std error of a std estimate
    assert abs((out / r).mean().item() - 1) < 4 * math.sqrt(math.exp(s * s) - 1) / math.sqrt(n)


def test_shift_bilinear_moves_the_centroid_by_the_requested_pixels():
    f = blob()[None, None]
    cy, cx = rain_centroid(f[0, 0])
    out = shift_bilinear(f, torch.tensor([[1.5, -2.25]], dtype=torch.float64))
    ny, nx = rain_centroid(out[0, 0])
    assert abs(ny - cy - 1.5) < 1e-3 and abs(nx - cx + 2.25) < 1e-3
    torch.testing.assert_close(out.sum(), f.sum())


def test_random_shift_has_the_configured_spread():
    b, s = 400, 2.0
    f = blob().expand(b, 1, 64, 64).contiguous()
    out = displacement(f, s, gen(5))
    c0 = np.array(rain_centroid(f[0, 0]))
    d = np.array([rain_centroid(o[0]) for o in out]) - c0
    assert np.all(np.abs(d.mean(0)) < 4 * s / math.sqrt(b))
    assert np.all(np.abs(d.std(0) / s - 1) < 4 / math.sqrt(2 * b))
    torch.testing.assert_close(degrade(f, only(shift_px=s), gen(5)), out)  # degrade draws the same shifts


def test_blur_keeps_the_total_and_lowers_the_peak():
    f = blob(s=1.5)[None, None]
    out = degrade(f, only(blur_px=1.0), gen())
    torch.testing.assert_close(out.sum(), f.sum())
    assert out.max() < 0.7 * f.max()
    cy, cx = rain_centroid(out[0, 0])
    assert abs(cy - 32) < 1e-6 and abs(cx - 30) < 1e-6


def test_same_generator_same_output_and_seed_matters():
    r, cfg = rain(), DegradationConfig()
    a, b, c = degrade(r, cfg, gen(7)), degrade(r, cfg, gen(7)), degrade(r, cfg, gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_shapes_nan_and_sign():
    cfg = DegradationConfig()
    r = rain((1, 1, 30, 40))
    r[0, 0, :3, :5] = math.nan
    out = degrade(r, cfg, gen())
    assert out.shape == r.shape and out.dtype == r.dtype
    assert torch.equal(torch.isnan(out), torch.isnan(r))
    assert (out[~torch.isnan(out)] >= 0).all()
    out2d = degrade(r[0, 0], cfg, gen())
    torch.testing.assert_close(out2d, out[0, 0], equal_nan=True)
    with pytest.raises(ValueError, match=r"\(B, 1, h, w\) or \(h, w\)"):
        degrade(torch.zeros(2, 3, 8, 8), cfg, gen())


def test_degradation_stats_on_a_known_field():
    f = np.zeros((10, 10))
    f[:, :5] = 1.0
    f[0, 0] = 20.0
    f[9, 9] = np.nan
    s = degradation_stats(f)
    assert s["wet_fraction"] == pytest.approx(50 / 99)
    assert s["q50_mm_h"] == 1.0 and s["q99_mm_h"] == 20.0
    assert s["heavy_fraction"] == pytest.approx(20 / 69)
    assert 0.5 < s["lag1_autocorr"] < 1
    # two sets get equal weight, whatever their sizes
    both = degradation_stats([np.ones((4, 4)), np.zeros((1, 40, 40))])
    assert both["wet_fraction"] == pytest.approx(0.5)


def test_error_models_drawn_from_the_wide_prior_stay_in_its_ranges_and_follow_the_generator():
    base = DegradationConfig()
    gen = torch.Generator().manual_seed(3)
    drawn = [draw_error_model(base, gen) for _ in range(400)]
    for name, (lo, hi) in WIDE_ERROR_PRIOR.items():
        vals = np.array([getattr(d, name) for d in drawn])
        assert lo <= vals.min() and vals.max() <= hi, name
        assert vals.max() - vals.min() > 0.8 * (hi - lo), f"{name} does not cover its range"
    bias = np.log([d.bias_a for d in drawn])  # log-uniform: as many draws below 1 as the log range puts there
    below = (0 - np.log(0.6)) / (np.log(1.6) - np.log(0.6))
    assert abs((bias < 0).mean() - below) < 0.08
    assert {d.detect_mm_h for d in drawn} == {base.detect_mm_h}   # what the prior does not name stays the fit's
    again = draw_error_model(base, torch.Generator().manual_seed(3))
    assert again == drawn[0]
    assert margin_px(base) == 9 and margin_px(base, WIDE_ERROR_PRIOR) == 13
