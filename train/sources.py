"""The radar catalogue: every 1 km rain source in shared/data, read as mean rates over a chosen period.

What the 1 km target is. IMERG's half-hourly `precipitationCal` is an areal mean rate over a half hour,
so the fine stage's target is the 1 km rain rate averaged over the input's period, not an instantaneous
scan (2-minute PrecipRate frames are far spikier than any half-hour mean). Sources are therefore read as
means over `period_min` minutes (30 by default): consecutive native frames are averaged in whole
windows (FMI 10-min scans in threes, BoM 6-min in fives, MRMS 2-min in fifteens). A source whose native
period is already longer is used as it is: the hourly gauge-corrected QPE stands for a half-hour mean (a
slightly smoother one) and brings three days of CONUS-wide weather that no other file has.

Names (kind/name):
  qpe/20160920, qpe/20160921, qpe/20160922  MRMS GaugeCorr QPE 01H, 24 hourly CONUS fields per day
  mrms/conus                                MRMS PrecipRate half-hour means, CONUS, 2019-06-10 00-01Z
  mrms/region_0 .. region_6                 MRMS PrecipRate 2-min frames, 512 x 512 windows, same evening
  fmi/fmi_20160928, fmi/fmi_20170509        FMI composite, 10-min, ~1 km
  bom/bom_66_20201031, bom/bom_2_20180616   BoM Rainfields3, 0.5 km mean-pooled by 2 to 1 km

`load_source` returns float32 mm/h with NaN outside coverage; `load_packed` gives the QPE days as their
uint16 counts (1.2 GB a day instead of 2.4 GB) with `unpack` to turn a window into mm/h.
"""
from __future__ import annotations

import functools
from pathlib import Path

import h5py
import numpy as np

from precipfast.errors import InputFormatError
from precipfast.grid import coarsen

MRMS_FILE = "mrms_preciprate_20190610_0000-0110_regions.h5"
RADAR_FILE = "radar_1km_fmi_bom.h5"
QPE_FILE = "mrms_gaugecorr_qpe01h_20160920-22_conus.h5"
FILES = {MRMS_FILE: "MRMS groups region_0..region_6 and conus/ (2019-06-10)",
         RADAR_FILE: "FMI/BoM groups fmi_*/bom_* with precip (T, H, W)",
         QPE_FILE: "precip (72, 3500, 7000) uint16 hourly QPE, 2016-09-20..22"}
QPE_DAYS = ("20160920", "20160921", "20160922")
QPE_SCALE, QPE_FILL = 0.1, 65535      # mm per count and the missing value (shared/data/README.md)
NATIVE_MIN = {"qpe": 60, "mrms/conus": 30, "mrms": 2, "fmi": 10, "bom_66": 10, "bom_2": 6}
DEFAULT_PERIOD_MIN = 30               # IMERG's half hour


def resolve_data_dir(data_dir) -> Path:
    """The data folder, checked: it must exist and hold the three radar files."""
    root = Path(data_dir)
    if not root.is_dir():
        raise InputFormatError(f"training data directory '{data_dir}' does not exist; expected a folder such "
                               f"as ../shared/data with {', '.join(FILES)}")
    for name, what in FILES.items():
        if not (root / name).is_file():
            raise InputFormatError(f"training data file '{root / name}' is missing; expected {what}")
    return root


def available_sources(data_dir) -> tuple[str, ...]:
    """Every source name, e.g. 'qpe/20160920', 'mrms/conus', 'fmi/fmi_20160928'."""
    return _available(str(resolve_data_dir(data_dir).resolve()))


@functools.lru_cache(maxsize=8)
def _available(root: str) -> tuple[str, ...]:
    names = [f"qpe/{d}" for d in QPE_DAYS]
    with h5py.File(Path(root) / MRMS_FILE, "r") as f:
        names += ["mrms/conus"] + [f"mrms/{g}" for g in sorted(f) if g.startswith("region_")]
    with h5py.File(Path(root) / RADAR_FILE, "r") as f:
        names += [f"{g.split('_')[0]}/{g}" for g in sorted(f) if g.split("_")[0] in ("fmi", "bom")]
    return tuple(names)


def check_names(data_dir, names, what: str) -> list[str]:
    """`names` (one or several) checked against the catalogue; unknown ones are listed with the known."""
    names = [names] if isinstance(names, str) else list(names)
    known = available_sources(data_dir)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; available sources: {list(known)}")
    return names


def native_minutes(name: str) -> int:
    """Minutes between (and covered by) the native frames of a source."""
    kind, group = name.split("/")
    if name == "mrms/conus" or kind in ("qpe", "mrms"):
        return NATIVE_MIN[name if name == "mrms/conus" else kind]
    return NATIVE_MIN[kind] if kind == "fmi" else NATIVE_MIN["_".join(group.split("_")[:2])]


def frames_per_mean(name: str, period_min: int | None) -> int:
    """Native frames averaged into one target frame (1 when the native period is already >= period)."""
    if period_min is None:
        return 1
    native = native_minutes(name)
    return max(1, round(period_min / native)) if native < period_min else 1


def load_source(data_dir, name: str, period_min: int | None = DEFAULT_PERIOD_MIN) -> np.ndarray:
    """(T, H, W) float32 mm/h at 1 km, NaN outside coverage, averaged over `period_min` (None = native
    frames); read-only and cached for the process (a QPE day is 2.4 GB as float32)."""
    root = resolve_data_dir(data_dir).resolve()
    check_names(root, name, "source")
    return _load(str(root), name, period_min)


def load_packed(data_dir, name: str) -> np.ndarray:
    """A QPE day as its uint16 counts (24, 3500, 7000); `unpack` turns any slice into mm/h."""
    root = resolve_data_dir(data_dir).resolve()
    check_names(root, name, "source")
    if not name.startswith("qpe/"):
        raise ValueError(f"load_packed reads qpe/* sources only, got {name!r}")
    return _load_qpe(str(root), name.split("/")[1])


def unpack(counts: np.ndarray) -> np.ndarray:
    """QPE uint16 counts -> float32 mm/h (mm per hour = count x 0.1), NaN where missing."""
    out = counts.astype(np.float32) * np.float32(QPE_SCALE)
    out[counts == QPE_FILL] = np.nan
    return out


@functools.lru_cache(maxsize=None)
def _load_qpe(root: str, day: str) -> np.ndarray:
    i = QPE_DAYS.index(day)
    with h5py.File(Path(root) / QPE_FILE, "r") as f:
        d = f["precip"]
        if d.ndim != 3 or d.shape[0] != 24 * len(QPE_DAYS) or d.dtype != np.uint16:
            raise InputFormatError(f"'{Path(root) / QPE_FILE}' precip is {d.dtype} {d.shape}; expected uint16 "
                                   f"({24 * len(QPE_DAYS)}, H, W)")
        counts = d[24 * i: 24 * (i + 1)]
    counts.setflags(write=False)
    return counts


@functools.lru_cache(maxsize=4)
def _load(root: str, name: str, period_min: int | None) -> np.ndarray:
    kind, group = name.split("/")
    if kind == "qpe":
        p = unpack(_load_qpe(root, group))
    else:
        path = Path(root) / (MRMS_FILE if kind == "mrms" else RADAR_FILE)
        key = "conus/precip_halfhour_mean" if name == "mrms/conus" else f"{group}/precip"
        with h5py.File(path, "r") as f:
            if key not in f:
                raise InputFormatError(f"'{path}' has no dataset {key}; expected (T, H, W) mm/h")
            p = f[key][...].astype(np.float32, copy=False)
        if p.ndim != 3:
            raise InputFormatError(f"'{path}' {key} has shape {p.shape}; expected (T, H, W)")
        if kind == "bom":  # 0.5 km -> 1 km; a block with any NaN is NaN
            p = coarsen(p[:, : p.shape[1] // 2 * 2, : p.shape[2] // 2 * 2], 2, "mean")
        np.maximum(p, 0, out=p, where=np.isfinite(p))  # a few -0.3/-0.6 mm/h in BoM bias correction -> 0
    n = frames_per_mean(name, period_min)
    if n > 1:  # whole windows only; a NaN anywhere in a window stays NaN (coverage must be complete)
        t = p.shape[0] // n * n
        p = p[:t].reshape(t // n, n, *p.shape[1:]).mean(axis=1, dtype=np.float32)
    p.setflags(write=False)
    return p


def coarse_frames(frames: np.ndarray, factor: int, pooling: str) -> np.ndarray:
    """Pool (T, H, W) by `factor` (cropping H, W to multiples); a block with any NaN becomes NaN."""
    h, w = frames.shape[-2] // factor * factor, frames.shape[-1] // factor * factor
    out = []
    for frame in frames.reshape(-1, *frames.shape[-2:]):  # frame by frame: a CONUS stack is GBs
        hr = frame[:h, :w]
        lr = coarsen(hr, factor, pooling)
        lr[coarsen(np.isnan(hr).astype(np.float32), factor, "max") > 0] = np.nan
        out.append(lr)
    return np.stack(out).reshape(*frames.shape[:-2], h // factor, w // factor)


@functools.lru_cache(maxsize=None)
def load_coarse(root: str, name: str, factor: int, pooling: str, period_min: int | None) -> np.ndarray:
    """Pooled frames of a source (read-only, cached); QPE days are pooled hour by hour from the counts."""
    if name.startswith("qpe/"):
        counts = _load_qpe(root, name.split("/")[1])
        lr = np.stack([coarse_frames(unpack(c), factor, pooling) for c in counts])
    else:
        lr = coarse_frames(_load(root, name, period_min), factor, pooling)
    lr.setflags(write=False)
    return lr
