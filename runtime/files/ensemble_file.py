"""The one reader of the output format (runtime/files/writer.py): is a file an output, its summary for
`precipfast info`, and its variables read north-up for `evaluate`, the demo and the experiments.

Files are opened with h5py, read-only. Whatever order the file's grid is in, `EnsembleFile` hands out
north-up arrays: row 0 = north (lat descending), lon ascending, on the fine grid (lat, lon) or, for
`corrected_lr`, on the coarse one (lat_lr, lon_lr).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from precipfast.errors import InputFormatError

COARSE_VARIABLES = ("corrected_lr",)  # on (lat_lr, lon_lr); every other gridded variable is on (lat, lon)


def check_ensemble_file(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputFormatError(f"ensemble file '{path}' does not exist; expected the output of `precipfast sample`")
    if not h5py.is_hdf5(path):
        raise InputFormatError(f"ensemble '{path}' is not an HDF5 file; expected the output of `precipfast sample`")
    return path


@contextmanager
def open_ensemble(path) -> Iterator[EnsembleFile]:
    """The output at `path` (checked by check_ensemble_file) open read-only as an EnsembleFile."""
    with h5py.File(check_ensemble_file(path), "r") as f:
        yield EnsembleFile(f, path)


def is_output(path) -> bool:
    """True when the HDF5 file at `path` is a precipfast output: a 4-D 'precip' and the model's sha256."""
    with h5py.File(path, "r") as f:
        return isinstance(f.get("precip"), h5py.Dataset) and f["precip"].ndim == 4 and "model_sha256" in f.attrs


class EnsembleFile:
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
        self.flip_lat, self.flip_lon, self.lat, self.lon = _north_up(coords["lat"], coords["lon"])
        steps = [abs(float(np.diff(c).mean())) for c in (self.lat, self.lon) if c.size > 1]
        self.pixel_deg = float(np.mean(steps)) if steps else 0.01
        units = f["time"].attrs.get("units", b"")
        stamped = "since" in (units.decode() if isinstance(units, bytes) else str(units))
        self.times = np.asarray(coords["time"], np.int64) if stamped else None
        self.lat_lr = f["lat_lr"][()] if self.has("lat_lr") else None
        self.lon_lr = f["lon_lr"][()] if self.has("lon_lr") else None
        self._flip_lr = (False, False)
        if all(np.ndim(c) == 1 and len(c) for c in (self.lat_lr, self.lon_lr)):
            flip_lat_lr, flip_lon_lr, self.lat_lr, self.lon_lr = _north_up(self.lat_lr, self.lon_lr)
            self._flip_lr = (flip_lat_lr, flip_lon_lr)
        self.thresholds = np.asarray(f["threshold"][()]) if self.has("threshold") else None
        self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}

    def has(self, name: str) -> bool:
        """Whether the file holds the dataset `name` (corrected_lr only when the correction stage ran)."""
        return isinstance(self.f.get(name), h5py.Dataset)

    def label(self, t):
        return int(self.times[t]) if self.times is not None else int(t)

    def read(self, t: int, members=slice(None), rows=slice(None), cols=slice(None)) -> np.ndarray:
        """members of time t in north-up rows/cols (slices of step 1), float32."""
        return _read(self.ds, (t, members), rows, cols, self.flip_lat, self.flip_lon)

    def field(self, name: str, t: int, *index) -> np.ndarray:
        """Variable `name` of time t, north-up; `index` picks on the axes between time and the grid (a member,
        a threshold): field("precip_mean", t) is (H, W), field("exceedance_probability", t, k) the k-th
        threshold's (H, W), field("corrected_lr", t) (E, h, w) on the coarse grid."""
        ds = self.f.get(name)
        if not isinstance(ds, h5py.Dataset):
            raise InputFormatError(f"ensemble '{self.path}' has no '{name}'; expected a `precipfast sample` output")
        flips = self._flip_lr if name in COARSE_VARIABLES else (self.flip_lat, self.flip_lon)
        return _read(ds, (t, *index), slice(None), slice(None), *flips)

    def describe(self) -> str:
        return describe_grid(f"ensemble '{self.path}'", self.lat, self.lon)


def _north_up(lat, lon):
    """(flip lat, flip lon, lat descending, lon ascending) of a file's 1-D pixel centres."""
    flip_lat, flip_lon = bool(lat[0] < lat[-1]), bool(lon[0] > lon[-1])
    return (flip_lat, flip_lon, np.asarray(lat[::-1] if flip_lat else lat, np.float64),
            np.asarray(lon[::-1] if flip_lon else lon, np.float64))


def _read(ds, lead: tuple, rows: slice, cols: slice, flip_lat: bool, flip_lon: bool) -> np.ndarray:
    """ds[*lead, rows, cols] with rows/cols north-up (slices of step 1) whatever the file's order."""
    h, w = ds.shape[-2:]
    r, c = (_mirror(rows, h) if flip_lat else rows), (_mirror(cols, w) if flip_lon else cols)
    a = ds[(*lead, r, c)]
    return a[..., ::-1 if flip_lat else 1, ::-1 if flip_lon else 1]


def _mirror(s: slice, n: int) -> slice:
    lo, hi, _ = s.indices(n)
    return slice(n - hi, n - lo)


def describe_grid(what, lat, lon) -> str:
    """'<what> HxW px of <step> deg, lat <first>..<last>, lon <first>..<last>' for error messages."""
    step = abs(float(lat[1] - lat[0])) if lat.size > 1 else float("nan")
    return (f"{what} {lat.size}x{lon.size} px of {step:.4g} deg, lat {lat[0]:.4f}..{lat[-1]:.4f}, "
            f"lon {lon[0]:.4f}..{lon[-1]:.4f}")


def read_output(path) -> dict:
    """Summary for `precipfast info`: {'path', 'dims': {name: size}, 'variables': {name: {dims, shape,
    dtype, units}}, 'attrs': {...}}."""
    path = Path(path)
    if not path.is_file():
        raise InputFormatError(f"output file '{path}' does not exist")
    if not h5py.is_hdf5(path):
        raise InputFormatError(f"'{path}' is not an HDF5 file; expected a precipfast output")
    with h5py.File(path, "r") as f:
        if "precip" not in f or "member" not in f:
            raise InputFormatError(f"'{path}' has no 'precip' with a 'member' axis; expected a precipfast output "
                                   f"with precip, precip_mean, precip_std, exceedance_probability, corrected_lr")
        dims, variables = {}, {}
        for name, ds in f.items():
            if not isinstance(ds, h5py.Dataset):
                continue
            if ds.is_scale:
                dims[name] = ds.shape[0]
                continue
            names = [Path(d[0].name).name if len(d) else f"phony_dim_{i}" for i, d in enumerate(ds.dims)]
            variables[name] = {"dims": tuple(names), "shape": ds.shape, "dtype": str(ds.dtype),
                               "units": _py(ds.attrs.get("units"))}
        attrs = {k: _py(v) for k, v in f.attrs.items()}
    return {"path": str(path), "dims": dims, "variables": variables, "attrs": attrs}


def _py(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v
