"""Verification of an ensemble file against the user's own truth (`precipfast evaluate ENSEMBLE --truth TRUTH`).

`precipfast evaluate` samples nothing: it scores an ensemble file the user sampled against the user's own
truth; `precipfast validate` (precipfast/jobs/validate.py) samples held-out radar days the model never
trained on and scores them; the training loop's validation (train/loop.py) scores the EMA weights' fair
CRPS on the held-out day every val_every iterations. Every score comes from verify/scores.py.

The ensemble is a file written by `precipfast sample` (read by runtime/files/ensemble_file.py); the truth is a
1 km rain file in any layout the input reader accepts (runtime/files/reader.py). Grids must agree (same shape,
centres within half a pixel; a larger truth is cropped to the ensemble's box first) and times are matched by
timestamp, or by position when either file has none. Every score is computed over the same pixels for every
forecast: truth, all members and all baselines finite. Scores (mm/h), pooled over pixels and times:
  fair_crps       fair ensemble CRPS (Ferro 2014); for a deterministic baseline its MAE (the CRPS of a
                  point forecast, Gneiting & Raftery 2007)
  mae, rmse, corr of the ensemble mean; bias (mean difference) and bias_ratio (ratio of means)
  spread_skill    with the (E+1)/E correction, Fortin et al. (2014): sqrt(mean unbiased member variance
                  (E+1)/E) / RMSE of the mean
  rank histogram  Hamill (2001), ties split at random with a fixed seed; flatness as in scores.py
  psd_ratio_*     median over the band of the radially averaged power spectrum over the truth's (mean
                  member spectrum for the ensemble) in the largest NaN-free square common to all times
  fss             fractions skill score (Roberts & Lean 2008) at 1/5/10 mm/h over 1-25 km squares; for the
                  ensemble the neighbourhood ensemble probability (Schwartz et al. 2010)
Baselines from the same run: bilinear and nearest upsampling of the coarse input (recorded in the ensemble
file's `input_file` attribute, or `input_path`), and bilinear of the truth mean-pooled to the coarse grid
(the best a smooth interpolation can do).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from precipfast.errors import InputFormatError, OutputError
from precipfast.runtime.files.ensemble_file import EnsembleFile, open_ensemble
from precipfast.verify.report import format_table, plot_verification
from precipfast.verify.scores import (
    box_sum,
    fair_crps,
    fss_sums,
    neighbourhood_mean,
    psd_band_ratio,
    psd_radial,
    rank_histogram,
    rank_histogram_flatness,
    spread_skill_from_moments,
)
from precipfast.verify.truth import (
    check_members,
    coarse_grid,
    iso,
    match_times,
    mean_pool,
    read_coarse_input,
    read_truth,
    regrid,
    select_times,
)

__all__ = ["verify", "run", "format_table", "plot_verification", "BASELINES"]

BASELINES = ("bilinear", "nearest", "bilinear_truth_meanpool")
THRESHOLDS_MM_H = (1.0, 5.0, 10.0)
SCALES_KM = (1, 5, 9, 15, 25)
BANDS_KM = {"2_50km": (2.0, 50.0), "2_20km": (2.0, 20.0)}
KM_PER_DEG = 111.195       # mean Earth radius 6371.0 km
TILE = 512                 # pixel-wise scores in tiles matching the output's chunks: bounded memory
RANK_SEED = 0              # random tie-splitting of the rank histogram is reproducible
MIN_PSD_PX = 16            # smallest NaN-free square worth a spectrum
MAP_PX = 1000              # maps in the result are subsampled to at most this many pixels a side


def verify(ensemble_path, truth_path, *, input_path=None, variable: str | None = None,
           truth_variable: str | None = None, times: Sequence[int] | None = None, time_tolerance_s: int = 0,
           pixel_km: float | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """Scores of the ensemble and the baselines against the truth; see the module docstring.

    input_path/variable: the coarse input and its dataset (default: the file and variable recorded in the
    ensemble); truth_variable: the truth's dataset (default: detected like inputs); times: indices into
    the ensemble's time axis (default all); time_tolerance_s: how far apart matching timestamps may be;
    pixel_km: the fine pixel in km for the spectra's wavelengths and the FSS windows (default: the
    geometric mean of the north-south and east-west spacing at the domain's mean latitude, 0.97 km for
    0.01 deg at 40N). Returns a dict that JSON-serialises except "maps" (numpy arrays for the plots)."""
    say = progress or (lambda msg: None)
    notes: list[str] = []
    with open_ensemble(ensemble_path) as ens:
        check_members(ens)
        sel = select_times(ens.n_times, times)
        truth = read_truth(truth_path, truth_variable, ens)
        pairs = match_times(ens.times, ens.n_times, truth.times, truth.precip.shape[0], sel,
                             f"truth '{truth_path}'", time_tolerance_s, notes, allow_missing=True)
        coarse = read_coarse_input(ens, input_path, variable, notes)
        if coarse is not None:
            coarse_pairs = dict(match_times(ens.times, ens.n_times, coarse.times, coarse.precip.shape[0],
                                             [t for t, _ in pairs], f"input '{coarse.path}'", time_tolerance_s,
                                             notes))
        lat_c, lon_c = coarse_grid(ens, coarse)
        factor = max(1, round(abs(lat_c[1] - lat_c[0]) / ens.pixel_deg)) if len(lat_c) > 1 else 1
        px_km = pixel_km or ens.pixel_deg * KM_PER_DEG * math.sqrt(math.cos(math.radians(float(np.mean(ens.lat)))))
        sizes = [max(1, 2 * round((s / px_km - 1) / 2) + 1) for s in SCALES_KM]

        def baselines(t, k):
            y = truth.precip[k]
            out = {"bilinear_truth_meanpool": regrid(mean_pool(y, ens.lat, ens.lon, lat_c, lon_c),
                                                     lat_c, lon_c, ens.lat, ens.lon, "bilinear")}
            if coarse is not None:
                x = coarse.precip[coarse_pairs[t]]
                out["bilinear"] = regrid(x, coarse.lat, coarse.lon, ens.lat, ens.lon, "bilinear")
                out["nearest"] = regrid(x, coarse.lat, coarse.lon, ens.lat, ens.lon, "nearest")
            return {name: out[name] for name in BASELINES if name in out}

        acc = _Accumulator(ens.n_members, [b for b in BASELINES if coarse is not None or "truth" in b],
                           sizes)
        common, maps = None, None
        for t, k in pairs:
            say(f"evaluate: time {ens.label(t)}, {ens.n_members} members")
            base = baselines(t, k)
            ok = acc.add_time(ens, t, truth.precip[k], base)
            common = ok if common is None else common & ok
            if maps is None:
                maps = _maps(truth.precip[k], ens.read(t, 0), acc.last_mean, base, ok)
        if acc.n == 0:
            raise InputFormatError(f"no pixel where the truth '{truth_path}', every member of '{ensemble_path}' "
                                   f"and the baselines are all valid; expected overlapping valid data")
        psd = _spectra(ens, truth, pairs, baselines, common, px_km, notes)
    scores = acc.scores()
    for name, s in scores.items():
        for band, (lo, hi) in BANDS_KM.items():
            s[f"psd_ratio_{band}"] = (psd_band_ratio(psd["wavelength_km"], psd[name], psd["truth"], (lo, hi),
                                                     reduce="median") if psd.get(name) is not None
                                      and _band_has(psd["wavelength_km"], lo, hi) else float("nan"))
    n_total = len(pairs) * ens.lat.size * ens.lon.size
    return {
        "ensemble": str(ensemble_path), "truth": str(truth_path), "truth_variable": truth.variable,
        "input": None if coarse is None else coarse.path, "input_variable": None if coarse is None else coarse.variable,
        "members": ens.n_members, "times": [ens.label(t) for t, _ in pairs],
        "times_iso": None if ens.times is None else [iso(ens.label(t)) for t, _ in pairs],
        "grid": {"shape": [int(ens.lat.size), int(ens.lon.size)], "pixel_deg": float(f"{ens.pixel_deg:.6g}"),
                 "pixel_km": round(px_km, 4), "lat": [float(ens.lat[0]), float(ens.lat[-1])],
                 "lon": [float(ens.lon[0]), float(ens.lon[-1])]},
        "scale_factor": int(factor), "n_pixels": int(acc.n), "valid_fraction": acc.n / n_total,
        "truth_mean_mm_h": acc.truth_mean(), "thresholds_mm_h": list(THRESHOLDS_MM_H),
        "scales_km": list(SCALES_KM), "fss_sizes_px": sizes, "bands_km": {k: list(v) for k, v in BANDS_KM.items()},
        "scores": scores, "rank_histogram": acc.rank_histogram(), "psd": {k: v for k, v in psd.items()},
        "notes": notes, "maps": maps,
    }


def run(ensemble_path, truth_path, *, json_path=None, plots_dir=None, input_path=None, variable=None,
        truth_variable=None, times=None, time_tolerance_s: int = 0, progress=None) -> dict:
    """`precipfast evaluate ENSEMBLE --truth TRUTH [--input IN] [--variable V] [--truth-variable V]
    [--json PATH] [--plots DIR]`: verify, then write the JSON (strict: NaN -> null, without the maps) and
    `verification.png` in plots_dir. Returns the result of verify() with "json"/"plot" paths added."""
    if json_path is not None and not Path(json_path).parent.is_dir():
        raise OutputError(f"--json '{json_path}': directory '{Path(json_path).parent}' does not exist")
    result = verify(ensemble_path, truth_path, input_path=input_path, variable=variable,
                    truth_variable=truth_variable, times=times, time_tolerance_s=time_tolerance_s,
                    progress=progress)
    if plots_dir is not None:
        out = Path(plots_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"--plots '{out}' cannot be created ({e.strerror}); expected a writable directory") from None
        result["plot"] = str(plot_verification(result, out / "verification.png"))
    if json_path is not None:
        result["json"] = str(json_path)
        Path(json_path).write_text(json.dumps(to_json(result), indent=2) + "\n")
    return result


def to_json(result: dict) -> dict:
    """The result as strict JSON: without the maps, NaN/inf as null, numpy values as Python ones."""
    def clean(x):
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items() if k != "maps"}
        if isinstance(x, (list, tuple, np.ndarray)):
            return [clean(v) for v in x]
        if isinstance(x, (np.generic,)):
            x = x.item()
        if isinstance(x, float) and not math.isfinite(x):
            return None
        return x
    return clean(result)


# ---------------------------------------------------------------------------- scores
class _Accumulator:
    """Sums pooled over pixels and times: one deterministic row per forecast (ensemble mean, baselines),
    the ensemble's fair CRPS, variance and rank counts, and the FSS sums per (threshold, scale)."""

    def __init__(self, n_members: int, baselines, sizes):
        self.e, self.sizes, self.n = n_members, sizes, 0
        self.names = ["ensemble", *baselines]
        self.det = {name: np.zeros(8) for name in self.names}  # n, |d|, d^2, p, y, p^2, y^2, p y
        self.fss = {name: np.zeros((len(THRESHOLDS_MM_H), len(sizes), 2)) for name in self.names}
        self.fair_crps = self.var = 0.0
        self.ranks = np.zeros(n_members + 1, np.int64)
        self.rng = np.random.default_rng(RANK_SEED)
        self.last_mean = None

    def _add(self, name, p, y):
        d = p - y
        self.det[name] += [p.size, np.abs(d).sum(), (d * d).sum(), p.sum(), y.sum(), (p * p).sum(),
                           (y * y).sum(), (p * y).sum()]

    def add_time(self, ens: EnsembleFile, t: int, truth, base: dict) -> np.ndarray:
        """Add one time; returns the (H, W) mask of the pixels scored."""
        h, w = truth.shape
        mean = np.full((h, w), np.nan, np.float32)   # float32 fields: a CONUS time is 24.5 M pixels
        prob = np.full((len(THRESHOLDS_MM_H), h, w), np.nan, np.float32)
        ok = np.zeros((h, w), bool)
        for r0 in range(0, h, TILE):
            for c0 in range(0, w, TILE):
                rs, cs = slice(r0, r0 + TILE), slice(c0, c0 + TILE)
                x = ens.read(t, slice(None), rs, cs).astype(np.float64)   # (E, rows, cols)
                y = truth[rs, cs].astype(np.float64)
                m = np.isfinite(y) & np.isfinite(x).all(axis=0)
                for b in base.values():
                    m &= np.isfinite(b[rs, cs])
                ok[rs, cs] = m
                if not m.any():
                    continue
                xm, yv = x[:, m], y[m]
                self.fair_crps += float(fair_crps(torch.from_numpy(xm), torch.from_numpy(yv)).sum())
                mu = xm.mean(axis=0)
                self.var += float(xm.var(axis=0, ddof=1).sum())
                self.ranks += rank_histogram(xm, yv, self.rng)
                self._add("ensemble", mu, yv)
                for name, b in base.items():
                    self._add(name, b[rs, cs][m].astype(np.float64), yv)
                mean[rs, cs][m] = mu
                for k, thr in enumerate(THRESHOLDS_MM_H):
                    prob[k, rs, cs][m] = (xm >= thr).mean(axis=0)
        self.n += int(ok.sum())
        counts = {}  # valid pixels per window, one per size for every forecast and threshold
        for k, thr in enumerate(THRESHOLDS_MM_H):  # fractions of the truth shared by every forecast
            fields = {"ensemble": prob[k], **{n: (b >= thr).astype(np.float64) for n, b in base.items()}}
            obs = (np.nan_to_num(truth) >= thr).astype(np.float64)
            for j, size in enumerate(self.sizes):
                count = counts.setdefault(size, box_sum(ok, size))
                p_o = neighbourhood_mean(obs, size, ok, count)
                for name, fl in fields.items():
                    self.fss[name][k, j] += fss_sums(neighbourhood_mean(np.where(ok, fl, 0.0), size, ok, count),
                                                     p_o, ok)
        self.last_mean = mean
        return ok

    def truth_mean(self) -> float:
        n = self.det["ensemble"][0]
        return float(self.det["ensemble"][4] / n) if n else float("nan")

    def scores(self) -> dict:
        out = {}
        for name in self.names:
            n, s_abs, s_sq, s_p, s_y, s_pp, s_yy, s_py = (float(v) for v in self.det[name])
            if n == 0:
                out[name] = {}
                continue
            cov, v_p, v_y = s_py / n - s_p * s_y / n ** 2, s_pp / n - (s_p / n) ** 2, s_yy / n - (s_y / n) ** 2
            rmse = math.sqrt(s_sq / n)
            s = {"fair_crps": self.fair_crps / n if name == "ensemble" else s_abs / n,  # point: CRPS = MAE
                 "mae": s_abs / n, "rmse": rmse, "bias": (s_p - s_y) / n,
                 "bias_ratio": s_p / s_y if s_y > 0 else float("nan"),
                 "corr": cov / math.sqrt(v_p * v_y) if v_p > 0 and v_y > 0 else float("nan"),
                 "mean_mm_h": s_p / n}
            if name == "ensemble":  # with the (E+1)/E correction: a calibrated ensemble scores 1
                s["spread_skill"] = spread_skill_from_moments(self.var / n, s_sq / n, self.e)
            s["fss"] = {f"{thr:g}mm_h": {f"{km:g}km": (1.0 - float(num / den) if den > 0 else float("nan"))
                                         for km, (num, den) in zip(SCALES_KM, self.fss[name][k])}
                        for k, thr in enumerate(THRESHOLDS_MM_H)}
            out[name] = s
        return out

    def rank_histogram(self) -> dict:
        return {"counts": self.ranks.tolist(), **rank_histogram_flatness(self.ranks), "tie_seed": RANK_SEED}


def _maps(truth, member0, mean, base: dict, ok) -> dict:
    """Fields of the first time for the plot's map row, subsampled to at most MAP_PX a side."""
    s = max(1, -(-max(truth.shape) // MAP_PX))
    name = "bilinear" if "bilinear" in base else "bilinear_truth_meanpool"
    return {"truth": truth[::s, ::s], "member": np.asarray(member0)[::s, ::s], "ensemble_mean": mean[::s, ::s],
            "baseline": base[name][::s, ::s], "baseline_name": name, "stride": s}


def _largest_square(mask, weight):
    """(size, row0, col0) of the largest all-True square of mask, the one with most weight among equals."""
    def sums(a, n):
        ii = np.pad(np.cumsum(np.cumsum(a, 0, dtype=np.float64), 1), ((1, 0), (1, 0)))
        return ii[n:, n:] - ii[:-n, n:] - ii[n:, :-n] + ii[:-n, :-n]
    bad = (~mask).astype(np.float64)
    lo, hi = 0, min(mask.shape)
    while lo < hi:  # a square of n fits => one of n - 1 fits: binary search on n
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if (sums(bad, mid) == 0).any() else (lo, mid - 1)
    if lo == 0:
        return 0, 0, 0
    score = np.where(sums(bad, lo) == 0, sums(weight, lo), -1.0)
    r0, c0 = np.unravel_index(int(np.argmax(score)), score.shape)
    return lo, int(r0), int(c0)


def _band_has(wl, lo, hi) -> bool:
    wl = np.asarray(wl, np.float64)
    return bool(((wl >= lo - 1e-9) & (wl <= hi + 1e-9)).any())


def _spectra(ens: EnsembleFile, truth, pairs, baselines, common, px_km, notes) -> dict:
    """Mean spectra over times in the largest square valid at every time (the wettest one among equals)."""
    wet = (np.nan_to_num(truth.precip[pairs[0][1]]) >= 0.1).astype(np.float64)
    size, r0, c0 = _largest_square(common, wet)
    if size < MIN_PSD_PX:
        notes.append(f"no valid square of at least {MIN_PSD_PX} px common to all times (largest {size} px): "
                     f"no power spectra")
        return {"window": None, "wavelength_km": []}
    if size * px_km < BANDS_KM["2_50km"][1]:
        notes.append(f"the spectra's window is {size * px_km:.0f} km: the 2-50 km band stops at that wavelength")
    rs, cs = slice(r0, r0 + size), slice(c0, c0 + size)
    total: dict = {}

    def add(name, power):
        total[name] = total.get(name, 0.0) + power / len(pairs)
    for t, k in pairs:
        wl, p = psd_radial(truth.precip[k][rs, cs], px_km)
        add("truth", p)
        for name, b in baselines(t, k).items():
            add(name, psd_radial(b[rs, cs], px_km)[1])
        for e in range(ens.n_members):  # one member at a time: memory stays one window
            add("ensemble", psd_radial(ens.read(t, e, rs, cs), px_km)[1] / ens.n_members)
    return {"window": {"row0": r0, "col0": c0, "size_px": size}, "wavelength_km": wl.tolist(),
            **{k: v.tolist() for k, v in total.items()}}
