"""Inputs of a verification (verify/evaluate.py): the truth and the coarse input checked against the ensemble
file (read by runtime/files/ensemble_file.py), their times matched, and the regridding behind the baselines.

Grids: the truth is read cropped to the ensemble's box (half a pixel around it) by the input reader
(runtime/files/reader.py, so every layout it accepts works as truth) and must then have the ensemble's shape and
pixel centres within half a pixel. The coarse input is the file recorded in the ensemble (`input_file`,
checked unchanged against `input_sha256`) or the one given, cropped to the ensemble's coarse grid
(`lat_lr`, `lon_lr`). Times match by timestamp, or by position when a file has none.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from precipfast.errors import InputFormatError
from precipfast.runtime.files.digest import sha256_file
from precipfast.runtime.files.ensemble_file import EnsembleFile, describe_grid
from precipfast.runtime.files.reader import read_input

COARSE_DEG = 0.1           # the model's coarse pixel (IMERG), when neither file records the coarse grid


# ---------------------------------------------------------------------------- reading and matching
def check_members(ens: EnsembleFile) -> EnsembleFile:
    """Refuse an ensemble of one member: the scores need an ensemble."""
    if ens.n_members < 2:
        raise InputFormatError(f"ensemble '{ens.path}' has {ens.n_members} member; expected >= 2 (CRPS, spread "
                               f"and the rank histogram need an ensemble)")
    return ens


def select_times(n: int, times) -> list[int]:
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


def _read_covering(path, box, variable, what: str, label: str, ens: EnsembleFile):
    """read_input cropped to box; a file that does not reach the box says so against the ensemble's grid."""
    try:
        return read_input(path, bbox=box, variable=variable)
    except InputFormatError as e:
        if "contains no pixel centre" not in str(e):
            raise
        raise InputFormatError(f"{what} does not cover the ensemble grid: {ens.describe()}; "
                               f"{label}: {e}") from None


def read_truth(path, variable, ens: EnsembleFile):
    """The truth cropped to the ensemble's box (half a pixel around it), checked against its grid."""
    half = 0.5 * ens.pixel_deg
    box = (max(-90.0, ens.lat.min() - half), min(90.0, ens.lat.max() + half),
           max(-180.0, ens.lon.min() - half), min(180.0, ens.lon.max() + half))
    truth = _read_covering(path, box, variable, "the truth grid", "truth", ens)
    same = truth.precip.shape[1:] == (ens.lat.size, ens.lon.size)
    if not same or np.abs(truth.lat - ens.lat).max() > half or np.abs(truth.lon - ens.lon).max() > half:
        raise InputFormatError(f"grids differ: {describe_grid(f'truth {path!s}', truth.lat, truth.lon)}"
                               f" (inside the ensemble's box) vs {ens.describe()}; expected the same shape "
                               f"and pixel centres within half a pixel")
    return truth


def iso(t) -> str:
    """Unix seconds as YYYY-MM-DDTHH:MM:SSZ."""
    return dt.datetime.fromtimestamp(int(t), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def fmt_times(t, limit: int = 6) -> str:
    """Unix seconds as 'YYYY-MM-DDTHH:MM:SSZ, ...' (the first `limit`, then a count)."""
    if t is None:
        return "no timestamps"
    shown = list(t)[:limit]
    return ", ".join(iso(v) for v in shown) + (f" and {len(t) - len(shown)} more" if len(t) > len(shown) else "")


def match_times(ens_times, n_ens, other_times, n_other, sel, what, tol, notes, allow_missing=False):
    """[(ensemble index, other index)] by timestamp (within tol s), or by position when either has none."""
    if ens_times is None or other_times is None:
        if n_other != n_ens:
            raise InputFormatError(f"times differ: the ensemble has {n_ens} time steps ({fmt_times(ens_times)}), "
                                   f"{what} {n_other} ({fmt_times(other_times)}); without timestamps in both, "
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
        raise InputFormatError(f"times differ: {len(missing)} of the ensemble's times ({fmt_times(missing)}) are "
                               f"not in {what} ({fmt_times(other_times)}); expected the ensemble's valid times "
                               f"(tolerance {tol} s)")
    if missing:
        notes.append(f"{len(missing)} ensemble time(s) not in {what}, not verified: {fmt_times(missing)}")
    return pairs


def read_coarse_input(ens: EnsembleFile, input_path, variable, notes):
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
        if sha and sha != "none" and sha256_file(path) != sha:
            raise InputFormatError(f"input '{path}' recorded in the ensemble has changed since sampling (sha256 "
                                   f"{sha256_file(path)[:12]}..., recorded {sha[:12]}...); expected the file the "
                                   f"ensemble was sampled from: pass it with --input")
        recorded_var = str(ens.attrs.get("input_variable", "") or "")
        variable = variable or (recorded_var if recorded_var not in ("", "none") else None)
    else:
        path = Path(input_path)
        sha = str(ens.attrs.get("input_sha256", "") or "")
        if path.is_file() and sha not in ("", "none") and sha256_file(path) != sha:
            notes.append(f"input '{path}' is not the file the ensemble was sampled from (its sha256 differs from "
                         f"the recorded one): the baselines upsample this file")
    if ens.lat_lr is not None and ens.lon_lr is not None and len(ens.lat_lr) > 1 and len(ens.lon_lr) > 1:
        lat_c, lon_c = np.sort(ens.lat_lr)[::-1], np.sort(ens.lon_lr)
        pad = 0.25 * abs(float(lat_c[1] - lat_c[0]))
        box = (lat_c.min() - pad, lat_c.max() + pad, lon_c.min() - pad, lon_c.max() + pad)
    else:
        lat_c = lon_c = None
        pad = 2.5 * COARSE_DEG  # no coarse grid recorded: keep a margin for the interpolation
        box = (ens.lat.min() - pad, ens.lat.max() + pad, ens.lon.min() - pad, ens.lon.max() + pad)
    box = (max(box[0], -90.0), min(box[1], 90.0), max(box[2], -180.0), min(box[3], 180.0))
    field = _read_covering(path, box, variable, "the coarse input", "input", ens)
    if lat_c is not None:
        half = 0.5 * abs(float(lat_c[1] - lat_c[0]))
        if (field.precip.shape[1:] != (lat_c.size, lon_c.size) or np.abs(field.lat - lat_c).max() > half
                or np.abs(field.lon - lon_c).max() > half):
            raise InputFormatError(f"grids differ: {describe_grid(f'input {path!s}', field.lat, field.lon)} vs the "
                                   f"ensemble's coarse grid (lat_lr, lon_lr) {describe_grid('', lat_c, lon_c)}; "
                                   f"expected the input the ensemble was sampled from (--input)")
    return field


def coarse_grid(ens: EnsembleFile, coarse):
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


def mean_pool(y, lat, lon, lat_c, lon_c) -> np.ndarray:
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
