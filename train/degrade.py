"""Satellite-error model: coarsened radar (10 km, mm/h) -> IMERG-like input for the correction stage.

No time-coincident IMERG/MRMS pairs are in reach (shared/data/README.md), so the correction stage is
trained on radar degraded the way passive-microwave/infrared retrievals err: an intensity-dependent
bias, displacement, blur, multiplicative noise and missed light rain, applied in that order and clipped
at 0 mm/h. The error components follow the IMERG validation literature (Tan et al. 2016, J. Hydrometeor.
17; Tian et al. 2009, multiplicative error model); the defaults in `DegradationConfig` are fitted to the
rain statistics of real IMERG fields by `experiments/fit_degradation.py` (see docs/degradation.md).

`degradation_stats` computes the statistics that fit compares (wet fraction, conditional quantiles,
heavy-rain share, lag-1 autocorrelation).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from precipfast.config import WET_MM_H, WIDE_ERROR_PRIOR, DegradationConfig

HEAVY_MM_H = 10.0  # rain above this rate counts as heavy in `degradation_stats`


def degrade(lr_mm_h: torch.Tensor, cfg: DegradationConfig, generator: torch.Generator) -> torch.Tensor:
    """(B, 1, h, w) or (h, w) coarse rain rates (mm/h) -> the same shape, IMERG-like.

    Deterministic for a given generator state (all random numbers are drawn on the CPU from it).
    NaN pixels are treated as dry while degrading and are NaN again in the output."""
    if not torch.is_tensor(lr_mm_h):
        raise TypeError(f"degrade expects a torch.Tensor, got {type(lr_mm_h).__name__}")
    shape = lr_mm_h.shape
    if lr_mm_h.dim() == 2:
        r = lr_mm_h[None, None]
    elif lr_mm_h.dim() == 4 and shape[1] == 1:
        r = lr_mm_h
    else:
        raise ValueError(f"degrade expects a (B, 1, h, w) or (h, w) field, got shape {tuple(shape)}")
    if not r.is_floating_point():
        r = r.float()
    if not cfg.enabled:
        return lr_mm_h.clone()
    nan = torch.isnan(r)
    r = torch.where(nan, torch.zeros_like(r), r).clamp_min(0)
    r = intensity_bias(r, cfg.bias_a, cfg.gamma_exp)
    r = displacement(r, cfg.shift_px, generator)
    r = gaussian_blur(r, cfg.blur_px)
    r = lognormal_noise(r, cfg.noise_std, generator)
    r = missed_light_rain(r, cfg.detect_mm_h, cfg.p_miss, generator)
    r = r.clamp_min(0).masked_fill(nan, math.nan)
    return r.reshape(shape)


def draw_error_model(base: DegradationConfig, generator: torch.Generator,
                     prior: dict = WIDE_ERROR_PRIOR) -> DegradationConfig:
    """`base` with each parameter named in `prior` drawn from its range (bias_a log-uniform, the others
    uniform), one draw of `generator` per parameter in the prior's order."""
    u = torch.rand(len(prior), generator=generator, dtype=torch.float64).tolist()
    drawn = {}
    for (name, (lo, hi)), v in zip(prior.items(), u):
        drawn[name] = math.exp(math.log(lo) + v * (math.log(hi) - math.log(lo))) if name == "bias_a" else lo + v * (hi - lo)
    return dataclasses.replace(base, **drawn)


def margin_px(cfg: DegradationConfig, prior: dict | None = None) -> int:
    """Coarse pixels of context a crop needs around it for the largest displacement and blur it may get."""
    shift = max(cfg.shift_px, *(prior or {}).get("shift_px", (0.0,)))
    blur = max(cfg.blur_px, *(prior or {}).get("blur_px", (0.0,)))
    return math.ceil(3 * shift) + math.ceil(3 * blur) + 1


def intensity_bias(r: torch.Tensor, bias_a: float, gamma_exp: float) -> torch.Tensor:
    """r' = bias_a * r^gamma_exp (mm/h). The literature expects retrievals to saturate in convective cores
    (PMW scattering signal, IR cloud-top temperature): gamma < 1, heavy rain underestimated. The fit to
    mean-pooled radar (docs/degradation.md) gives gamma 1.09 and bias_a 1.13 instead, an overestimate that
    grows with the rate (about 1.45x at 17 mm/h), which undoes the peak loss of the blur and noise."""
    return bias_a * r.pow(gamma_exp)


def displacement(r: torch.Tensor, shift_px: float, generator: torch.Generator) -> torch.Tensor:
    """Shift each sample by (dy, dx) ~ N(0, shift_px^2) coarse pixels. Models IR parallax and the time
    mismatch between PMW overpasses / morphing and the half-hour the product stands for."""
    if shift_px <= 0:
        return r
    return shift_bilinear(r, draw_shift(r.shape[0], shift_px, generator).to(r.device))


def draw_shift(n: int, shift_px: float, generator: torch.Generator) -> torch.Tensor:
    """(n, 2) displacements (dy, dx) ~ N(0, shift_px^2) coarse pixels, float64: `displacement`'s draw, and
    the first draw `degrade` makes (intensity_bias draws nothing), so the shift a seeded degrade applied
    can be drawn again (experiments/oracle.py)."""
    return torch.randn(n, 2, generator=generator, dtype=torch.float64) * shift_px


def shift_bilinear(r: torch.Tensor, dy_dx: torch.Tensor) -> torch.Tensor:
    """Translate (B, 1, h, w) fields by dy_dx (B, 2) pixels (+dy = southward/down the rows, +dx = east):
    out(i, j) = r(i - dy, j - dx), bilinear between pixels, edge values repeated beyond the border."""
    b, _, h, w = r.shape
    dy, dx = dy_dx[:, 0].to(r.dtype), dy_dx[:, 1].to(r.dtype)
    theta = torch.zeros(b, 2, 3, dtype=r.dtype, device=r.device)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    theta[:, 0, 2] = -2 * dx / w   # normalised coordinates span 2 over the width
    theta[:, 1, 2] = -2 * dy / h
    grid = F.affine_grid(theta, list(r.shape), align_corners=False)
    return F.grid_sample(r, grid, mode="bilinear", padding_mode="border", align_corners=False)


def gaussian_blur(r: torch.Tensor, blur_px: float) -> torch.Tensor:
    """Separable Gaussian blur with std blur_px coarse pixels (edges replicated). Models the large PMW
    footprints (5-50 km) and the smoothing of morphing/Kalman interpolation between overpasses."""
    if blur_px <= 0:
        return r
    radius = max(1, math.ceil(3 * blur_px))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / blur_px) ** 2)
    k = (k / k.sum()).to(r.dtype).to(r.device)
    out = F.conv2d(F.pad(r, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))


def lognormal_noise(r: torch.Tensor, noise_std: float, generator: torch.Generator) -> torch.Tensor:
    """r * exp(noise_std * z - noise_std^2 / 2), z ~ N(0, 1) per pixel: mean-preserving multiplicative
    retrieval noise (the random error of satellite rain grows with the rate; Tian et al. 2009)."""
    if noise_std <= 0:
        return r
    z = torch.randn(r.shape, generator=generator, dtype=r.dtype).to(r.device)
    return r * torch.exp(noise_std * z - 0.5 * noise_std ** 2)


def missed_light_rain(r: torch.Tensor, detect_mm_h: float, p_miss: float,
                      generator: torch.Generator) -> torch.Tensor:
    """Zero each raining pixel below detect_mm_h with probability p_miss: PMW sensors over land and IR
    miss light and warm rain (low POD below ~0.5 mm/h)."""
    if p_miss <= 0 or detect_mm_h <= 0:
        return r
    u = torch.rand(r.shape, generator=generator, dtype=r.dtype).to(r.device)
    return r.masked_fill((r < detect_mm_h) & (u < p_miss), 0.0)


# ---------------------------------------------------------------------------------------------------
# Statistics compared by the fit (experiments/fit_degradation.py) and the tests.

def degradation_stats(fields, weights=None) -> dict:
    """Rain statistics of one or more sets of fields (numpy or torch, (h, w) or (T, h, w), mm/h, NaN =
    missing). Each set gets equal total weight (`weights` overrides), so a large source cannot drown a
    small one. Returns wet_fraction (>= 0.1 mm/h), q50/q90/q99_mm_h (quantiles of wet pixels),
    heavy_fraction (share of rain volume from pixels > 10 mm/h) and lag1_autocorr (Pearson correlation of
    log1p(rate) between 4-neighbours, one pixel apart)."""
    sets = [_as_frames(f) for f in (fields if isinstance(fields, (list, tuple)) else [fields])]
    weights = [1.0] * len(sets) if weights is None else list(weights)
    if len(weights) != len(sets):
        raise ValueError(f"got {len(weights)} weights for {len(sets)} field sets")
    vals, wv, a, b, wp = [], [], [], [], []
    for f, wt in zip(sets, weights):
        v = f[np.isfinite(f)]
        if v.size == 0:
            continue
        vals.append(v)
        wv.append(np.full(v.size, wt / v.size))
        la = np.log1p(np.maximum(f, 0))
        pa = [la[:, :, 1:], la[:, 1:, :]]
        pb = [la[:, :, :-1], la[:, :-1, :]]
        for x, y in zip(pa, pb):
            m = np.isfinite(x) & np.isfinite(y)
            a.append(x[m])
            b.append(y[m])
        n_pairs = sum(x.size for x in a[-2:])
        wp.extend(np.full(x.size, wt / max(n_pairs, 1)) for x in a[-2:])
    if not vals:
        raise ValueError("degradation_stats got no valid (finite) pixels")
    v, w = np.concatenate(vals), np.concatenate(wv)
    wet = v >= WET_MM_H
    q = _weighted_quantiles(v[wet], w[wet], [0.5, 0.9, 0.99]) if wet.any() else [math.nan] * 3
    rain = (v * w)[wet].sum()
    return {"wet_fraction": float(w[wet].sum() / w.sum()),
            "q50_mm_h": q[0], "q90_mm_h": q[1], "q99_mm_h": q[2],
            "heavy_fraction": float((v * w)[v > HEAVY_MM_H].sum() / rain) if rain > 0 else math.nan,
            "lag1_autocorr": _weighted_corr(np.concatenate(a), np.concatenate(b), np.concatenate(wp))}


def rain_centroid(field) -> tuple[float, float]:
    """Rain-weighted centre (row, col) of an (h, w) field in pixels; NaN ignored."""
    f = np.nan_to_num(np.asarray(field, dtype=np.float64)).clip(min=0)
    total = f.sum()
    if total <= 0:
        raise ValueError("rain_centroid needs a field with some rain")
    rows, cols = np.indices(f.shape)
    return float((rows * f).sum() / total), float((cols * f).sum() / total)


def _as_frames(f) -> np.ndarray:
    f = f.detach().cpu().numpy() if torch.is_tensor(f) else np.asarray(f)
    f = f.astype(np.float64, copy=False)
    if f.ndim == 2:
        return f[None]
    if f.ndim == 4 and f.shape[1] == 1:
        return f[:, 0]
    if f.ndim != 3:
        raise ValueError(f"fields must be (h, w), (T, h, w) or (B, 1, h, w), got shape {f.shape}")
    return f


def _weighted_quantiles(v: np.ndarray, w: np.ndarray, qs) -> list[float]:
    order = np.argsort(v, kind="stable")
    vs, cw = v[order], np.cumsum(w[order])
    cw /= cw[-1]
    return [float(vs[min(np.searchsorted(cw, q), v.size - 1)]) for q in qs]


def _weighted_corr(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    w = w / w.sum()
    ma, mb = (w * a).sum(), (w * b).sum()
    cov = (w * (a - ma) * (b - mb)).sum()
    var = math.sqrt((w * (a - ma) ** 2).sum() * (w * (b - mb) ** 2).sum())
    return float(cov / var) if var > 0 else math.nan
