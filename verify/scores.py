"""Every score precipfast reports: `precipfast validate`, `precipfast evaluate`, the training loop's
validation and loss, and the held-out experiments all compute their scores with these functions, one name
per score. Lower is better unless stated.

- fair_crps      the fair ensemble CRPS (Ferro 2014), the CRPS everywhere precipfast says "CRPS";
- plain_crps     the plain ensemble CRPS (Gneiting & Raftery 2007), biased high with few members
                 (`precipfast validate` reports it beside the fair one for its conservative beats_bilinear);
- mae, rmse      of a point forecast (the ensemble mean, a baseline); a point forecast's CRPS is its MAE;
- pearson        correlation (higher is better); bias: mean difference and ratio of means;
- spread_skill   spread over the RMSE of the mean with the (E+1)/E finite-ensemble correction (Fortin et
                 al. 2014), 1 for a calibrated ensemble; spread_skill_from_moments is the same score from
                 pooled sums (evaluate's tile-by-tile accumulator). There is no uncorrected variant;
- rank_histogram and rank_histogram_flatness (Hamill 2001; Candille & Talagrand 2005);
- psd_radial and psd_band_ratio: radially averaged power spectra and their ratio to the truth's in a band;
- neighbourhood_mean, fss_terms, fss_sums, fss: the fractions skill score (Roberts & Lean 2008);
- ratio_of_sums  a score pooled over cases over a baseline's, e.g. fair CRPS / MAE of bilinear (below 1
                 beats the baseline); peak_ratio: a peak of the members over the truth's maximum;
- dry_share      how often a field is dry (< 0.1 mm/h) inside a mask.

The baselines themselves (bilinear and nearest upsampling) are in verify/baselines.py.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from precipfast.config import WET_MM_H


def _mean_abs_error(members: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(1/E) sum_k |x_k - y|, pixel-wise: the first term of either ensemble CRPS."""
    return (members - truth.unsqueeze(0)).abs().mean(dim=0)


def _pair_sum(members: torch.Tensor) -> torch.Tensor:
    """sum_{k,l} |x_k - x_l| over all ordered pairs of members, pixel-wise, from the sorted-member identity
    sum_{k,l} |x_k - x_l| = 2 sum_i (2i - E + 1) x_(i) for sorted x, i = 0..E-1: O(E log E), not O(E^2)."""
    e = members.shape[0]
    x = members.sort(dim=0).values
    w = (2 * torch.arange(e, dtype=x.dtype, device=x.device) - e + 1).view(-1, *([1] * (x.ndim - 1)))
    return 2 * (w * x).sum(dim=0)


def fair_crps(members: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Pixel-wise fair CRPS (Ferro 2014, "Fair scores for ensemble forecasts", QJRMS 140:1917-1923, the fair
    CRPS of an ensemble of E members; the adjusted CRPS of Ferro et al. 2008 for an infinite ensemble):

        fair CRPS = (1/E) sum_k |x_k - y| - 1/(2E(E-1)) sum_{k,l} |x_k - x_l|.

    The unbiased estimate of the CRPS of the distribution the members are drawn from; the plain estimate
    (plain_crps) is biased high by E|X - X'|/(2E), which matters with the 4-8 members used here. One member
    has no pair: its score is the point forecast's absolute error. members (E, ...), truth (...); NaN in
    truth propagates. Returns (...)."""
    e = members.shape[0]
    return _mean_abs_error(members, truth) - _pair_sum(members) / max(2 * e * (e - 1), 1)


def plain_crps(members: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Pixel-wise plain ensemble CRPS: the CRPS (Gneiting & Raftery 2007, Eq. 21) of the members' empirical
    distribution,

        plain CRPS = (1/E) sum_k |x_k - y| - 1/(2E^2) sum_{k,l} |x_k - x_l|,

    biased high for a finite ensemble (fair_crps is the unbiased one). members (E, ...), truth (...)."""
    e = members.shape[0]
    return _mean_abs_error(members, truth) - _pair_sum(members) / (2 * e * e)


def nanmean(x: torch.Tensor) -> float:
    return float(x[~torch.isnan(x)].mean()) if (~torch.isnan(x)).any() else float("nan")


def mae(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean absolute error over the pixels where pred - truth is not NaN (a point forecast's CRPS)."""
    return nanmean((pred - truth).abs())


def rmse(pred: torch.Tensor, truth: torch.Tensor) -> float:
    return nanmean((pred - truth) ** 2) ** 0.5


def spread_skill(members: torch.Tensor, truth: torch.Tensor) -> float:
    """Ensemble spread over RMSE of the ensemble mean, with the (E+1)/E finite-ensemble correction
    (Fortin et al. 2014): 1 for a calibrated ensemble. members (E, ...), truth (...)."""
    return spread_skill_from_moments(nanmean(members.var(dim=0, unbiased=True)),
                                     nanmean((members.mean(dim=0) - truth) ** 2), members.shape[0])


def spread_skill_from_moments(member_variance: float, mse: float, members: int) -> float:
    """spread_skill from pooled moments: sqrt(member_variance (E+1)/E) / sqrt(mse) (Fortin et al. 2014,
    Eq. 15), with member_variance the mean unbiased variance of the members and mse the mean squared error
    of their mean over the same pixels. NaN when the mean is exact (mse 0)."""
    rmse_ = math.sqrt(mse)
    return math.sqrt(member_variance * (members + 1) / members) / rmse_ if rmse_ > 0 else float("nan")


def ratio_of_sums(scores, baseline_scores) -> float:
    """A score pooled over cases over a baseline's: sum(scores) / sum(baseline_scores), e.g. the fair CRPS
    over bilinear's MAE (a point forecast's CRPS is its MAE, so below 1 beats the baseline). Sums, not the
    mean of the ratios: a wet case weighs more than a drizzle."""
    return float(np.sum(scores) / np.sum(baseline_scores))


def peak_ratio(peak: float, truth_max: float) -> float:
    """A peak of the members (their maximum or a high percentile) over the truth's maximum (floored at
    1e-6 mm/h): above 1, the members reach intensities the truth never did."""
    return peak / max(truth_max, 1e-6)


def dry_share(field, mask, dry_mm_h: float = WET_MM_H) -> tuple[float, int]:
    """(percent of the pixels of field inside mask below dry_mm_h, number of pixels inside mask); NaN percent
    when the mask is empty. field and mask of one shape, any number of axes (stack fields to pool them)."""
    field, mask = np.asarray(field), np.asarray(mask, bool)
    dry, n = int(np.sum(field[mask] < dry_mm_h)), int(mask.sum())
    return (100.0 * dry / n if n else float("nan")), n


def pearson(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """Pearson correlation over the pixels where both are finite; NaN when either is constant."""
    ok = torch.isfinite(pred) & torch.isfinite(truth)
    a, b = pred[ok].double(), truth[ok].double()
    if a.numel() < 2:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    den = float((a.square().sum() * b.square().sum()).sqrt())
    return float((a * b).sum()) / den if den > 0 else float("nan")


def psd_radial(field, pixel_km: float = 1.0, window: bool = True):
    """Radially averaged power spectral density (RAPSD) of a 2-D field, as pysteps' `rapsd`
    (Pulkkinen et al. 2019) and Ruzanski & Chandrasekar (2011) use it to verify rain at small scales.

    field (H, W) or (..., H, W), NaN-free (crop missing data away first); leading axes are averaged
    (pass the ensemble (E, H, W) to get the mean member spectrum). The field's mean is removed and, with
    `window`, a separable Hann taper scaled to unit mean square stops the non-periodic edges from leaking
    a spurious k^-2 tail into every wavenumber. Power is |FFT|^2 / (H W), so white noise of variance s^2
    has a flat spectrum at s^2 (Parseval). Wavenumbers |k| = hypot(ky, kx) (cycles/km) are binned to the
    nearest multiple of dk = 1 / (max(H, W) pixel_km), from dk to the Nyquist 1 / (2 pixel_km); the
    mean (k = 0) is left out. Returns (wavelength_km, power), both 1-D, wavelength decreasing."""
    f = field.detach().cpu().double().numpy() if torch.is_tensor(field) else np.asarray(field, dtype=np.float64)
    if f.ndim < 2 or min(f.shape[-2:]) < 4:
        raise ValueError(f"psd_radial needs a field of at least 4x4 pixels, got shape {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError(f"psd_radial needs a NaN-free field; {int((~np.isfinite(f)).sum())} of {f.size} values "
                         "are not finite (crop a window inside the radar coverage)")
    if pixel_km <= 0:
        raise ValueError(f"pixel_km must be > 0, got {pixel_km}")
    h, w = f.shape[-2:]
    f = f.reshape(-1, h, w)
    f = f - f.mean(axis=(-2, -1), keepdims=True)
    if window:
        taper = np.outer(np.hanning(h), np.hanning(w))
        f = f * (taper / np.sqrt((taper ** 2).mean()))
    power = (np.abs(np.fft.fft2(f)) ** 2).mean(axis=0) / (h * w)
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(h, d=pixel_km), np.fft.fftfreq(w, d=pixel_km), indexing="ij"))
    dk = 1.0 / (max(h, w) * pixel_km)
    n_bins = max(h, w) // 2
    idx = np.rint(k / dk).astype(np.int64).ravel()
    sums = np.bincount(idx, weights=power.ravel(), minlength=n_bins + 1)[: n_bins + 1]
    counts = np.bincount(idx, minlength=n_bins + 1)[: n_bins + 1]
    bins = np.arange(1, n_bins + 1)
    bins = bins[counts[bins] > 0]
    return 1.0 / (bins * dk), sums[bins] / counts[bins]


def psd_band_ratio(wavelength_km, power, power_ref, band_km=(2.0, 20.0), reduce: str = "gmean") -> float:
    """Geometric mean (reduce="gmean") or median (reduce="median") of power / power_ref over the
    wavelengths inside band_km (inclusive): 1 when a field has the reference's variance at those scales,
    << 1 when it is too smooth (interpolation). Both weigh a factor 2 too much and a factor 2 too little
    alike; the median also ignores a few wavelengths that stand out (a spike from a gridding artefact)."""
    if reduce not in ("gmean", "median"):
        raise ValueError(f"reduce must be 'gmean' or 'median', got {reduce!r}")
    wl = np.asarray(wavelength_km, dtype=np.float64)
    lo, hi = band_km
    sel = (wl >= lo - 1e-9) & (wl <= hi + 1e-9)
    if not sel.any():
        raise ValueError(f"no wavelength in band {band_km} km; the spectrum spans {wl.min():g}-{wl.max():g} km")
    r = np.asarray(power, dtype=np.float64)[sel] / np.asarray(power_ref, dtype=np.float64)[sel]
    if reduce == "median":
        return float(np.median(r))
    return float(np.exp(np.mean(np.log(np.maximum(r, 1e-300)))))


# ---------------------------------------------------------------------------- bias, rank histogram, FSS
def _as_np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def bias(pred, truth) -> tuple[float, float]:
    """(mean difference pred - truth, ratio of means pred / truth) over pixels where both are finite.
    The ratio is the multiplicative bias of a rain field (1 = unbiased); NaN when the truth's mean is 0."""
    p, y = _as_np(pred).astype(np.float64), _as_np(truth).astype(np.float64)
    ok = np.isfinite(p) & np.isfinite(y)
    if not ok.any():
        return float("nan"), float("nan")
    sp, sy = p[ok].sum(), y[ok].sum()
    return float((sp - sy) / ok.sum()), float(sp / sy) if sy != 0 else float("nan")


def rank_histogram(members, truth, rng=None) -> np.ndarray:
    """Counts of the truth's rank among E members (Talagrand diagram; Hamill 2001), (E + 1,) int64, over
    pixels where the truth and every member are finite. members (E, ...), truth (...).

    Ties (rain-free pixels, where members and truth are all 0 mm/h) are split at random, as Hamill (2001,
    Sec. 3c) recommends: the rank is #(x_k < y) + U{0 .. #(x_k == y)}; otherwise a dry truth would always
    rank first and a perfect ensemble would look under-dispersive. rng: numpy Generator or seed (default 0,
    so the histogram is reproducible)."""
    x, y = _as_np(members), _as_np(truth)
    if x.shape[1:] != y.shape:
        raise ValueError(f"members {x.shape} must be (E, *truth.shape) with truth {y.shape}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0 if rng is None else rng)
    e = x.shape[0]
    ok = np.isfinite(y) & np.isfinite(x).all(axis=0)
    below, ties = np.zeros(int(ok.sum()), np.int64), np.zeros(int(ok.sum()), np.int64)
    yv = y[ok]
    for k in range(e):  # one member at a time: memory stays one field
        xk = x[k][ok]
        below += xk < yv
        ties += xk == yv
    rank = below + np.floor(rng.random(yv.size) * (ties + 1)).astype(np.int64)
    return np.bincount(rank, minlength=e + 1).astype(np.int64)


def rank_histogram_flatness(counts) -> dict:
    """Flatness of a rank histogram (E + 1 bins):
    delta: Candille & Talagrand (2005) sum_i (s_i - N/(E+1))^2 / (N E/(E+1)); its expectation is 1 for
      independent samples of a reliable ensemble and it grows with N for an unreliable one (spatially
      correlated pixels inflate it too, so compare it between forecasts rather than with 1).
    reliability_index: Delle Monache et al. (2006) sum_i |s_i / N - 1/(E+1)|, 0 for a flat histogram,
      2 E/(E+1) at most (every rank in one bin); independent of N."""
    s = np.asarray(counts, dtype=np.float64)
    n, bins = s.sum(), s.size
    if n == 0 or bins < 2:
        return {"delta": float("nan"), "reliability_index": float("nan")}
    expect = n / bins
    return {"delta": float(((s - expect) ** 2).sum() / (n * (bins - 1) / bins)),
            "reliability_index": float(np.abs(s / n - 1.0 / bins).sum())}


def _box_sum(a: np.ndarray, r: int, axis: int) -> np.ndarray:
    """Sum over the window [i - r, i + r] along `axis`, cut at the edges, from one cumulative sum: the
    1-D integral image (Crow 1984); two passes make the separable 2-D box sum. Slices only, no gathers."""
    a = np.moveaxis(a, axis, 0)
    n = a.shape[0]
    c = np.zeros((n + 1,) + a.shape[1:])
    np.cumsum(a, axis=0, out=c[1:])
    q = max(n - r, 0)                   # rows whose window ends inside: i + r + 1 <= n
    out = np.empty_like(c[1:])
    out[:q] = c[r + 1:r + 1 + q]
    out[q:] = c[n]
    if r < n:                           # rows whose window starts inside: i - r >= 0
        out[r:] -= c[:n - r]
    return np.moveaxis(out, 0, axis)


def box_sum(a, size: int) -> np.ndarray:
    """Sum of a (H, W) over the size x size window centred on each pixel, cut at the edges (size odd)."""
    r = int(size) // 2
    return _box_sum(_box_sum(np.asarray(a, np.float64), r, 0), r, 1)


def neighbourhood_mean(field, size: int, valid=None, count=None) -> np.ndarray:
    """Mean of `field` (H, W) over the size x size window centred on each pixel, from integral images
    (summed-area tables, Crow 1984): O(HW) whatever the size. NaN-aware: only pixels that are finite and
    `valid` count, windows are cut at the edges, and a window with no such pixel gives NaN. size is odd.
    count: box_sum(valid, size), precomputed by a caller that averages many fields over one mask (each
    field must then be finite wherever valid)."""
    if int(size) != size or size < 1 or size % 2 == 0:
        raise ValueError(f"neighbourhood size must be an odd positive number of pixels, got {size}")
    f = _as_np(field).astype(np.float64)
    if f.ndim != 2:
        raise ValueError(f"neighbourhood_mean needs a 2-D field (H, W), got shape {f.shape}")
    ok = np.isfinite(f) if valid is None else (np.isfinite(f) & _as_np(valid).astype(bool))
    if count is None:
        count = box_sum(ok, size)
    elif valid is None or not np.array_equal(ok, _as_np(valid).astype(bool)):
        raise ValueError("a precomputed count needs `valid`, and the field finite wherever valid")
    total = box_sum(np.where(ok, f, 0.0), size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0.5, total / np.maximum(count, 1.0), np.nan)


def fss_terms(forecast_fraction, truth, threshold: float, size: int, valid=None) -> tuple[float, float]:
    """Sums behind the fractions skill score (Roberts & Lean 2008, Eq. 5-7) of one field:
    (sum (P_f - P_o)^2, sum P_f^2 + P_o^2) over the valid pixels. Pool them over fields (times) and take
    FSS = 1 - first / second. forecast_fraction (H, W): the binary forecast (field >= threshold, as float)
    or, for an ensemble, the fraction of members >= threshold (the neighbourhood ensemble probability of
    Schwartz et al. 2010); NaN = missing. truth (H, W) mm/h is thresholded here (>= threshold)."""
    y = _as_np(truth).astype(np.float64)
    p = _as_np(forecast_fraction).astype(np.float64)
    ok = np.isfinite(y) & np.isfinite(p)
    if valid is not None:
        ok &= _as_np(valid).astype(bool)
    p_o = neighbourhood_mean((y >= threshold).astype(np.float64), size, ok)
    return fss_sums(neighbourhood_mean(p, size, ok), p_o, ok)


def fss_sums(p_f, p_o, valid) -> tuple[float, float]:
    """(sum (P_f - P_o)^2, sum P_f^2 + P_o^2) over `valid` of neighbourhood fractions already computed
    (neighbourhood_mean with the same `valid`): the MSE and reference MSE of Roberts & Lean (2008) times
    the number of pixels. Lets a caller share the truth's fractions P_o among several forecasts."""
    ok = np.asarray(valid, bool)
    d, pf, po = (p_f - p_o)[ok], p_f[ok], p_o[ok]
    return float((d * d).sum()), float((pf * pf).sum() + (po * po).sum())


def fss(forecast, truth, threshold: float, size: int, valid=None) -> float:
    """Fractions skill score (Roberts & Lean 2008) of a deterministic field (H, W) or an ensemble (E, H, W)
    (fractions of members, Schwartz et al. 2010) against truth (H, W) mm/h: 1 = perfect at this scale,
    0 = no skill; NaN when neither field exceeds the threshold anywhere (the score is undefined)."""
    f = _as_np(forecast).astype(np.float64)
    if f.ndim == 3:
        frac = (f >= threshold).mean(axis=0)
        frac[~np.isfinite(f).all(axis=0)] = np.nan
    else:
        frac = np.where(np.isfinite(f), (f >= threshold).astype(np.float64), np.nan)
    num, den = fss_terms(frac, truth, threshold, size, valid)
    return 1.0 - num / den if den > 0 else float("nan")
