"""Output file: the ensemble product as netCDF4-compatible HDF5, written atomically (MISSION.md, Output).

Layout (CF-1.8; `xarray.open_dataset(path, engine="h5netcdf")` reads it with named dimensions):
  precip                  (time, member, lat, lon)        float32 mm/h, NaN = missing
  precip_mean, precip_std (time, lat, lon)                over members (std with ddof=0)
  exceedance_probability  (time, threshold, lat, lon)     fraction of members with precip > threshold
  corrected_lr            (time, member, lat_lr, lon_lr)  stage-1 output on the coarse grid
Coordinates time (unix s), member, threshold (mm/h), lat, lon, lat_lr, lon_lr are HDF5 dimension
scales. Missing pixels are NaN (`_FillValue` NaN); a pixel is missing in the statistics when any member
is missing there. Data variables are gzip+shuffle compressed in (1, 1, <=512, <=512) chunks.

Atomic: everything goes to `<dir>/.<name>.precipfast-<host>-<pid>-<random>.tmp` and is renamed over
`path` (os.replace) only by finalize(); any exception (signals included, see runtime/files/signals.py) removes
the temp file and leaves an existing `path` untouched. A run killed outright (SIGKILL, power loss) leaves
its temp file; the next writer in that directory removes every such file of this host whose pid is dead
(`sweep_stale_temporaries`) and nothing else.
Full disks: HDF5 writes through `_GuardedFile`, which records the first failed write (ENOSPC, EDQUOT,
EFBIG) and lets HDF5 believe the rest succeeded. HDF5's own error path on a full disk retries the flush
from every object's deallocator and ends in a segfault; this way the writer raises one OutputError, HDF5
closes cleanly, and the temp file is removed.
Streaming: OutputWriter takes member tiles and time slices as they come (tiles aligned to 512 pixels
avoid recompressing chunks) and finalize() computes the statistics from the written file in 512x512
blocks, so memory stays bounded for whole-CONUS domains. Pixels never written stay NaN.
"""
from __future__ import annotations

import datetime as dt
import errno
import os
import re
import secrets
import socket
from pathlib import Path

import h5py
import numpy as np

from precipfast._version import __version__
from precipfast.errors import OutputError
from precipfast.runtime.files.signals import deferred

DEFAULT_THRESHOLDS_MM_H = (0.1, 1.0, 5.0, 10.0, 20.0)
REQUIRED_ATTRS = ("model_name", "model_sha256", "steps", "seed", "backend", "input_sha256")
BLOCK = 512        # chunk edge and statistics block edge (pixels)
GZIP_LEVEL = 4  # real MRMS rain: as fast as level 1 and 10 % smaller; level 6 is 4x slower for 5 % more
CACHE_BYTES = 64 << 20  # chunk cache: holds a band of partially written chunks between tile writes
PRECIP_ATTRS = {"units": "mm/h", "standard_name": "lwe_precipitation_rate"}
SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # full disk, quota, `ulimit -f`
_TMP_TAG = ".precipfast-"


def check_output_path(path, overwrite: bool = False) -> Path:
    """Refuse, before any work, an output that cannot be written: call it at the start of a run."""
    text = os.fspath(path)
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise OutputError(f"output '{path}' is a directory; expected a file path")
    if text.endswith(("/", os.sep)):  # Path() drops the slash: 'dir/new/' would write a file named 'new'
        raise OutputError(f"output '{text}' ends with '/'; expected a file path (e.g. '{path / 'ens.h5'}')")
    if path.is_symlink() and not path.exists() and not overwrite:
        raise OutputError(f"output '{path}' is a dangling symbolic link (to '{os.readlink(path)}'); pass "
                          f"--overwrite to replace the link")
    if not parent.exists():
        raise OutputError(f"output directory '{parent}' does not exist")
    if not parent.is_dir():
        raise OutputError(f"output directory '{parent}' is not a directory")
    if path.exists() and not overwrite:
        raise OutputError(f"output '{path}' exists; pass --overwrite to replace it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output directory '{parent}' is not writable")
    probe = None
    try:  # os.access can be wrong (root, ACLs, read-only mounts): try the real thing
        with deferred():  # a signal lands after `probe` is known, so the finally removes it
            probe = _create_temp(path)
    except OSError as e:
        if e.errno in SPACE_ERRNOS:
            raise space_error(path, e) from None
        raise OutputError(f"output directory '{parent}' is not writable ({e.strerror})") from None
    finally:
        if probe is not None:
            os.unlink(probe)
    return path


def check_not_input(input_path, output_path) -> None:
    """Refuse an output that is the input under another name: the same path, a symbolic link to it, or a
    hard link (same device and inode). Call it before anything runs: with --overwrite the run would
    otherwise replace the input by the ensemble."""
    inp, out = Path(input_path), Path(output_path)
    try:
        same = os.path.samefile(inp, out)  # follows symlinks, compares st_dev and st_ino: hard links too
    except OSError:  # one of them does not exist (or a dangling link): they cannot be the same file
        return
    if same:
        how = ("the same path" if os.path.abspath(inp) == os.path.abspath(out) else
               "the same file through symbolic links" if os.path.realpath(inp) == os.path.realpath(out) else
               "a hard link to it")
        raise OutputError(f"output '{os.fspath(output_path)}' is the input file '{os.fspath(input_path)}' ({how}); "
                          f"choose another -o, the input "
                          f"would be replaced by the ensemble")


def space_error(path, e: OSError) -> OutputError:
    """The one-line error for a write that failed for lack of space (ENOSPC, EDQUOT, EFBIG)."""
    return OutputError(f"no space left writing '{path}' ({e.strerror or os.strerror(e.errno)}); free space "
                       f"or choose another -o")


def temp_name(path) -> str:
    """`.<name>.precipfast-<host>-<pid>-<random>.tmp`: recognisable, and owned by a process of a host."""
    return f".{Path(path).name}{_TMP_TAG}{_HOST}-{os.getpid()}-{secrets.token_hex(3)}.tmp"


def sweep_stale_temporaries(directory) -> list[Path]:
    """Remove the temp files of precipfast runs of this host that died (their pid is gone), in `directory`
    only; returns what was removed. Files of live runs, of other hosts (shared file systems), links,
    directories and every other name stay untouched."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        m = _TMP_RE.match(entry.name)
        if not m or m["host"] != _HOST or int(m["pid"]) == os.getpid() or _pid_alive(int(m["pid"])):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue  # gone meanwhile, or not ours to remove: leave it
    return removed


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
                self.tmp = Path(_create_temp(self.path))
            self._io = _GuardedFile(self.tmp)
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
            os.chmod(self.tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
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
                self._f.close()  # cannot fail for lack of space: _GuardedFile swallows failed writes
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


# ---------------------------------------------------------------------------- temp files and full disks
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname().split(".")[0]) or "host"
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.precipfast-(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-[0-9a-f]{6}\.tmp$")


def _create_temp(path) -> str:
    """Create the temp file beside `path` (O_EXCL, mode 0600); returns its path."""
    parent = Path(path).parent
    for _ in range(100):
        tmp = os.path.join(parent, temp_name(path))
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
            return tmp
        except FileExistsError:
            continue
    raise OutputError(f"cannot create a temporary file beside '{path}' (100 names taken)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _write_all(raw, view) -> None:
    """Write every byte of `view` at the current position (os-level writes may be partial)."""
    done = 0
    while done < view.nbytes:
        done += raw.write(view[done:])


class _GuardedFile:
    """The file object HDF5 writes through (h5py's fileobj driver). The first failed write is recorded in
    `error` and every later write is dropped while reporting success, so HDF5 never enters its full-disk
    error path; the writer checks `error` after each write and raises once."""

    def __init__(self, path):
        self.raw = open(path, "r+b", buffering=0)
        self.error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        pos = self.raw.tell()
        if self.error is None:
            try:
                _write_all(self.raw, view)
                return view.nbytes
            except OSError as e:
                self.error = e
        self.raw.seek(pos + view.nbytes)
        return view.nbytes

    def truncate(self, size=None):
        try:
            return self.raw.truncate(size)
        except OSError as e:
            self.error = self.error or e
            return size

    def seek(self, offset, whence=0):
        return self.raw.seek(offset, whence)

    def tell(self):
        return self.raw.tell()

    def read(self, n=-1):
        return self.raw.read(n)

    def readinto(self, buf):
        return self.raw.readinto(buf)

    def flush(self):
        pass

    def fileno(self):
        return self.raw.fileno()

    def close(self):
        self.raw.close()


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


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; restored at once
    os.umask(mask)
    return mask
