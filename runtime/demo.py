"""`precipfast demo`: the shipped model on a real IMERG field, end to end, with a quick-look PNG.

Input: NASA GPM IMERG Final V06B, 2017-01-03 11:00Z (from ../shared/data/imerg_samples.h5), cropped to
a 3 x 3 degree box of widespread winter rain over Ohio/West Virginia, written in precipfast's own
input schema, then sampled exactly as `precipfast sample` does.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from precipfast.errors import InputFormatError
from precipfast.runtime.io_h5 import read_input, write_precipfast_input
from precipfast.runtime.job import SampleOptions, run_sample
from precipfast.runtime.quicklook import quicklook

DEMO_FILE = "imerg_samples.h5"
DEMO_VARIABLE = "v06b_final_conus_20170103T1100/precipitationCal"
DEMO_BBOX = (38.0, 41.0, -83.0, -80.0)  # south, north, west, east
DEMO_THRESHOLD_MM_H = 1.0


def run_demo(out_dir="out/demo", data_dir="../shared/data", *, members: int = 8, steps: int = 10, seed: int = 0,
             backend: str = "auto", quiet: bool = False) -> dict:
    src = Path(data_dir) / DEMO_FILE
    if not src.is_file():
        raise InputFormatError(f"demo input {str(src)!r} not found; expected the shared data directory with "
                               f"{DEMO_FILE} (pass --data DIR)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    field = read_input(src, variable=DEMO_VARIABLE, bbox=DEMO_BBOX)
    inp = write_precipfast_input(out / "input.h5", field.precip, field.lat, field.lon)
    summary = run_sample(inp, out / "ensemble.h5", None,
                         SampleOptions(members=members, steps=steps, seed=seed, backend=backend, overwrite=True),
                         quiet=quiet)
    with h5py.File(out / "ensemble.h5", "r") as f:
        thr = list(np.asarray(f["threshold"][:]))
        k = int(np.argmin(np.abs(np.asarray(thr) - DEMO_THRESHOLD_MM_H)))
        lat, lon = f["lat"][:], f["lon"][:]
        png = quicklook(out / "quicklook.png", field.precip[0], f["corrected_lr"][0], f["precip"][0, :3],
                        f["precip_mean"][0], f["exceedance_probability"][0, k], float(thr[k]),
                        extent_lr=_extent(field.lat, field.lon), extent=_extent(lat, lon),
                        title=f"IMERG V06B 2017-01-03 11:00Z -> 1 km ensemble ({members} members, {steps} steps)")
    summary["quicklook"] = str(png)
    return summary


def _extent(lat, lon):
    dlat, dlon = abs(lat[1] - lat[0]) / 2, abs(lon[1] - lon[0]) / 2
    return (float(lon[0] - dlon), float(lon[-1] + dlon), float(lat[-1] - dlat), float(lat[0] + dlat))
