"""The demo's input, written into the demo's output folder: no data file ships in the package (real data
stays in ../shared/data).

- Beside a checkout with ../shared/data: a 2 x 2 degree crop (20 x 20 pixels, 0.1 deg) of the real NASA GPM
  IMERG Final V06B half-hour field of 2017-01-03 11:00Z over Ohio / West Virginia (widespread winter rain).
- Anywhere else (a user's fresh clone): a synthetic field on the same grid, made here from a fixed seed:
  smooth stratiform rain (log-normal, 1-4 mm/h, correlation length ~30 km) with two embedded cells of
  ~10 mm/h. It shows the pipeline end to end; it is not a measurement.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from precipfast.runtime.files.input_writer import write_precipfast_input
from precipfast.runtime.files.reader import read_input

IMERG_SAMPLES = Path("../shared/data/imerg_samples.h5")
DEMO_SOURCE_VARIABLE = "v06b_final_conus_20170103T1100/precipitationCal"
DEMO_BBOX = (38.5, 40.5, -82.5, -80.5)  # south, north, west, east (degrees)
DEMO_TIME = 1483441200                  # 2017-01-03T11:00Z


def write_demo_input(out, imerg_samples=IMERG_SAMPLES) -> tuple[Path, str]:
    """Write the demo input to `out`; returns (path, description for the quick-look title)."""
    if Path(imerg_samples).is_file():
        field = read_input(imerg_samples, variable=DEMO_SOURCE_VARIABLE, bbox=DEMO_BBOX)
        path = write_precipfast_input(out, field.precip, field.lat, field.lon, times=field.times)
        source = "IMERG V06B 2017-01-03 11:00Z"
    else:
        lat = DEMO_BBOX[1] - 0.05 - 0.1 * np.arange(20)
        lon = DEMO_BBOX[2] + 0.05 + 0.1 * np.arange(20)
        path = write_precipfast_input(out, synthetic_field()[None], lat, lon, times=[DEMO_TIME])
        source = "synthetic stratiform field (no ../shared/data)"
    with h5py.File(path, "a") as f:
        f.attrs["source"] = source
    return path, source


def synthetic_field(n: int = 20, seed: int = 20170103) -> np.ndarray:
    """(n, n) mm/h: exp of a smoothed Gaussian field (stratiform, median ~2 mm/h) plus two Gaussian cells."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, n))
    k = np.exp(-0.5 * (np.arange(-4, 5) / 1.5) ** 2)
    k /= k.sum()
    for axis in (0, 1):  # separable blur, ~3 px (30 km) correlation
        z = np.apply_along_axis(lambda v: np.convolve(np.pad(v, 4, mode="wrap"), k, "valid"), axis, z)
    z = (z - z.mean()) / z.std()
    yy, xx = np.mgrid[:n, :n]
    cells = sum(8.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.5 ** 2)) for cy, cx in ((6, 13), (14, 5)))
    return (2.0 * np.exp(0.4 * z) + cells).astype(np.float32)
