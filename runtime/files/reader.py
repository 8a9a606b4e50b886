"""Input reader: every precipitation HDF5 layout precipfast accepts, checked once, at the edge.

Layouts, detected automatically (`source_format`):
  precipfast          /precip (H, W) or (T, H, W) mm/h, NaN = missing; 1-D /lat, /lon (either order of
                      lat); optional /time (unix s) and /aux/<name> (H, W).
  imerg-v07           NASA IMERG V07 granule: /Grid/precipitation (time, lon, lat), lat ascending,
                      fill -9999.9, /Grid/time in "seconds since 1980-01-06 00:00:00 UTC" (converted).
  imerg-v06           the same with /Grid/precipitationCal.
  imerg-subset-v07/06 GES DISC subsets: /precipitation or /precipitationCal, /lat, /lon, /time at the root.
  variable            `read_input(path, variable="group/name")`: any 2-D/3-D dataset with sibling 1-D
                      `lat`/`lon` (e.g. the north-up groups of imerg_samples.h5); optional sibling
                      `time`/`time_unix`, else a `time_start_iso` group attribute.
Axis order comes from the `DimensionNames` attribute when present, else from matching the trailing
shape to (len(lat), len(lon)); a square grid without `DimensionNames` is read as (lon, lat) for the
NASA layouts and (lat, lon) otherwise.

Every field comes out the same way (InputField): precip float32 (T, H, W) mm/h with row 0 = north
(lat descending), lon ascending in [-180, 180) (0..360 grids are rolled), NaN = missing. `times` is
(T,) int64 unix seconds, or None when the file has no time (callers then index steps 0..T-1).
Fill values (`_FillValue`, `missing_value`, `CodeMissingValue` and always -9999.9) become NaN; any
other negative value, rate above 1000 mm/h, all-missing field, irregular or NaN coordinate is refused
with an InputFormatError that names the file, the variable, what was found and what was expected.

CF packing, fill values, units (mm/h, or kg m-2 s-1 multiplied by 3600) and times are decoded by
runtime/files/cf.py, the way netCDF readers do. A read larger than MAX_SLICE_PIXELS per time slice or
MAX_INPUT_VALUES in all is refused from the declared shape, before anything is allocated.

Missing-pixel policy: NaN pixels are conditioned as 0 mm/h, and the output is NaN over every fine
pixel that a missing coarse pixel covers (`missing_mask(field, factor)`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from precipfast.choices import check_bbox
from precipfast.errors import InputFormatError
from precipfast.runtime.files import cf
from precipfast.runtime.files.digest import sha256_file
from precipfast.runtime.files.latlon import crop, lat_order, lon_order, pixel_deg
from precipfast.runtime.files.rates import rate_problem

MAX_SLICE_PIXELS = 2 * 1800 * 3600   # twice a global 0.1 deg grid: no coarse input is larger
# Coarse pixels read around a bbox crop for the correction stage: the context each window had in the
# held-out validation (experiments/heldout.py CONTEXT); the shipped correction's tile overlap is the same 8.
CONTEXT_PX = 8
MAX_INPUT_VALUES = 1 << 30           # values read in all (4 GiB as float32): crop with a bbox beyond that
NASA_LAYOUTS = (("imerg-v07", "Grid/precipitation"), ("imerg-v06", "Grid/precipitationCal"),
                ("imerg-subset-v07", "precipitation"), ("imerg-subset-v06", "precipitationCal"))
LAYOUTS_TEXT = ("precipfast (/precip with /lat, /lon), IMERG V07 (/Grid/precipitation), IMERG V06 "
                "(/Grid/precipitationCal), GES DISC subsets (/precipitation or /precipitationCal at the root), "
                "or name a dataset with variable=")


@dataclass(frozen=True, eq=False)
class InputField:
    """One input, north-up and checked. Shapes: precip (T, H, W), lat (H,), lon (W,), aux (H, W)."""
    precip: np.ndarray          # (T, H, W) float32 mm/h, NaN = missing, row 0 = north
    lat: np.ndarray             # (H,) float64 pixel centres, descending
    lon: np.ndarray             # (W,) float64 pixel centres, ascending, in [-180, 180)
    times: np.ndarray | None    # (T,) int64 unix seconds; None when the file has no time
    aux: dict                   # name -> (H, W) float32 (precipfast layout only)
    source_format: str          # precipfast | imerg-v07 | imerg-v06 | imerg-subset-v07 | -v06 | variable
    variable: str               # dataset path in the file
    pixel_deg: float            # grid spacing (checked regular and square)
    sha256: str                 # of the whole file
    path: str = ""
    context: "Context | None" = None  # the file's pixels around a bbox crop (read_input(context=...))


@dataclass(frozen=True, eq=False)
class Context:
    """A bbox crop with the file's neighbouring pixels around it: `precip` (T, top + H + bottom, left + W +
    right), the crop at rows top.., cols left... The correction stage samples this larger domain and keeps
    the crop, so the crop's edge pixels see their real neighbours as interior pixels do (docs/experiments.md)."""
    precip: np.ndarray
    top: int
    bottom: int
    left: int
    right: int


@dataclass(frozen=True)
class _Layout:
    fmt: str
    var: str      # dataset path
    group: str    # where lat/lon/time live


def read_input(path, *, bbox=None, variable: str | None = None, check_size=None,
               context: int = CONTEXT_PX) -> InputField:
    """Read and check one input file; `bbox=(south, north, west, east)` keeps pixels whose centres fall inside.
    `check_size(times, height, width)`, when given, sees the declared size of the selection before it is read
    (runtime/sampling/memory.py refuses what cannot fit the budget). With a bbox, also reads up to `context` of the
    file's pixels on each side of the crop (fewer at the file's edge) into `InputField.context`, for the
    correction stage (`Pipeline.context_of`); context=0 reads the crop alone."""
    if context < 0:
        raise ValueError(f"context must be >= 0 pixels, got {context}")
    path = Path(path)
    box = check_bbox(bbox)
    _check_file(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise InputFormatError(f"input '{path}' cannot be opened as HDF5 ({e}); expected an HDF5 file") from None
    with f:
        lay = _find_layout(f, path, variable)
        fail = _failer(path, lay.var)
        ds = f[lay.var]
        lat_f = _coord(f, lay.group, ("lat", "latitude"), fail)
        lon_f = _coord(f, lay.group, ("lon", "longitude"), fail)
        axes = _axes(ds, lay.fmt, len(lat_f), len(lon_f), fail)
        to_mm_h = cf.check_units(ds, fail)
        rows, lat = lat_order(lat_f, fail)
        cols, lon = lon_order(lon_f, fail)
        _check_lat_range(lat, fail)
        pixel = pixel_deg(lat, lon, fail)
        all_rows, all_cols = rows, cols
        if box is not None:
            rows, cols, lat, lon = crop(rows, cols, lat, lon, box, fail)
        n = context if box is not None else 0
        (ext_rows, top, bottom), (ext_cols, left, right) = _beside(all_rows, rows, n), _beside(all_cols, cols, n)
        if check_size is not None:  # the memory budget first: it names the option that can fix it
            check_size(ds.shape[axes.index("time")] if "time" in axes else 1, len(rows), len(cols))
        _check_read_size(ds, axes, ext_rows, ext_cols, fail)
        ext = _read_precip(ds, axes, ext_rows, ext_cols, fail, to_mm_h)
        precip = np.ascontiguousarray(ext[:, top:top + rows.size, left:left + cols.size])
        _check_rates(precip, fail, box)
        ctx = None
        if ext.shape != precip.shape:
            problem = rate_problem(ext)
            if problem:
                fail(f"{problem} (in the {context}-pixel context read around bbox {box}; crop a bbox at least "
                     f"{context} pixels away from such values)")
            ctx = Context(ext, top, bottom, left, right)
        times = cf.times(f, lay.group, precip.shape[0], fail)
        aux = _aux(f, len(lat_f), len(lon_f), rows, cols, fail) if lay.fmt == "precipfast" else {}
    return InputField(precip, lat, lon, times, aux, lay.fmt, "/" + lay.var, pixel, sha256_file(path), str(path),
                      ctx)


def _beside(all_idx: np.ndarray, idx: np.ndarray, n: int):
    """(the crop's file indices with up to n of the file's pixels on each side, how many before, after);
    fewer at the file's edge. all_idx is an axis's file indices in north-up order, idx the crop's
    (contiguous in it)."""
    i0 = int(np.flatnonzero(all_idx == idx[0])[0])
    before, after = min(n, i0), min(n, all_idx.size - i0 - idx.size)
    return all_idx[i0 - before: i0 + idx.size + after], before, after


def expected_pixel_check(field: InputField, pixel_deg_expected: float, tol: float = 0.02) -> None:
    """Refuse an input whose pixel differs from the model's coarse pixel by more than `tol` (relative)."""
    if abs(field.pixel_deg - pixel_deg_expected) > tol * pixel_deg_expected:
        raise InputFormatError(f"input '{field.path}' variable '{field.variable}': coarse grid pixel is "
                               f"{field.pixel_deg:.4g} deg; the model expects {pixel_deg_expected:.4g} deg")


def missing_mask(field: InputField, factor: int = 1) -> np.ndarray:
    """(T, H*factor, W*factor) bool: True where the coarse input pixel was missing (NaN)."""
    m = np.isnan(field.precip)
    return m if factor == 1 else m.repeat(factor, axis=1).repeat(factor, axis=2)


# ---------------------------------------------------------------------------- layout
def _failer(path, var):
    def fail(msg):
        raise InputFormatError(f"input '{path}' variable '/{var}': {msg}")
    return fail


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputFormatError(f"input file '{path}' does not exist")
    if path.is_dir():
        raise InputFormatError(f"input '{path}' is a directory; expected an HDF5 file")
    if not os.access(path, os.R_OK):
        raise InputFormatError(f"input '{path}' is not readable")
    if not h5py.is_hdf5(path):
        raise InputFormatError(f"input '{path}' is not an HDF5 file (no HDF5 signature); expected precipfast "
                               f"or IMERG HDF5")


def _datasets(f) -> str:
    found = []
    f.visititems(lambda name, obj: found.append(f"/{name} {obj.shape}") if isinstance(obj, h5py.Dataset) else None)
    more = f" and {len(found) - 20} more" if len(found) > 20 else ""
    return (", ".join(found[:20]) + more) or "none"


def _find_layout(f, path, variable) -> _Layout:
    if variable is not None:
        var = variable.strip("/")
        if not isinstance(f.get(var), h5py.Dataset):
            raise InputFormatError(f"input '{path}' has no dataset '/{var}'; datasets found: {_datasets(f)}")
        fmt = dict((v, k) for k, v in NASA_LAYOUTS).get(var, "precipfast" if var == "precip" else "variable")
        return _Layout(fmt, var, var.rpartition("/")[0])
    if isinstance(f.get("precip"), h5py.Dataset):
        return _Layout("precipfast", "precip", "")
    for fmt, var in NASA_LAYOUTS:
        if isinstance(f.get(var), h5py.Dataset):
            return _Layout(fmt, var, var.rpartition("/")[0])
    raise InputFormatError(f"input '{path}' has no precipitation variable; datasets found: {_datasets(f)}; "
                           f"expected one of the layouts: {LAYOUTS_TEXT}")


def _coord(f, group, names, fail) -> np.ndarray:
    where = f[group] if group else f
    ds = next((where[n] for n in names if isinstance(where.get(n), h5py.Dataset)), None)
    if ds is None:
        fail(f"no '{names[0]}' coordinate beside it in '/{group}'; expected 1-D {names[0]} pixel centres")
    if ds.ndim != 1:
        fail(f"'{ds.name}' is {ds.ndim}-D {ds.shape}; expected 1-D pixel centres of a regular lat/lon grid")
    c = np.asarray(ds[()], dtype=np.float64)
    if c.size == 0 or not np.isfinite(c).all():
        fail(f"'{ds.name}' has {np.count_nonzero(~np.isfinite(c))} NaN/inf of {c.size} values; expected finite "
             f"coordinates")
    return c


def _dim_names(ds):
    raw = ds.attrs.get("DimensionNames")
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    names = []
    for part in text.split(","):
        part = part.strip().lower()
        names.append(next((k for k in ("time", "lat", "lon") if k in part), part))
    ok = len(names) == ds.ndim and sorted(names) == sorted(["lat", "lon"] + ["time"] * (ds.ndim - 2))
    return tuple(names) if ok else None


def _axes(ds, fmt, nlat, nlon, fail) -> tuple:
    """Name of each dataset axis ('time', 'lat', 'lon'), checked against the coordinate lengths."""
    if ds.ndim not in (2, 3):
        fail(f"is {ds.ndim}-D {ds.shape}; expected (lat, lon) or (time, lat, lon)"
             + (" in NASA order (time, lon, lat)" if fmt.startswith("imerg") else ""))
    if not np.issubdtype(ds.dtype, np.number):
        fail(f"has dtype {ds.dtype}; expected numeric rain rates")
    lead = ("time",) if ds.ndim == 3 else ()
    want = {"lat": nlat, "lon": nlon}
    axes = _dim_names(ds) if fmt != "precipfast" else None
    if axes is None:
        latlon, lonlat = ds.shape[-2:] == (nlat, nlon), ds.shape[-2:] == (nlon, nlat)
        nasa = fmt.startswith("imerg")
        if lonlat and (nasa or not latlon) and fmt != "precipfast":
            axes = lead + ("lon", "lat")
        elif latlon:
            axes = lead + ("lat", "lon")
    if axes is None or any(want[a] != n for a, n in zip(axes, ds.shape) if a in want):
        order = "(time, lon, lat)" if fmt.startswith("imerg") else "(time, lat, lon)"
        fail(f"has shape {ds.shape} but lat has {nlat} values and lon {nlon}; expected {order}"
             + (f" per DimensionNames {axes}" if axes else "") + " with matching lengths")
    return axes


# ---------------------------------------------------------------------------- values
def _check_lat_range(lat, fail) -> None:
    """Pixel centres beyond the poles mean the coordinates are not degrees (or not latitude)."""
    if lat.max() > 90.0 or lat.min() < -90.0:
        fail(f"lat spans {lat.min():g}..{lat.max():g}; expected pixel centres in degrees within [-90, 90]")


def _check_read_size(ds, axes, rows, cols, fail) -> None:
    """Refuse, from the declared shape, a read no coarse input needs (before allocating it)."""
    n = {"time": None, "lat": rows.size, "lon": cols.size}
    shape = tuple(ds.shape[i] if n[a] is None else n[a] for i, a in enumerate(axes))
    per_slice = rows.size * cols.size
    total = int(np.prod(shape, dtype=np.float64))
    if per_slice > MAX_SLICE_PIXELS:
        fail(f"declares {rows.size} x {cols.size} = {per_slice:,} pixels per time slice to read (dataset "
             f"{ds.shape}); expected at most {MAX_SLICE_PIXELS:,} (twice a global 0.1 deg grid): crop it with "
             f"--bbox")
    if total > MAX_INPUT_VALUES:
        fail(f"declares {total:,} values to read ({shape}, {total * 4 / 2**30:.1f} GiB as float32); expected at "
             f"most {MAX_INPUT_VALUES:,}: crop it with --bbox or split the times into several files")


def _read_precip(ds, axes, rows, cols, fail, to_mm_h: float = 1.0) -> np.ndarray:
    """Read only the selected rows/cols (a slab in file order), then reorder to (T, H, W) north-up,
    masked and unpacked (CF) to mm/h."""
    pick = {"lat": rows, "lon": cols}
    slab, takes = [], []
    for a in axes:
        idx = pick.get(a)
        slab.append(slice(None) if idx is None else slice(int(idx.min()), int(idx.max()) + 1))
        takes.append(None if idx is None else idx - idx.min())
    try:
        raw = ds[tuple(slab)]
    except (OSError, ValueError) as e:
        fail(f"cannot be read ({e})")
    for i, t in enumerate(takes):
        if t is not None and not np.array_equal(t, np.arange(t.size)):
            raw = np.take(raw, t, axis=i)
    raw = np.transpose(raw, [axes.index(a) for a in ("time", "lat", "lon") if a in axes])
    if "time" not in axes:
        raw = raw[None]
    fill = cf.packed_mask(ds, raw, fail)
    scale, offset, work = cf.packing(ds, fail)
    if scale is None and offset is None and to_mm_h == 1.0:
        precip = raw.astype(np.float32)
    else:  # one time slice at a time (bounded memory), stored as float32
        precip = np.empty(raw.shape, np.float32)
        for t in range(raw.shape[0]):
            x = raw[t].astype(work)
            if scale is not None:
                x *= scale
            if offset is not None:
                x += offset
            precip[t] = x * to_mm_h if to_mm_h != 1.0 else x
    precip[fill] = np.nan
    return np.ascontiguousarray(precip)



def _check_rates(precip, fail, box) -> None:
    problem = rate_problem(precip, f" inside bbox {box}" if box else "")
    if problem:
        fail(problem)


def _aux(f, nlat, nlon, rows, cols, fail) -> dict:
    group = f.get("aux")
    out = {}
    for name, ds in (group.items() if isinstance(group, h5py.Group) else ()):
        if not isinstance(ds, h5py.Dataset):
            continue
        if ds.shape != (nlat, nlon):
            fail(f"aux '{ds.name}' is {ds.shape}; expected (lat, lon) = ({nlat}, {nlon})")
        a = ds[int(rows.min()):int(rows.max()) + 1, int(cols.min()):int(cols.max()) + 1]
        out[name] = np.ascontiguousarray(a[np.ix_(rows - rows.min(), cols - cols.min())], dtype=np.float32)
    return out
