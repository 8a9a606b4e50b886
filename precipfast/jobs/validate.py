"""Verification of the ensemble on real radar the model never saw (MISSION.md "What good looks like: Skill").

`precipfast validate` samples held-out radar days the model never trained on, through the runtime, and
scores them; `precipfast evaluate` (verify/evaluate.py) samples nothing and scores an ensemble file the user
sampled against the user's own truth; the training loop's validation (train/loop.py) scores the EMA
weights' fair CRPS on the held-out day every val_every iterations.

Truth is 1 km radar from a held-out source (mrms/region_3 is the training's validation region; the last
frames of the FMI/BoM sources are validation too), cut to a NaN-free window whose edge is a multiple of
the bundle's scale factor. The input is that truth coarsened with the bundle's pooling; with the
correction stage among `--stages` it is also degraded with the satellite-error model of train/degrade.py
and both stages run, with `--stages downscaling` the fine stage runs alone on the clean coarse field. Scores follow pySTEPS' verification (Pulkkinen et
al. 2019, pysteps.verification), all from verify/scores.py: the fair CRPS (Ferro 2014, key "fair_crps") and
the plain CRPS ("plain_crps"), ensemble-mean MAE/RMSE/Pearson, spread/skill with the (E+1)/E correction
(Fortin et al. 2014), and the radially averaged power spectrum (RAPSD) at 2-20 km, against the baselines of
verify/baselines.py: bilinear (and nearest) upsampling of the same coarse input, and bilinear of the clean
mean-pooled truth. The ensemble has skill when its CRPS is below bilinear's MAE (a deterministic forecast's
CRPS is its MAE) and its spectrum stays near the radar's where interpolation loses it; "beats_bilinear"
tests the plain CRPS, the conservative choice since it is biased high.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from precipfast.config import WET_MM_H, DegradationConfig
from precipfast.grid import coarsen
from precipfast.jobs.quicklook import save_figure
from precipfast.noise import time_seed
from precipfast.options import ValidateOptions
from precipfast.runtime.sampling.pipeline import Pipeline
from precipfast.train.degrade import degrade
from precipfast.train.sources import load_source
from precipfast.verify.baselines import bilinear, bilinear_meanpool, nearest
from precipfast.verify.scores import (
    fair_crps,
    mae,
    nanmean,
    pearson,
    plain_crps,
    psd_band_ratio,
    psd_radial,
    rmse,
    spread_skill,
)

BAND_KM = (2.0, 20.0)   # scales interpolation cannot recover and the ensemble must (MISSION.md)


def validate(opts: ValidateOptions = ValidateOptions(), *, degradation: DegradationConfig | None = None,
             progress: Callable[[str], None] | None = None) -> dict:
    """Verify the bundle's ensemble on `opts.frames` of radar `opts.source`; see the module docstring.

    opts.crop: window edge in 1 km pixels (rounded down to a multiple of the scale factor); each frame uses
    its wettest NaN-free window of that size. None = the whole frame, or, where it has missing data, the
    largest NaN-free square. Frame t is sampled with `noise.time_seed(seed, t)`. Returns per-frame and
    aggregate scores (mm/h), the mean spectra and "beats_bilinear" (aggregate plain CRPS < bilinear MAE); with
    opts.out, also writes metrics.json and validate.png there."""

    say = progress or (lambda msg: None)
    t_start = time.perf_counter()
    source, members, seed = opts.source, opts.members, opts.seed
    field = load_source(opts.data, source, None)  # native frames: --frames index the source's own scans
    frame_ids = _frame_ids(opts.frames, field.shape[0], source)
    pipe = Pipeline.from_options(opts.sample_options())
    if "downscaling" not in pipe.stages:
        raise ValueError(f"bundle {pipe.bundle.path} has no downscaling stage; validate scores the 1 km field")
    full = "correction" in pipe.stages
    f, pooling = pipe.scale_factor, pipe.bundle.manifest["pooling"]
    deg_cfg = degradation or DegradationConfig()
    size = _window_size([field[t] for t in frame_ids], opts.crop, f)

    truth, lr_in, lr_clean, windows, out, lr_corr = [], [], [], [], [], []
    t_sample = 0.0
    for t in frame_ids:
        (r0, c0), hr = _wettest_window(field[t], size)
        lr = coarsen(hr, f, pooling)
        x_in = lr
        if full:  # the satellite-error model, a fixed generator per (seed, frame)
            gen = torch.Generator().manual_seed(seed * 1_000_003 + t)
            x_in = degrade(torch.from_numpy(lr), deg_cfg, gen).numpy()
        say(f"validate: {source} frame {t}, window ({r0}, {c0}) {size}x{size} km, {members} members")
        t0 = time.perf_counter()
        res = pipe.sample_field(x_in, members, opts.steps, time_seed(seed, t))
        t_sample += time.perf_counter() - t0
        truth.append(hr)
        lr_in.append(x_in)
        lr_clean.append(lr)
        out.append(res["precip"])
        lr_corr.append(res["corrected_lr"])
        windows.append({"frame": t, "row0": r0, "col0": c0, "size_px": size})

    y = torch.from_numpy(np.stack(truth))                                   # (T, H, W)
    ens = torch.from_numpy(np.stack(out, axis=1))                           # (E, T, H, W)
    lr_t = torch.from_numpy(np.stack(lr_in))[:, None]                       # (T, 1, h, w)
    bil = bilinear(lr_t[:, 0], f)                                           # mm/h, as a user would interpolate
    near = nearest(lr_t[:, 0], f)
    # the stronger reference: interpolating the clean areal mean (what mean pooling would have given)
    areal = bilinear_meanpool(y, f)
    corr = torch.from_numpy(np.stack(lr_corr, axis=1))                      # (E, T, h, w)
    lr_y = torch.from_numpy(np.stack(lr_clean))                             # (T, h, w) coarse truth
    per_frame = [dict(frame=t, **_scores(ens[:, k], y[k], bil[k], near[k], areal[k],
                                         (corr[:, k], lr_y[k], lr_t[k, 0]) if full else None))
                 for k, t in enumerate(frame_ids)]
    aggregate = _scores(ens, y, bil, near, areal, (corr, lr_y, lr_t[:, 0]) if full else None)
    wl, p_truth = psd_radial(y)
    spectra = {"wavelength_km": wl.tolist(), "truth": p_truth.tolist(), "members": psd_radial(ens)[1].tolist(),
               "bilinear": psd_radial(bil)[1].tolist()}
    result = {
        "bundle": pipe.bundle.name, "bundle_path": str(pipe.bundle.path), "bundle_sha256": pipe.bundle.sha256,
        "source": source, "frames": frame_ids, "stages": list(pipe.stages), "members": members,
        "steps": opts.steps, "seed": seed,
        "backend": pipe.backend_name, "device": str(pipe.device), "pooling": pooling, "scale_factor": f,
        "crop_px": size, "band_km": list(BAND_KM), "windows": windows,
        "degradation": _asdict(deg_cfg) if full else None,
        "aggregate": aggregate, "per_frame": per_frame, "psd": spectra,
        "beats_bilinear": bool(aggregate["plain_crps"] < aggregate["bilinear_mae"]),
        "seconds": {"sampling": round(t_sample, 3), "total": round(time.perf_counter() - t_start, 3)},
    }
    if opts.out is not None:
        out_path = Path(opts.out)
        out_path.mkdir(parents=True, exist_ok=True)
        k = int(torch.argmax(y.mean(dim=(-2, -1))))  # plot the wettest frame
        plot_validation(out_path / "validate.png", y[k].numpy(), lr_t[k, 0].numpy(), bil[k].numpy(),
                        ens[:, k].numpy(), spectra, title=f"{pipe.bundle.name}: {source} frame {frame_ids[k]}, "
                        f"{','.join(pipe.stages)}, {members} members, fair CRPS {per_frame[k]['fair_crps']:.3f} "
                        f"(plain {per_frame[k]['plain_crps']:.3f}) vs bilinear MAE "
                        f"{per_frame[k]['bilinear_mae']:.3f} mm/h")
        result["seconds"]["total"] = round(time.perf_counter() - t_start, 3)
        (out_path / "metrics.json").write_text(json.dumps(_json_safe(result), indent=2) + "\n")
    return result


def _scores(ens: torch.Tensor, y: torch.Tensor, bil: torch.Tensor, near: torch.Tensor, areal: torch.Tensor,
            extra=None) -> dict:
    """Scores (mm/h) of members ens (E, ...) against truth y (...); bil/near upsample the model's input,
    areal the clean mean-pooled truth (...): the baselines. "fair_crps" is the fair CRPS (Ferro 2014), the
    CRPS as everywhere in precipfast; "plain_crps" is the plain one, biased high for few members, so
    comparing it with a baseline's MAE (beats_bilinear) is conservative.
    extra = (corrected_lr (E, ...), clean coarse truth, degraded input) scores the correction stage."""
    mean = ens.mean(dim=0)
    _, p_y = psd_radial(y)
    wl, p_e = psd_radial(ens)
    _, p_b = psd_radial(bil)
    s = {"fair_crps": nanmean(fair_crps(ens, y)), "plain_crps": nanmean(plain_crps(ens, y)),
         "ens_mean_mae": mae(mean, y), "ens_mean_rmse": rmse(mean, y), "ens_mean_corr": pearson(mean, y),
         "spread_skill": spread_skill(ens, y),
         "bilinear_mae": mae(bil, y), "bilinear_rmse": rmse(bil, y), "bilinear_corr": pearson(bil, y),
         "nearest_mae": mae(near, y), "nearest_rmse": rmse(near, y),
         "bilinear_meanpool_mae": mae(areal, y), "bilinear_meanpool_rmse": rmse(areal, y),
         "member_min_mm_h": float(ens[torch.isfinite(ens)].min()),
         "truth_mean_mm_h": nanmean(y), "ens_mean_mm_h": nanmean(mean), "bilinear_mean_mm_h": nanmean(bil),
         "truth_wet_fraction": float((y >= WET_MM_H).double().mean()),
         "psd_ratio_members": psd_band_ratio(wl, p_e, p_y, BAND_KM),
         "psd_ratio_bilinear": psd_band_ratio(wl, p_b, p_y, BAND_KM)}
    if extra is not None:
        corr, lr_truth, lr_in = extra
        s.update({"corrected_lr_fair_crps": nanmean(fair_crps(corr, lr_truth)),
                  "corrected_lr_plain_crps": nanmean(plain_crps(corr, lr_truth)),
                  "corrected_lr_mean_mae": mae(corr.mean(dim=0), lr_truth), "input_lr_mae": mae(lr_in, lr_truth)})
    return s


def _frame_ids(frames: Sequence[int], n: int, source: str) -> list[int]:
    if isinstance(frames, int):
        frames = [frames]
    ids = []
    for t in frames:
        if not -n <= int(t) < n:
            raise ValueError(f"--frames {t} is out of range for {source}, which has {n} frames (0..{n - 1})")
        ids.append(int(t) % n)
    if not ids:
        raise ValueError("frames must name at least one frame")
    return ids


def _window_size(fields: list[np.ndarray], crop: int | None, factor: int) -> int:
    """Edge of the square verification window: crop rounded down to the factor, else the largest one that
    fits NaN-free in every frame (capped by the frame)."""
    h, w = fields[0].shape
    cap = min(h, w) // factor * factor
    if crop is not None:
        size = int(crop) // factor * factor
        if size < 4 * factor:
            raise ValueError(f"--crop must be >= {4 * factor} px (4 coarse pixels), got {crop}")
        if size > cap:
            raise ValueError(f"--crop {crop} px is larger than the frame ({h}x{w}); at most {cap}")
        if not all(_nan_free_origins(fl, size).size for fl in fields):
            raise ValueError(f"no NaN-free {size}x{size} window in some frame; choose a smaller --crop")
        return size
    if all(np.isfinite(fl[:h // factor * factor, :w // factor * factor]).all() for fl in fields):
        return cap
    lo, hi = 0, cap // factor  # in coarse pixels: largest n with a NaN-free (n f)^2 window in every frame
    while lo < hi:
        mid = (lo + hi + 1) // 2
        ok = all(_nan_free_origins(fl, mid * factor).size for fl in fields)
        lo, hi = (mid, hi) if ok else (lo, mid - 1)
    if lo < 4:
        raise ValueError(f"no NaN-free window of at least {4 * factor} px in every frame")
    return lo * factor


def _wettest_window(frame: np.ndarray, size: int) -> tuple[tuple[int, int], np.ndarray]:
    """The NaN-free size x size window with the largest wet fraction (first one on ties)."""
    origins = _nan_free_origins(frame, size)
    if origins.size == 0:
        raise ValueError(f"no NaN-free {size}x{size} window in a {frame.shape} frame")
    wet = _window_sums(np.nan_to_num(frame) >= WET_MM_H, size).ravel()
    best = origins[int(np.argmax(wet[origins]))]
    r0, c0 = divmod(int(best), frame.shape[1] - size + 1)
    return (r0, c0), np.ascontiguousarray(frame[r0:r0 + size, c0:c0 + size], dtype=np.float32)


def _nan_free_origins(frame: np.ndarray, size: int) -> np.ndarray:
    """Flat indices (over the (H - size + 1, W - size + 1) origin grid) of NaN-free windows."""
    if size > min(frame.shape):
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(_window_sums(~np.isfinite(frame), size).ravel() == 0)


def _window_sums(mask: np.ndarray, size: int) -> np.ndarray:
    ii = np.pad(np.cumsum(np.cumsum(mask, 0, dtype=np.int64), 1), ((1, 0), (1, 0)))
    return ii[size:, size:] - ii[:-size, size:] - ii[size:, :-size] + ii[:-size, :-size]


def summary(result: dict) -> dict:
    """The result without the spectra arrays (metrics.json keeps them), strict-JSON safe: for printing."""
    return _json_safe({k: v for k, v in result.items() if k != "psd"})


def _asdict(cfg) -> dict:
    import dataclasses
    return dataclasses.asdict(cfg)


def _json_safe(x):
    """NaN/inf -> null so metrics.json is strict JSON."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def plot_validation(path, truth: np.ndarray, lr: np.ndarray, bilinear: np.ndarray, members: np.ndarray,
                    spectra: dict, title: str = "") -> Path:
    """PNG: truth, coarse input, bilinear, two members, ensemble mean, ensemble std (all (H, W) mm/h but
    lr (h, w)) and the RAPSD of truth, mean member and bilinear (log-log, the 2-20 km band shaded)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    from matplotlib.colors import LogNorm

    cmap = plt.get_cmap("turbo").with_extremes(under="white", bad="lightgrey")
    norm = LogNorm(vmin=0.1, vmax=100)
    h, w = truth.shape
    ext = (0, w, h, 0)  # km; the coarse input spans the same area
    panels = [("radar truth (1 km)", truth), ("coarse input (10 km)", lr), ("bilinear (1 km)", bilinear),
              ("member 0", members[0]), ("member 1", members[min(1, len(members) - 1)]),
              ("ensemble mean", members.mean(axis=0))]
    fig, axes = plt.subplots(2, 4, figsize=(18, 8.5), constrained_layout=True)
    rain_axes = axes[:, :3].ravel()  # rows: truth, input, bilinear / member 0, member 1, mean
    for ax, (name, fl) in zip(rain_axes, panels):
        im = ax.imshow(np.where(fl < 0.1, 0.05, fl), cmap=cmap, norm=norm, extent=ext, interpolation="nearest")
        ax.set_title(name, fontsize=10)
    fig.colorbar(im, ax=rain_axes.tolist(), shrink=0.6, label="rain rate (mm/h)")
    ax = axes[0, 3]
    sim = ax.imshow(members.std(axis=0), cmap="magma", extent=ext, interpolation="nearest")
    ax.set_title("ensemble std (mm/h)", fontsize=10)
    fig.colorbar(sim, ax=ax, shrink=0.8)
    ax = axes[1, 3]
    wl = np.asarray(spectra["wavelength_km"])
    for key, style in (("truth", "k-"), ("members", "C3-"), ("bilinear", "C0--")):
        ax.loglog(wl, spectra[key], style, label="mean member" if key == "members" else key)
    ax.axvspan(*BAND_KM, color="0.9", zorder=0, label=f"{BAND_KM[0]:g}-{BAND_KM[1]:g} km")
    ticks = [t for t in (2, 5, 10, 20, 50, 100, 200, 500) if wl.min() <= t <= wl.max()]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.invert_xaxis()
    ax.set_xlabel("wavelength (km)")
    ax.set_ylabel("power (mm/h)$^2$")
    ax.set_title("radially averaged power spectrum", fontsize=10)
    ax.legend(fontsize=8)
    return save_figure(fig, path, title)
