"""Verification of an ensemble file against the user's own truth (`precipfast evaluate ENSEMBLE --truth TRUTH`).

The ensemble is a file written by `precipfast sample` (runtime/output.py); the truth is a 1 km rain file
in any layout the input reader accepts (runtime/io_h5.py). Grids must agree (same shape, centres within
half a pixel; a larger truth is cropped to the ensemble's box first) and times are matched by timestamp,
or by position when either file has none. Every score is computed over the same pixels for every forecast:
truth, all members and all baselines finite. Scores (mm/h), pooled over pixels and times:
  crps            fair ensemble CRPS (Ferro 2014); for a deterministic baseline its MAE (the CRPS of a
                  point forecast, Gneiting & Raftery 2007)
  mae, rmse, corr of the ensemble mean; bias (mean difference) and bias_ratio (ratio of means)
  spread_skill    Fortin et al. (2014): sqrt(mean unbiased member variance (E+1)/E) / RMSE of the mean
  rank histogram  Hamill (2001), ties split at random with a fixed seed; flatness as in metrics.py
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

import h5py
import numpy as np
import torch

from precipfast.errors import InputFormatError, OutputError
from precipfast.metrics import (crps_ensemble, fss_sums, neighbourhood_mean, psd_band_ratio, psd_radial,
                                rank_histogram, rank_histogram_flatness)
from precipfast.runtime.io_h5 import file_sha256, read_input
from precipfast.runtime.verify_report import format_table, plot_verification

__all__ = ["verify", "run", "format_table", "plot_verification", "BASELINES"]

BASELINES = ("bilinear", "nearest", "bilinear_truth_meanpool")
THRESHOLDS_MM_H = (1.0, 5.0, 10.0)
SCALES_KM = (1, 5, 9, 15, 25)
BANDS_KM = {"2_50km": (2.0, 50.0), "2_20km": (2.0, 20.0)}
KM_PER_DEG = 111.195       # mean Earth radius 6371.0 km
COARSE_DEG = 0.1           # the model's coarse pixel (IMERG), when neither file records the coarse grid
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
    the ensemble's time axis (default all); pixel_km: the fine pixel in km (default from the grid spacing
    and latitude). Returns a dict that JSON-serialises except "maps" (numpy arrays for the plots)."""
    say = progress or (lambda msg: None)
    notes: list[str] = []
    with h5py.File(_check_ensemble_file(ensemble_path), "r") as f:
        ens = _Ensemble(f, ensemble_path)
        sel = _select_times(ens.n_times, times)
        truth = _read_truth(truth_path, truth_variable, ens)
        pairs = _match_times(ens.times, ens.n_times, truth.times, truth.precip.shape[0], sel,
                             f"truth '{truth_path}'", time_tolerance_s, notes, allow_missing=True)
        coarse = _read_coarse_input(ens, input_path, variable, notes)
        if coarse is not None:
            coarse_pairs = dict(_match_times(ens.times, ens.n_times, coarse.times, coarse.precip.shape[0],
                                             [t for t, _ in pairs], f"input '{coarse.path}'", time_tolerance_s,
                                             notes))
        lat_c, lon_c = _coarse_grid(ens, coarse)
        factor = max(1, round(abs(lat_c[1] - lat_c[0]) / ens.pixel_deg)) if len(lat_c) > 1 else 1
        px_km = pixel_km or ens.pixel_deg * KM_PER_DEG * math.sqrt(math.cos(math.radians(float(np.mean(ens.lat)))))
        sizes = [max(1, 2 * round((s / px_km - 1) / 2) + 1) for s in SCALES_KM]

        def baselines(t, k):
            y = truth.precip[k]
            out = {"bilinear_truth_meanpool": regrid(_mean_pool(y, ens.lat, ens.lon, lat_c, lon_c),
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
        if not common.any() and not acc.n:
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
        "grid": {"shape": [int(ens.lat.size), int(ens.lon.size)], "pixel_deg": ens.pixel_deg,
                 "pixel_km": round(px_km, 4), "lat": [float(ens.lat[0]), float(ens.lat[-1])],
                 "lon": [float(ens.lon[0]), float(ens.lon[-1])]},
        "scale_factor": int(factor), "n_pixels": int(acc.n), "valid_fraction": acc.n / n_total,
        "truth_mean_mm_h": acc.truth_mean(), "thresholds_mm_h": list(THRESHOLDS_MM_H),
        "scales_km": list(SCALES_KM), "fss_sizes_px": sizes, "bands_km": {k: list(v) for k, v in BANDS_KM.items()},
        "scores": scores, "rank_histogram": acc.rank_histogram(), "psd": {k: v for k, v in psd.items()},
        "notes": notes, "maps": maps,
    }


def run(ensemble_path, truth_path, *, json_path=None, plots_dir=None, input_path=None, variable=None,
        truth_variable=None, times=None, progress=None) -> dict:
    """`precipfast evaluate ENSEMBLE --truth TRUTH [--input IN] [--variable V] [--truth-variable V]
    [--json PATH] [--plots DIR]`: verify, then write the JSON (strict: NaN -> null, without the maps) and
    `verification.png` in plots_dir. Returns the result of verify() with "json"/"plot" paths added."""
    for p in (json_path,):
        if p is not None and not Path(p).parent.is_dir():
            raise OutputError(f"--json '{p}': directory '{Path(p).parent}' does not exist")
    result = verify(ensemble_path, truth_path, input_path=input_path, variable=variable,
                    truth_variable=truth_variable, times=times, progress=progress)
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


# ---------------------------------------------------------------------------- reading and matching
def _check_ensemble_file(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputFormatError(f"ensemble file '{path}' does not exist; expected the output of `precipfast sample`")
    if not h5py.is_hdf5(path):
        raise InputFormatError(f"ensemble '{path}' is not an HDF5 file; expected the output of `precipfast sample`")
    return path


class _Ensemble:
    """The open ensemble file, north-up: members read tile by tile as (E, rows, cols)."""

    def __init__(self, f: h5py.File, path):
        self.f, self.path = f, str(path)
        ds = f.get("precip")
        need = "precip (time, member, lat, lon) with 1-D lat, lon, time"
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 4:
            got = "no 'precip'" if ds is None else f"'precip' of shape {getattr(ds, 'shape', '?')}"
            raise InputFormatError(f"ensemble '{path}' has {got}; expected {need} (a `precipfast sample` output)")
        coords = {}
        for name, n in (("lat", ds.shape[2]), ("lon", ds.shape[3]), ("time", ds.shape[0])):
            c = f.get(name)
            if not isinstance(c, h5py.Dataset) or c.shape != (n,):
                raise InputFormatError(f"ensemble '{path}': '{name}' is {'missing' if c is None else c.shape}; "
                                       f"expected 1-D of {n} values to match precip {ds.shape} ({need})")
            coords[name] = c[()]
        self.ds, self.n_times, self.n_members = ds, ds.shape[0], ds.shape[1]
        if self.n_members < 2:
            raise InputFormatError(f"ensemble '{path}' has {self.n_members} member; expected >= 2 (CRPS, spread "
                                   f"and the rank histogram need an ensemble)")
        self.flip_lat = bool(coords["lat"][0] < coords["lat"][-1])
        self.flip_lon = bool(coords["lon"][0] > coords["lon"][-1])
        self.lat = np.asarray(coords["lat"][::-1] if self.flip_lat else coords["lat"], np.float64)
        self.lon = np.asarray(coords["lon"][::-1] if self.flip_lon else coords["lon"], np.float64)
        steps = [abs(float(np.diff(c).mean())) for c in (self.lat, self.lon) if c.size > 1]
        self.pixel_deg = float(np.mean(steps)) if steps else 0.01
        units = f["time"].attrs.get("units", b"")
        stamped = "since" in (units.decode() if isinstance(units, bytes) else str(units))
        self.times = np.asarray(coords["time"], np.int64) if stamped else None
        self.lat_lr = f["lat_lr"][()] if isinstance(f.get("lat_lr"), h5py.Dataset) else None
        self.lon_lr = f["lon_lr"][()] if isinstance(f.get("lon_lr"), h5py.Dataset) else None
        self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}

    def label(self, t):
        return int(self.times[t]) if self.times is not None else int(t)

    def read(self, t: int, members=slice(None), rows=slice(None), cols=slice(None)) -> np.ndarray:
        """members of time t in north-up rows/cols (slices of step 1), float32."""
        h, w = self.lat.size, self.lon.size
        r, c = (_mirror(rows, h) if self.flip_lat else rows), (_mirror(cols, w) if self.flip_lon else cols)
        a = self.ds[t, members, r, c]
        return a[..., ::-1 if self.flip_lat else 1, ::-1 if self.flip_lon else 1]

    def describe(self) -> str:
        return _describe(f"ensemble '{self.path}'", self.lat, self.lon)


def _mirror(s: slice, n: int) -> slice:
    lo, hi, _ = s.indices(n)
    return slice(n - hi, n - lo)


def _describe(what, lat, lon) -> str:
    step = abs(float(lat[1] - lat[0])) if lat.size > 1 else float("nan")
    return (f"{what} {lat.size}x{lon.size} px of {step:.4g} deg, lat {lat[0]:.4f}..{lat[-1]:.4f}, "
            f"lon {lon[0]:.4f}..{lon[-1]:.4f}")


def _select_times(n: int, times) -> list[int]:
    if times is None:
        return list(range(n))
    out = []
    for t in ([times] if isinstance(times, int) else times):
        if not -n <= int(t) < n:
            raise InputFormatError(f"time index {t} is out of range: the ensemble has {n} time steps (0..{n - 1})")
        out.append(int(t) % n)
    if not out:
        raise InputFormatError("times must name at least one time step of the ensemble")
    return out


def _read_truth(path, variable, ens: _Ensemble):
    """The truth cropped to the ensemble's box (half a pixel around it), checked against its grid."""
    half = 0.5 * ens.pixel_deg
    box = (max(-90.0, ens.lat.min() - half), min(90.0, ens.lat.max() + half),
           max(-180.0, ens.lon.min() - half), min(180.0, ens.lon.max() + half))
    try:
        truth = read_input(path, bbox=box, variable=variable)
    except InputFormatError as e:
        if "bbox" not in str(e):
            raise
        raise InputFormatError(f"the truth grid does not cover the ensemble grid: {ens.describe()}; "
                               f"truth: {e}") from None
    same = truth.precip.shape[1:] == (ens.lat.size, ens.lon.size)
    if not same or np.abs(truth.lat - ens.lat).max() > half or np.abs(truth.lon - ens.lon).max() > half:
        raise InputFormatError(f"grids differ: {_describe(f'truth {path!s}', truth.lat, truth.lon)}"
                               f" (inside the ensemble's box) vs {ens.describe()}; expected the same shape "
                               f"and pixel centres within half a pixel")
    return truth


def _fmt_times(t) -> str:
    import datetime as dt
    if t is None:
        return "no timestamps"
    text = [dt.datetime.fromtimestamp(int(v), dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ") for v in t[:6]]
    return ", ".join(text) + (f" and {len(t) - 6} more" if len(t) > 6 else "")


def _match_times(ens_times, n_ens, other_times, n_other, sel, what, tol, notes, allow_missing=False):
    """[(ensemble index, other index)] by timestamp (within tol s), or by position when either has none."""
    if ens_times is None or other_times is None:
        if n_other != n_ens:
            raise InputFormatError(f"times differ: the ensemble has {n_ens} time steps ({_fmt_times(ens_times)}), "
                                   f"{what} {n_other} ({_fmt_times(other_times)}); without timestamps in both, "
                                   f"expected the same number of steps, matched in order")
        if n_ens > 1:
            notes.append(f"times of the ensemble and {what} matched by position (one has no timestamps)")
        return [(t, t) for t in sel]
    pairs, missing = [], []
    for t in sel:
        d = np.abs(other_times.astype(np.int64) - int(ens_times[t]))
        k = int(np.argmin(d))
        (pairs.append((t, k)) if d[k] <= tol else missing.append(int(ens_times[t])))
    if not pairs or (missing and not allow_missing):
        raise InputFormatError(f"times differ: {len(missing)} of the ensemble's times ({_fmt_times(missing)}) are "
                               f"not in {what} ({_fmt_times(other_times)}); expected the ensemble's valid times "
                               f"(tolerance {tol} s)")
    if missing:
        notes.append(f"{len(missing)} ensemble time(s) not in {what}, not verified: {_fmt_times(missing)}")
    return pairs


def _read_coarse_input(ens: _Ensemble, input_path, variable, notes):
    """The coarse input of the baselines: input_path, else the file recorded in the ensemble (checked
    unchanged by its sha256), cropped to the ensemble's coarse grid; None (with a note) when there is none."""
    if input_path is None:
        recorded = str(ens.attrs.get("input_file", "") or "")
        if recorded in ("", "none"):
            notes.append("no coarse input recorded in the ensemble and none given (--input): the bilinear and "
                         "nearest baselines are skipped")
            return None
        path = next((p for p in (Path(recorded), Path(ens.path).parent / recorded) if p.is_file()), None)
        if path is None:
            notes.append(f"the coarse input recorded in the ensemble, '{recorded}', is not found: the bilinear and "
                         f"nearest baselines are skipped (pass --input)")
            return None
        sha = str(ens.attrs.get("input_sha256", "") or "")
        if sha and sha != "none" and file_sha256(path) != sha:
            raise InputFormatError(f"input '{path}' recorded in the ensemble has changed since sampling (sha256 "
                                   f"{file_sha256(path)[:12]}..., recorded {sha[:12]}...); expected the file the "
                                   f"ensemble was sampled from: pass it with --input")
        recorded_var = str(ens.attrs.get("input_variable", "") or "")
        variable = variable or (recorded_var if recorded_var not in ("", "none") else None)
    else:
        path = Path(input_path)
    if ens.lat_lr is not None and ens.lon_lr is not None and len(ens.lat_lr) > 1 and len(ens.lon_lr) > 1:
        lat_c, lon_c = np.sort(ens.lat_lr)[::-1], np.sort(ens.lon_lr)
        pad = 0.25 * abs(float(lat_c[1] - lat_c[0]))
        box = (lat_c.min() - pad, lat_c.max() + pad, lon_c.min() - pad, lon_c.max() + pad)
    else:
        lat_c = lon_c = None
        pad = 2.5 * COARSE_DEG  # no coarse grid recorded: keep a margin for the interpolation
        box = (ens.lat.min() - pad, ens.lat.max() + pad, ens.lon.min() - pad, ens.lon.max() + pad)
    box = (max(box[0], -90.0), min(box[1], 90.0), max(box[2], -180.0), min(box[3], 180.0))
    try:
        field = read_input(path, bbox=box, variable=variable)
    except InputFormatError as e:
        if "bbox" not in str(e):
            raise
        raise InputFormatError(f"the coarse input does not cover the ensemble grid: {ens.describe()}; "
                               f"input: {e}") from None
    if lat_c is not None:
        half = 0.5 * abs(float(lat_c[1] - lat_c[0]))
        if (field.precip.shape[1:] != (lat_c.size, lon_c.size) or np.abs(field.lat - lat_c).max() > half
                or np.abs(field.lon - lon_c).max() > half):
            raise InputFormatError(f"grids differ: {_describe(f'input {path!s}', field.lat, field.lon)} vs the "
                                   f"ensemble's coarse grid (lat_lr, lon_lr) {_describe('', lat_c, lon_c)}; "
                                   f"expected the input the ensemble was sampled from (--input)")
    return field


def _coarse_grid(ens: _Ensemble, coarse):
    """Pixel centres (lat descending, lon ascending) of the coarse grid the truth is mean-pooled to."""
    if ens.lat_lr is not None and ens.lon_lr is not None and len(ens.lat_lr) > 1:
        return np.sort(np.asarray(ens.lat_lr, np.float64))[::-1], np.sort(np.asarray(ens.lon_lr, np.float64))
    if coarse is not None and coarse.lat.size > 1:
        return coarse.lat, coarse.lon
    f = max(1, round(COARSE_DEG / ens.pixel_deg))  # blocks of the model's 0.1 deg from the north-west corner

    def centres(c):
        step = (c[-1] - c[0]) / (c.size - 1) if c.size > 1 else ens.pixel_deg
        return c[0] + (np.arange(-(-c.size // f)) * f + (f - 1) / 2) * step
    return centres(ens.lat), centres(ens.lon)


def _axis(src, dst):
    """Where the dst centres fall on the regular src axis: bilinear indices/weights (edge-clamped, as
    align_corners=False upsampling), the nearest index, and dst points beyond src's outer pixel edges."""
    n = src.size
    step = (src[-1] - src[0]) / (n - 1) if n > 1 else 1.0
    pos = (dst - src[0]) / step if n > 1 else np.zeros(dst.size)
    outside = (pos < -0.5 - 1e-6) | (pos > n - 0.5 + 1e-6)
    pc = np.clip(pos, 0, n - 1)
    i0 = np.minimum(np.floor(pc).astype(np.int64), max(n - 2, 0))
    i1 = np.minimum(i0 + 1, n - 1)
    return i0, i1, pc - i0, np.clip(np.rint(pos), 0, n - 1).astype(np.int64), outside


def regrid(src, src_lat, src_lon, dst_lat, dst_lon, how: str = "bilinear") -> np.ndarray:
    """Interpolate src (h, w) on regular centres (src_lat, src_lon) to (dst_lat, dst_lon): "bilinear" or
    "nearest". On a grid aligned as `precipfast sample` makes it, bilinear equals grid.upsample's
    (align_corners=False). A missing (NaN) coarse pixel makes its own fine pixels NaN (the sampler's
    policy) and drops out of its neighbours' weights; points beyond the source's edges are NaN."""
    if how not in ("bilinear", "nearest"):
        raise ValueError(f"how must be 'bilinear' or 'nearest', got {how!r}")
    src = np.asarray(src, np.float64)
    ri0, ri1, ra, rn, ro = _axis(np.asarray(src_lat, np.float64), np.asarray(dst_lat, np.float64))
    ci0, ci1, ca, cn, co = _axis(np.asarray(src_lon, np.float64), np.asarray(dst_lon, np.float64))
    if how == "nearest":
        out = src[rn][:, cn]
    else:
        def sep(a):  # rows, then columns: separable bilinear
            rows = a[ri0] * (1 - ra)[:, None] + a[ri1] * ra[:, None]
            return rows[:, ci0] * (1 - ca) + rows[:, ci1] * ca
        ok = np.isfinite(src)
        num, den = sep(np.where(ok, src, 0.0)), sep(ok.astype(np.float64))
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(den > 1e-12, num / np.maximum(den, 1e-12), np.nan)
        out[~ok[rn][:, cn]] = np.nan
    out[ro, :] = np.nan
    out[:, co] = np.nan
    return out.astype(np.float32)


def _mean_pool(y, lat, lon, lat_c, lon_c) -> np.ndarray:
    """Mean of the valid fine pixels whose centres fall in each coarse pixel (NaN where none is valid)."""
    _, _, _, rn, ro = _axis(lat_c, lat)
    _, _, _, cn, co = _axis(lon_c, lon)
    ok = np.isfinite(y) & ~ro[:, None] & ~co[None, :]
    label = (rn[:, None] * lon_c.size + cn[None, :])[ok]
    size = lat_c.size * lon_c.size
    sums = np.bincount(label, weights=y[ok].astype(np.float64), minlength=size)
    counts = np.bincount(label, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).reshape(lat_c.size, lon_c.size)


# ---------------------------------------------------------------------------- scores
class _Accumulator:
    """Sums pooled over pixels and times: one deterministic row per forecast (ensemble mean, baselines),
    the ensemble's CRPS, variance and rank counts, and the FSS sums per (threshold, scale)."""

    def __init__(self, n_members: int, baselines, sizes):
        self.e, self.sizes, self.n = n_members, sizes, 0
        self.names = ["ensemble", *baselines]
        self.det = {name: np.zeros(8) for name in self.names}  # n, |d|, d^2, p, y, p^2, y^2, p y
        self.fss = {name: np.zeros((len(THRESHOLDS_MM_H), len(sizes), 2)) for name in self.names}
        self.crps = self.var = 0.0
        self.ranks = np.zeros(n_members + 1, np.int64)
        self.rng = np.random.default_rng(RANK_SEED)
        self.last_mean = None

    def _add(self, name, p, y):
        d = p - y
        self.det[name] += [p.size, np.abs(d).sum(), (d * d).sum(), p.sum(), y.sum(), (p * p).sum(),
                           (y * y).sum(), (p * y).sum()]

    def add_time(self, ens: _Ensemble, t: int, truth, base: dict) -> np.ndarray:
        """Add one time; returns the (H, W) mask of the pixels scored."""
        h, w = truth.shape
        mean = np.full((h, w), np.nan)
        prob = np.full((len(THRESHOLDS_MM_H), h, w), np.nan)
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
                self.crps += float(crps_ensemble(torch.from_numpy(xm), torch.from_numpy(yv), fair=True).sum())
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
        for k, thr in enumerate(THRESHOLDS_MM_H):  # fractions of the truth shared by every forecast
            fields = {"ensemble": prob[k], **{n: (b >= thr).astype(np.float64) for n, b in base.items()}}
            obs = (np.nan_to_num(truth) >= thr).astype(np.float64)
            for j, size in enumerate(self.sizes):
                p_o = neighbourhood_mean(obs, size, ok)
                for name, fl in fields.items():
                    self.fss[name][k, j] += fss_sums(neighbourhood_mean(fl, size, ok), p_o, ok)
        self.last_mean = mean
        return ok

    def truth_mean(self) -> float:
        n = self.det["ensemble"][0]
        return float(self.det["ensemble"][4] / n) if n else float("nan")

    def scores(self) -> dict:
        out = {}
        for name in self.names:
            n, s_abs, s_sq, s_p, s_y, s_pp, s_yy, s_py = self.det[name]
            if n == 0:
                out[name] = {}
                continue
            cov, v_p, v_y = s_py / n - s_p * s_y / n ** 2, s_pp / n - (s_p / n) ** 2, s_yy / n - (s_y / n) ** 2
            rmse = math.sqrt(s_sq / n)
            s = {"crps": self.crps / n if name == "ensemble" else s_abs / n,  # point forecast: CRPS = MAE
                 "mae": s_abs / n, "rmse": rmse, "bias": (s_p - s_y) / n,
                 "bias_ratio": s_p / s_y if s_y > 0 else float("nan"),
                 "corr": cov / math.sqrt(v_p * v_y) if v_p > 0 and v_y > 0 else float("nan"),
                 "mean_mm_h": s_p / n}
            if name == "ensemble":  # Fortin et al. 2014, Eq. 15: (E+1)/E makes a calibrated ensemble 1
                spread = math.sqrt(self.var / n * (self.e + 1) / self.e)
                s["spread_skill"] = spread / rmse if rmse > 0 else float("nan")
            s["fss"] = {f"{thr:g}mm_h": {f"{km:g}km": (1.0 - num / den if den > 0 else float("nan"))
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


def _spectra(ens: _Ensemble, truth, pairs, baselines, common, px_km, notes) -> dict:
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
