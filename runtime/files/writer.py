"""Output file: the ensemble product as netCDF4-compatible HDF5, written atomically (MISSION.md, Output).

Layout (CF-1.8; `xarray.open_dataset(path, engine="h5netcdf")` reads it with named dimensions):
  precip                  (time, member, lat, lon)        float32 mm/h, NaN = missing
  precip_mean, precip_std (time, lat, lon)                over members (std with ddof=0)
  exceedance_probability  (time, threshold, lat, lon)     fraction of members with precip > threshold
  corrected_lr            (time, member, lat_lr, lon_lr)  stage-1 output on the coarse grid
Coordinates time (unix s), member, threshold (mm/h), lat, lon, lat_lr, lon_lr are HDF5 dimension
scales. Missing pixels are NaN (`_FillValue` NaN); a pixel is missing in the statistics when any member
is missing there. Data variables are gzip+shuffle compressed in (1, 1, <=512, <=512) chunks.

Atomic and safe on a full disk through runtime/files/atomic.py: everything goes to a temporary file beside
`path`, renamed over it (os.replace) only by finalize(); any exception removes the temp file and leaves an
existing `path` untouched, and a failed write (ENOSPC, EDQUOT, EFBIG) ends in one OutputError.
Streaming: OutputWriter takes member tiles and time slices as they come (tiles aligned to 512 pixels
avoid recompressing chunks) and finalize() computes the statistics from the written file in 512x512
blocks, so memory stays bounded for whole-CONUS domains. Pixels never written stay NaN.
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import h5py
import numpy as np

from precipfast._version import __version__
from precipfast.errors import OutputError
from precipfast.runtime.files.atomic import (
    SPACE_ERRNOS,
    GuardedFile,
    check_output_path,
    create_temp,
    current_umask,
    space_error,
    sweep_stale_temporaries,
)
from precipfast.runtime.files.signals import deferred

DEFAULT_THRESHOLDS_MM_H = (0.1, 1.0, 5.0, 10.0, 20.0)
REQUIRED_ATTRS = ("model_name", "model_sha256", "steps", "seed", "backend", "input_sha256")
BLOCK = 512        # chunk edge and statistics block edge (pixels)
GZIP_LEVEL = 4  # real MRMS rain: as fast as level 1 and 10 % smaller; level 6 is 4x slower for 5 % more
CACHE_BYTES = 64 << 20  # chunk cache: holds a band of partially written chunks between tile writes
PRECIP_ATTRS = {"units": "mm/h", "standard_name": "lwe_precipitation_rate"}


def ensemble_stats(block, thresholds_mm_h):
    """block (E, ...) mm/h -> mean (...), std (...), exceedance (K, ...), float32; NaN where any member is NaN."""
    x = np.asarray(block, dtype=np.float64)  # float64: std of rain rates up to 1000 mm/h over 30 members
    mean, std = x.mean(axis=0), x.std(axis=0)
    missing = np.isnan(mean)
    exceed = np.stack([(x > th).mean(axis=0) for th in thresholds_mm_h])
    exceed[:, missing] = np.nan
    return mean.astype(np.float32), std.astype(np.float32), exceed.astype(np.float32)


class OutputWriter:
    """Streamed, atomic writer of one output file; use as a context manager.

    with OutputWriter(path, lat=lat, lon=lon, members=E, times=times, lat_lr=..., lon_lr=...,
                      attrs=attrs) as w:
        w.write_members(t, slice(0, 8), rows, cols, tile)        # (8, rows, cols) mm/h
        w.write_corrected(t, slice(0, 8), values=corrected)      # (8, h, w) on the coarse grid
    # leaving the block calls finalize(): statistics, then os.replace onto `path`
    """

    def __init__(self, path, *, lat, lon, members: int, times=1, lat_lr=None, lon_lr=None,
                 thresholds_mm_h=DEFAULT_THRESHOLDS_MM_H, attrs: dict | None = None, overwrite: bool = False):
        """times: (T,) unix seconds, or the number of steps T when the input had none."""
        self.path, self.overwrite = Path(path), overwrite
        self.lat, self.lon = _axis(lat, "lat"), _axis(lon, "lon")
        self.members = int(members)
        if self.members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        self.times = None if np.ndim(times) == 0 else np.asarray(times, np.int64).reshape(-1)
        self.n_times = int(times) if self.times is None else self.times.size
        if self.n_times < 1:
            raise ValueError(f"times must hold at least one step, got {times!r}")
        if (lat_lr is None) != (lon_lr is None):
            raise ValueError("give both lat_lr and lon_lr (coarse grid of corrected_lr) or neither")
        self.lat_lr = None if lat_lr is None else _axis(lat_lr, "lat_lr")
        self.lon_lr = None if lon_lr is None else _axis(lon_lr, "lon_lr")
        self.thresholds_mm_h = np.asarray(thresholds_mm_h, np.float32).reshape(-1)
        attrs = dict(attrs or {})
        lacking = [k for k in REQUIRED_ATTRS if k not in attrs]
        if lacking:
            raise ValueError(f"attrs lacks {lacking}; the output must record {list(REQUIRED_ATTRS)}")
        check_output_path(self.path, overwrite)
        sweep_stale_temporaries(self.path.parent)
        self.tmp, self._f, self._io, self._stats_done, self._done = None, None, None, set(), False
        try:
            with deferred():  # a signal lands after self.tmp is set, inside this try: abort removes the file
                self.tmp = Path(create_temp(self.path))
            self._io = GuardedFile(self.tmp)
            with deferred():  # signals land between HDF5 calls, never inside one (see _write)
                self._f = h5py.File(self._io, "w", track_order=True, rdcc_nbytes=CACHE_BYTES, rdcc_nslots=10007,
                                    rdcc_w0=1.0)
                self._create(attrs)
            self._check_space()
        except BaseException:
            self.abort()
            raise

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self.finalize()
        return False

    # ------------------------------------------------------------------ writing
    def write_members(self, t: int, members=slice(None), rows=slice(None), cols=slice(None), values=None):
        """values (len(members), rows, cols) mm/h into precip[t, members, rows, cols]; int members take (rows, cols)."""
        self._write("precip", t, members, rows, cols, values)

    def write_corrected(self, t: int, members=slice(None), rows=slice(None), cols=slice(None), values=None):
        """values (len(members), rows, cols) mm/h on the coarse grid into corrected_lr[t, ...]."""
        if self.lat_lr is None:
            raise ValueError("this writer has no coarse grid: pass lat_lr and lon_lr to write corrected_lr")
        self._write("corrected_lr", t, members, rows, cols, values)

    def write_stats(self, t: int, mean, std, exceedance, rows=slice(None), cols=slice(None)):
        """Caller-computed statistics (see ensemble_stats); a whole field marks time t as done."""
        self._check_open()
        for name, v, lead in (("precip_mean", mean, ()), ("precip_std", std, ()),
                              ("exceedance_probability", exceedance, (slice(None),))):
            ds = self._f[name]
            key = (t, *lead, rows, cols)
            want = _shape(ds.shape, key)
            v = np.asarray(v, np.float32)
            if v.shape != want:
                raise ValueError(f"{name} values are {v.shape}; expected {want} for t={t}, rows {rows}, cols {cols}")
            with deferred():
                ds[key] = v
        self._check_space()
        if _shape((len(self.lat), len(self.lon)), (rows, cols)) == (len(self.lat), len(self.lon)):
            self._stats_done.add(t)

    def fill_stats(self, t: int, block_of=None):
        """Statistics of time t in BLOCK x BLOCK pieces; block_of(rows, cols) -> (E, rows, cols) members,
        read back from the file by default (bounded memory)."""
        self._check_open()
        block_of = block_of or (lambda rs, cs: self._read_block("precip", (t, slice(None), rs, cs)))
        for r0 in range(0, len(self.lat), BLOCK):
            for c0 in range(0, len(self.lon), BLOCK):
                rs, cs = slice(r0, r0 + BLOCK), slice(c0, c0 + BLOCK)
                self.write_stats(t, *ensemble_stats(block_of(rs, cs), self.thresholds_mm_h), rows=rs, cols=cs)

    def finalize(self, compute_stats: bool = True) -> Path:
        """Compute the statistics not yet written, close, and rename the temp file onto `path`."""
        if self._done:
            return self.path
        try:
            self._check_open()
            if compute_stats:
                for t in range(self.n_times):
                    if t not in self._stats_done:
                        self.fill_stats(t)
            with deferred():
                self._f.close()
            self._check_space()
            try:
                os.fsync(self._io.fileno())  # data on disk before the rename makes it visible
            except OSError as e:
                raise (space_error(self.path, e) if e.errno in SPACE_ERRNOS else e) from None
            self._io.close()
            os.chmod(self.tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the usual permissions
            if self.path.exists() and not self.overwrite:
                raise OutputError(f"output '{self.path}' appeared during the run; pass --overwrite to replace it")
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return self.path

    def abort(self) -> None:
        """Drop the temp file; an existing file at `path` stays as it was."""
        self._done = True
        try:
            if self._f is not None and self._f.id.valid:
                self._f.close()  # cannot fail for lack of space: GuardedFile swallows failed writes
        except Exception:  # a file being thrown away; the error that brought us here is the one to report
            pass
        finally:
            if self._io is not None:
                self._io.close()
            if self.tmp is not None and self.tmp.exists():
                self.tmp.unlink()

    def _check_space(self) -> None:
        """Raise the first failed write (a full disk) as one OutputError; HDF5 never saw it fail."""
        if self._io is not None and self._io.error is not None:
            e = self._io.error
            raise (space_error(self.path, e) if e.errno in SPACE_ERRNOS else
                   OutputError(f"cannot write '{self.path}' ({e.strerror or e})"))

    # ------------------------------------------------------------------ layout
    def _create(self, attrs: dict) -> None:
        f = self._f
        t_attrs = ({"units": "seconds since 1970-01-01 00:00:00", "calendar": "standard", "standard_name": "time",
                    "axis": "T"} if self.times is not None else {"long_name": "time step (the input had no times)"})
        self._scale("time", self.times if self.times is not None else np.arange(self.n_times, dtype=np.int64),
                    {"long_name": "time", **t_attrs})
        self._scale("member", np.arange(self.members, dtype=np.int32), {"long_name": "ensemble member"})
        self._scale("threshold", self.thresholds_mm_h, {"units": "mm/h", "long_name": "rain-rate threshold"})
        for name, c in (("lat", self.lat), ("lon", self.lon), ("lat_lr", self.lat_lr), ("lon_lr", self.lon_lr)):
            if c is not None:
                north = name.startswith("lat")
                self._scale(name, c, {"units": "degrees_north" if north else "degrees_east",
                                      "standard_name": "latitude" if north else "longitude",
                                      "long_name": ("latitude" if north else "longitude")
                                      + (" of coarse pixel centres" if name.endswith("_lr") else " of pixel centres")})
        self._var("precip", ("time", "member", "lat", "lon"),
                  {**PRECIP_ATTRS, "long_name": "ensemble members of the corrected, downscaled rain rate"})
        self._var("precip_mean", ("time", "lat", "lon"), {**PRECIP_ATTRS, "long_name": "ensemble mean rain rate"})
        self._var("precip_std", ("time", "lat", "lon"),
                  {"units": "mm/h", "long_name": "ensemble standard deviation of the rain rate (ddof=0)"})
        self._var("exceedance_probability", ("time", "threshold", "lat", "lon"),
                  {"units": "1", "long_name": "fraction of members with rain rate above the threshold"})
        if self.lat_lr is not None:
            self._var("corrected_lr", ("time", "member", "lat_lr", "lon_lr"),
                      {**PRECIP_ATTRS, "long_name": "bias-corrected rain rate on the coarse input grid"})
        f.attrs.update({"title": "precipfast precipitation ensemble", "Conventions": "CF-1.8",
                        "precipfast_version": __version__, "members": self.members,
                        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")})
        for k, v in attrs.items():
            f.attrs[k] = _attr_value(v)

    def _scale(self, name, values, attrs):
        ds = self._f.create_dataset(name, data=values)
        ds.make_scale(name)
        ds.attrs.update(attrs)

    def _var(self, name, dims, attrs):
        shape = tuple(self._f[d].shape[0] for d in dims)
        chunks = (1,) * (len(dims) - 2) + tuple(min(n, BLOCK) for n in shape[-2:])
        ds = self._f.create_dataset(name, shape=shape, dtype=np.float32, chunks=chunks, compression="gzip",
                                    compression_opts=GZIP_LEVEL, shuffle=True, fillvalue=np.float32(np.nan))
        for i, d in enumerate(dims):
            ds.dims[i].attach_scale(self._f[d])
        ds.attrs["_FillValue"] = np.float32(np.nan)
        ds.attrs.update(attrs)

    def _write(self, name, t, members, rows, cols, values):
        self._check_open()
        ds = self._f[name]
        if isinstance(members, (int, np.integer)):
            members = slice(int(members), int(members) + 1)
        key = (t, members, rows, cols)
        want = _shape(ds.shape, key)
        v = np.asarray(values, np.float32)
        if v.ndim == 2:
            v = v[None]
        if v.shape != want:
            raise ValueError(f"{name} values are {v.shape}; expected {want} for t={t}, members {members}, "
                             f"rows {rows}, cols {cols}")
        # A signal handler that raised half way through h5py's Python layer could leave HDF5 objects in a
        # state whose deallocation prints tracebacks at exit; deferred, it lands after the write.
        with deferred():
            ds[key] = v
        self._check_space()

    def _read_block(self, name, key):
        with deferred():
            return self._f[name][key]

    def _check_open(self):
        if self._done or self._f is None or not self._f.id.valid:
            raise ValueError(f"output writer for '{self.path}' is already finalized or aborted")


def write_output(path, result, *, lat, lon, lat_lr=None, lon_lr=None, times=None, overwrite: bool = False,
                 thresholds_mm_h=DEFAULT_THRESHOLDS_MM_H, attrs: dict | None = None) -> Path:
    """Write an in-memory result atomically. result: mapping or object with `precip` (T?, E, H, W) and
    optionally `corrected_lr` (T?, E, h, w); mean/std/exceedance are recomputed from the members."""
    precip = _with_time(_get(result, "precip"), "precip")
    corrected = _get(result, "corrected_lr")
    if corrected is not None and lat_lr is None:
        raise ValueError("result has corrected_lr: pass lat_lr and lon_lr (its coarse grid) to write it")
    corrected = None if corrected is None else _with_time(corrected, "corrected_lr")
    n_t, n_e = precip.shape[:2]
    with OutputWriter(path, lat=lat, lon=lon, members=n_e, times=n_t if times is None else times,
                      lat_lr=lat_lr, lon_lr=lon_lr, thresholds_mm_h=thresholds_mm_h, attrs=attrs,
                      overwrite=overwrite) as w:
        for t in range(n_t):
            w.write_members(t, values=precip[t])
            if corrected is not None:
                w.write_corrected(t, values=corrected[t])
            w.fill_stats(t, lambda rs, cs: precip[t, :, rs, cs])
    return Path(path)


# ---------------------------------------------------------------------------- helpers
def _axis(values, name) -> np.ndarray:
    a = np.asarray(values, np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of pixel centres, got shape {a.shape}")
    return a


def _shape(shape, key) -> tuple:
    """Shape of ds[key] for a key of ints and step-1 slices over the trailing/leading axes of `shape`."""
    out = []
    for n, k in zip(shape, key):
        if isinstance(k, slice):
            if k.step not in (None, 1):
                raise ValueError(f"slices must have step 1, got {k}")
            out.append(len(range(*k.indices(n))))
        elif not -n <= int(k) < n:
            raise ValueError(f"index {k} is out of range for an axis of {n}")
    return tuple(out)


def _get(result, name):
    return result.get(name) if isinstance(result, dict) else getattr(result, name, None)


def _with_time(a, name) -> np.ndarray:
    a = np.asarray(a, np.float32)
    if a.ndim == 3:
        return a[None]
    if a.ndim != 4:
        raise ValueError(f"{name} must be (E, H, W) or (T, E, H, W), got shape {a.shape}")
    return a


def _attr_value(v):
    if v is None:
        return "none"
    if isinstance(v, (dict, list, tuple)) and not (isinstance(v, (list, tuple)) and all(
            isinstance(x, (int, float)) for x in v)):
        import json
        return json.dumps(v)
    if isinstance(v, Path):
        return str(v)
    return v

