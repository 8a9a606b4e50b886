"""Verification scores against closed forms."""
import math

import numpy as np
import pytest
import torch

from precipfast.verify.baselines import bilinear, bilinear_meanpool, nearest
from precipfast.verify.scores import (
    bias,
    box_sum,
    dry_share,
    fair_crps,
    fss,
    fss_terms,
    neighbourhood_mean,
    peak_ratio,
    plain_crps,
    psd_band_ratio,
    rank_histogram,
    rank_histogram_flatness,
    ratio_of_sums,
    spread_skill,
    spread_skill_from_moments,
)


def _crps_bruteforce(x, y, fair):
    e = len(x)
    skill = sum(abs(xi - y) for xi in x) / e
    pair = sum(abs(a - b) for a in x for b in x)
    return skill - pair / (2 * e * (e - 1) if fair else 2 * e * e)


def test_crps_matches_definition():
    g = torch.Generator().manual_seed(0)
    members, truth = torch.randn(7, 5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    got_plain, got_fair = plain_crps(members, truth), fair_crps(members, truth)
    for i in range(5):
        for j in range(3):
            x = members[:, i, j].tolist()
            assert math.isclose(float(got_plain[i, j]), _crps_bruteforce(x, float(truth[i, j]), False), rel_tol=1e-12)
            assert math.isclose(float(got_fair[i, j]), _crps_bruteforce(x, float(truth[i, j]), True), rel_tol=1e-12)
    # the two differ by the spread term's normaliser only: fair - plain = (1/(2E^2) - 1/(2E(E-1))) sum|x_k - x_l|
    pairs = (members[:, None] - members[None]).abs().sum((0, 1))
    torch.testing.assert_close(got_fair - got_plain, pairs * (1 / 98 - 1 / 84))


def test_crps_of_point_forecast_is_mae_and_of_gaussian_is_closed_form():
    y = torch.tensor([0.3, -1.0], dtype=torch.float64)
    for crps in (plain_crps, fair_crps):
        assert torch.allclose(crps(torch.full((4, 2), 1.0, dtype=torch.float64), y), (1.0 - y).abs())
    # one member has no pair: the fair CRPS is the point forecast's absolute error
    one = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    assert torch.equal(fair_crps(one, y), (one[0] - y).abs())
    # N(0, 1) forecast of y = 0: CRPS = 2 phi(0) - 1/sqrt(pi) = (sqrt 2 - 1)/sqrt pi (Gneiting & Raftery 2007).
    x = torch.randn(20000, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = (math.sqrt(2) - 1) / math.sqrt(math.pi)
    assert abs(float(fair_crps(x, torch.zeros(1, dtype=torch.float64))) - exact) < 0.01


def test_fair_crps_is_unbiased_where_the_plain_one_is_biased_high():
    """Ferro (2014): over many draws of a 4-member ensemble from the truth's own distribution, the fair CRPS
    averages the distribution's CRPS; the plain one exceeds it by E|X - X'|/(2E) = (2/sqrt(pi))/8."""
    g = torch.Generator().manual_seed(3)
    members = torch.randn(4, 400_000, generator=g, dtype=torch.float64)
    truth = torch.randn(400_000, generator=g, dtype=torch.float64)
    exact = 1 / math.sqrt(math.pi)     # E CRPS(N(0, 1), Y) for Y ~ N(0, 1): E|X - Y| - E|X - X'|/2
    assert float(fair_crps(members, truth).mean()) == pytest.approx(exact, abs=0.01)
    assert float(plain_crps(members, truth).mean()) == pytest.approx(exact + 2 / math.sqrt(math.pi) / 8, abs=0.01)


def test_spread_skill_is_one_for_a_calibrated_ensemble():
    g = torch.Generator().manual_seed(2)
    truth = torch.randn(20000, generator=g)
    members = torch.randn(10, 20000, generator=g)  # truth and members from the same N(0, 1)
    assert abs(spread_skill(members, truth) - 1.0) < 0.03


def test_spread_skill_is_the_same_score_from_pooled_moments():
    """evaluate's tile-by-tile accumulator and spread_skill are one formula, with the (E+1)/E correction."""
    g = torch.Generator().manual_seed(4)
    members, truth = torch.rand(5, 30, 20, generator=g, dtype=torch.float64), torch.rand(30, 20, generator=g,
                                                                                       dtype=torch.float64)
    var, mse = float(members.var(dim=0).mean()), float(((members.mean(0) - truth) ** 2).mean())
    assert spread_skill(members, truth) == pytest.approx(math.sqrt(var * 6 / 5 / mse), rel=1e-12)
    assert spread_skill(members, truth) == pytest.approx(spread_skill_from_moments(var, mse, 5), rel=1e-12)
    assert math.isnan(spread_skill_from_moments(0.5, 0.0, 5))      # an exact mean: the ratio is undefined


def test_pooled_ratios_and_peaks():
    assert ratio_of_sums([1.0, 9.0], [4.0, 1.0]) == 2.0            # sums over sums, not (0.25 + 9) / 2
    assert peak_ratio(30.0, 20.0) == 1.5 and peak_ratio(1e-3, 0.0) == pytest.approx(1e3)


def test_dry_share_pools_stacked_fields():
    field, mask = np.array([[0.0, 0.05, 2.0], [0.1, 3.0, 0.0]]), np.array([[True, True, True], [True, False, False]])
    assert dry_share(field, mask) == (50.0, 4)                      # 0.0 and 0.05 dry; 0.1 is not
    assert dry_share(field[None].repeat(3, 0), mask[None].repeat(3, 0)) == (50.0, 12)
    share, n = dry_share(field, np.zeros_like(mask))
    assert n == 0 and math.isnan(share)


# ---------------------------------------------------------------------------- baselines (verify/baselines.py)
def test_baselines_upsample_coarse_fields_of_any_leading_shape():
    lr = torch.tensor([[0.0, 4.0], [8.0, 0.0]])
    near = nearest(lr, 2)
    assert torch.equal(near, lr.repeat_interleave(2, 0).repeat_interleave(2, 1))
    bil = bilinear(lr[None].expand(3, 2, 2).numpy(), 2)           # numpy in, torch out, leading axes kept
    assert bil.shape == (3, 4, 4) and float(bil.min()) >= 0 and torch.equal(bil[0], bil[2])
    assert float(bil[0, 0, 0]) == 0.0 and float(bil[0, 1, 1]) == pytest.approx(0.5625 * 0 + 0.1875 * 4 + 0.1875 * 8)
    assert bilinear(torch.tensor([[-1.0, 1.0]]), 2).min() == 0     # clipped at 0 mm/h
    truth = torch.rand(2, 6, 8, generator=torch.Generator().manual_seed(0))
    pooled = truth.reshape(2, 3, 2, 4, 2).mean((2, 4))
    assert torch.equal(bilinear_meanpool(truth, 2), bilinear(pooled, 2))


# ---------------------------------------------------------------------------- bias, rank histogram, FSS


def test_bias_is_mean_difference_and_ratio_of_means_over_finite_pixels():
    y = np.array([1.0, 3.0, np.nan, 4.0])
    p = np.array([2.0, 5.0, 7.0, np.nan])
    d, r = bias(p, y)
    assert d == pytest.approx(1.5) and r == pytest.approx(7.0 / 4.0)  # pixels 0 and 1 only
    assert np.isnan(bias(np.ones(3), np.zeros(3))[1])  # ratio undefined on a dry truth


def test_rank_histogram_counts_ranks_and_splits_ties_at_random():
    members = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])  # E = 3, two pixels
    assert rank_histogram(members, np.array([-1.0, 9.0])).tolist() == [1, 0, 0, 1]
    assert rank_histogram(members, np.array([1.0, 4.0])).tolist() == [0, 1, 1, 0]
    # all dry: without randomisation every rank would be 0; with it, each of the E+1 ranks is equally likely
    counts = rank_histogram(np.zeros((4, 10000)), np.zeros(10000), rng=1)
    assert counts.sum() == 10000 and np.abs(counts / 10000 - 0.2).max() < 0.02
    assert rank_histogram(np.zeros((4, 100)), np.zeros(100), rng=5).tolist() == \
        rank_histogram(np.zeros((4, 100)), np.zeros(100), rng=5).tolist()  # fixed seed: reproducible
    nan_truth = np.array([np.nan, 1.0])
    assert rank_histogram(members, nan_truth).sum() == 1


def test_rank_histogram_of_a_calibrated_ensemble_is_flat_and_of_a_narrow_one_is_u_shaped():
    g = np.random.default_rng(3)
    y = g.gamma(0.5, 2.0, 40000)
    flat = rank_histogram_flatness(rank_histogram(g.gamma(0.5, 2.0, (9, 40000)), y))
    assert flat["delta"] < 2.0 and flat["reliability_index"] < 0.03   # E[delta] = 1 for independent pixels
    narrow = rank_histogram(0.2 * g.gamma(0.5, 2.0, (9, 40000)) + 0.8 * y.mean(), y)
    u = rank_histogram_flatness(narrow)
    assert u["delta"] > 100 and u["reliability_index"] > 0.5
    assert narrow[0] + narrow[-1] > 0.5 * narrow.sum()  # too little spread: truth outside the ensemble
    one_bin = rank_histogram_flatness([0, 0, 10, 0])
    assert one_bin["reliability_index"] == pytest.approx(2 * 3 / 4)


def test_neighbourhood_mean_matches_a_direct_window_average_with_nans_and_edges():
    g = np.random.default_rng(4)
    f = g.random((9, 11))
    f[2, 3] = np.nan
    got = neighbourhood_mean(f, 5)
    for i in range(9):
        for j in range(11):
            win = f[max(i - 2, 0):i + 3, max(j - 2, 0):j + 3]
            assert got[i, j] == pytest.approx(np.nanmean(win), rel=1e-12)
    # size 1 with a validity mask: the field itself (to rounding: integral images subtract large sums)
    assert np.allclose(neighbourhood_mean(np.where(np.isnan(f), 0.0, f), 1, np.isfinite(f)), f, rtol=0, atol=1e-12,
                       equal_nan=True)
    assert np.isnan(neighbourhood_mean(np.full((3, 3), np.nan), 3)).all()
    with pytest.raises(ValueError, match="odd"):
        neighbourhood_mean(f, 4)


def test_fss_is_one_for_a_perfect_forecast_and_matches_roberts_lean_for_a_displaced_cell():
    y = np.zeros((40, 40))
    y[10:14, 10:14] = 5.0
    assert fss(y, y, 1.0, 1) == 1.0 and fss(np.stack([y, y, y]), y, 1.0, 9) == 1.0
    moved = np.roll(y, 6, axis=1)  # the same cell 6 px east: no overlap at the grid scale
    assert fss(moved, y, 1.0, 1) == 0.0
    scores = [fss(moved, y, 1.0, n) for n in (1, 5, 9, 15, 25)]
    assert all(a < b for a, b in zip(scores, scores[1:])) and scores[-1] > 0.7  # skill grows with scale
    # hand-computed: at n = 1, FSS = 1 - sum (If - Io)^2 / (sum If^2 + sum Io^2) = 1 - 16/(16 + 16) for a
    # cell moved by 2 px, half of it overlapping
    assert fss(np.roll(y, 2, axis=1), y, 1.0, 1) == pytest.approx(0.5)
    assert np.isnan(fss(y, y, 50.0, 5))  # nothing exceeds 50 mm/h: undefined
    num, den = fss_terms((moved >= 1.0).astype(float), y, 1.0, 1)
    assert (num, den) == (32.0, 32.0)


def test_psd_band_ratio_median_option_keeps_the_default():
    wl, p, ref = np.array([40.0, 20.0, 10.0, 5.0, 2.5]), np.array([1.0, 2.0, 8.0, 1.0, 1.0]), np.ones(5)
    assert psd_band_ratio(wl, p, ref, (2.0, 20.0)) == pytest.approx((2 * 8) ** 0.25)
    assert psd_band_ratio(wl, p, ref, (2.0, 20.0), reduce="median") == pytest.approx(1.5)
    with pytest.raises(ValueError, match="reduce"):
        psd_band_ratio(wl, p, ref, reduce="mean")


def test_neighbourhood_mean_with_a_shared_count_equals_the_plain_one():
    g = np.random.default_rng(6)
    f, valid = g.random((30, 17)), g.random((30, 17)) > 0.2
    count = box_sum(valid, 7)
    assert count[15, 8] == valid[12:19, 5:12].sum() and count[0, 0] == valid[:4, :4].sum()  # edges cut
    assert np.allclose(neighbourhood_mean(f, 7, valid, count), neighbourhood_mean(f, 7, valid), equal_nan=True)
    f[~valid] = np.nan
    with pytest.raises(ValueError, match="precomputed count"):
        neighbourhood_mean(f, 7, np.ones_like(valid), count)
    assert neighbourhood_mean(np.ones((5, 5)), 25)[0, 0] == 1.0  # a window larger than the field
