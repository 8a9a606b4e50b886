"""CF decoding of an input variable: packing, fill values and valid range, rain-rate units, and time.

CF packing is decoded the way netCDF readers (netCDF4-python) do it: the masks are taken on the raw,
packed values (`_FillValue`, `missing_value`, `CodeMissingValue`, always -9999.9 for floats, and values outside
`valid_range` / `valid_min` / `valid_max`, which are in packed units), then rate = raw * scale_factor + add_offset
in the precision of the attributes (float32 attributes: float32 arithmetic, as xarray and netCDF4-python do;
float64 ones: float64), stored as float32. Units, where the variable states them, must be a rain rate: mm/h and its
spellings, or kg m-2 s-1 (= mm/s, multiplied by 3600). Times are unix seconds, `<unit> since <date>` (CF), or a
`time_start_iso` attribute. `fail(message)` raises the caller's error, which names the file and the variable.
"""
from __future__ import annotations

import datetime as dt
import re

import h5py
import numpy as np

IMERG_FILL = -9999.9
RATE_UNITS = {"mm/h", "mm/hr", "mmh-1", "mmhr-1", "mm/hour", "mmh**-1", "mmh^-1", "mmhr**-1", "mmhr^-1",
              "millimeter/hour", "millimeters/hour", "millimetersperhour", "mmperhour"}
FLUX_UNITS = {"kgm-2s-1", "kgm**-2s**-1", "kgm^-2s^-1", "kg/m2/s", "kg/m^2/s", "kgm-2/s", "mm/s", "mms-1"}


def packed_mask(ds, raw, fail) -> np.ndarray:
    """True where the raw (packed) value is a fill/missing value or outside the valid range."""
    fill = np.zeros(raw.shape, bool)
    is_float = np.issubdtype(raw.dtype, np.floating)
    for v in _fill_values(ds):
        if is_float:
            fill |= raw == np.asarray(v).astype(raw.dtype)
        elif float(v).is_integer() and np.iinfo(raw.dtype).min <= v <= np.iinfo(raw.dtype).max:
            fill |= raw == int(v)  # an integer fill that the packed type cannot hold matches nothing
    if is_float:
        fill |= np.abs(raw - raw.dtype.type(IMERG_FILL)) < 1e-3
    lo, hi = _valid_limits(ds, fail)
    if lo is not None:
        fill |= raw < lo
    if hi is not None:
        fill |= raw > hi
    return fill


def _number_attr(ds, key, fail, size=1, dtype=np.float64):
    """A numeric attribute as `dtype` (None when absent); anything else is refused with its name."""
    v = ds.attrs.get(key)
    if v is None:
        return None
    try:
        if not np.issubdtype(np.asarray(v).dtype, np.number):
            raise TypeError(key)
        a = np.asarray(v).astype(dtype).reshape(-1)
    except (TypeError, ValueError):
        a = np.array([])
    if a.size != size or not np.isfinite(a).all():
        fail(f"attribute {key}={v!r} is not {size} finite number{'s' if size > 1 else ''}; expected CF packing "
             f"attributes")
    return a


def packing(ds, fail):
    """(scale_factor, add_offset, working dtype) of CF packing; None for an absent attribute. The
    arithmetic runs in the attributes' precision (float32 unless one is float64), as netCDF readers do."""
    kinds = [np.asarray(ds.attrs[k]).dtype for k in ("scale_factor", "add_offset") if k in ds.attrs]
    work = np.float64 if any(k == np.float64 or np.issubdtype(k, np.integer) and k.itemsize > 2
                             for k in kinds) else np.float32
    scale = _number_attr(ds, "scale_factor", fail, dtype=work)
    offset = _number_attr(ds, "add_offset", fail, dtype=work)
    if scale is not None and scale[0] == 0:
        fail("attribute scale_factor is 0; expected a non-zero CF scale factor")
    return (None if scale is None else scale[0]), (None if offset is None else offset[0]), work


def _valid_limits(ds, fail):
    """(low, high) raw-value limits from valid_range, else valid_min / valid_max; None where absent."""
    vr = _number_attr(ds, "valid_range", fail, size=2)
    if vr is not None:
        if vr[0] > vr[1]:
            fail(f"attribute valid_range={vr.tolist()} has min > max; expected [min, max]")
        return float(vr[0]), float(vr[1])
    lo, hi = _number_attr(ds, "valid_min", fail), _number_attr(ds, "valid_max", fail)
    return (None if lo is None else float(lo[0])), (None if hi is None else float(hi[0]))


def _fill_values(ds):
    out = []
    for key in ("_FillValue", "missing_value", "CodeMissingValue"):
        v = ds.attrs.get(key)
        if v is None:
            continue
        try:
            out.extend(float(x.decode() if isinstance(x, bytes) else x) for x in np.atleast_1d(v))
        except (TypeError, ValueError):
            continue
    return [v for v in out if np.isfinite(v)]  # a NaN fill is already NaN


def check_units(ds, fail) -> float:
    """The factor to mm/h of the variable's stated units (1 when none are stated)."""
    raw = ds.attrs.get("units", ds.attrs.get("Units"))
    if raw is None:
        return 1.0
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    key = text.strip().lower().replace(" ", "")
    if key in RATE_UNITS:
        return 1.0
    if key in FLUX_UNITS:  # 1 kg of water per m2 is 1 mm deep
        return 3600.0
    fail(f"has units {text!r}; expected a rain rate in mm/h (or mm/hr, mm h-1, mm hr-1) or kg m-2 s-1")


_SINCE = re.compile(r"\s*(second|minute|hour|day)s?\s+since\s+(\d{4})-(\d{1,2})-(\d{1,2})"
                    r"(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?", re.I)
_UNIT_S = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def times(f, group, n, fail):
    """(n,) int64 unix seconds from the `time` or `time_unix` dataset in `group` (plain unix seconds, or CF
    `<seconds|minutes|hours|days> since <date>` units), else from a `time_start_iso` attribute; None when none."""
    where = f[group] if group else f
    ds = next((where[k] for k in ("time", "time_unix") if isinstance(where.get(k), h5py.Dataset)), None)
    if ds is None:
        return _time_attr(where, n, fail)
    values = np.asarray(ds[()], np.float64).reshape(-1)
    if values.size != n:
        fail(f"has {n} time steps but '{ds.name}' has {values.size} values; expected one per step")
    raw = ds.attrs.get("units", ds.attrs.get("Units"))
    if raw is None:
        return np.round(values).astype(np.int64)  # precipfast schema: unix seconds
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    m = _SINCE.match(text)
    if not m:
        fail(f"'{ds.name}' has units {text!r}; expected '<seconds|minutes|hours|days> since YYYY-MM-DD HH:MM:SS'")
    y, mo, d, hh, mm, ss = (int(v or 0) for v in m.groups()[1:])
    epoch = dt.datetime(y, mo, d, hh, mm, ss, tzinfo=dt.timezone.utc).timestamp()
    return np.round(values * _UNIT_S[m.group(1).lower()] + epoch).astype(np.int64)


def _time_attr(group, n, fail):
    """A single time from a `time_start_iso` attribute of the group or an ancestor (converted files)."""
    while n == 1:
        iso = group.attrs.get("time_start_iso")
        if iso is not None:
            iso = iso.decode() if isinstance(iso, bytes) else str(iso)
            try:
                stamp = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
            except ValueError:
                fail(f"attribute time_start_iso={iso!r} of '{group.name}'; expected YYYY-MM-DDTHH:MM:SSZ")
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=dt.timezone.utc)
            return np.array([int(stamp.timestamp())], np.int64)
        if group.name == "/":
            break
        group = group.parent
    return None
