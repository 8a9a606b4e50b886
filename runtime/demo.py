"""`precipfast demo`: the shipped model on the real IMERG crop shipped in the package (runtime/demo_input.py),
sampled exactly as `precipfast sample` does, with a quick-look PNG."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from precipfast.errors import InputFormatError
from precipfast.options import DemoOptions
from precipfast.runtime.demo_input import demo_input_path
from precipfast.runtime.quicklook import quicklook
from precipfast.runtime.sample_job import run_sample

DEMO_THRESHOLD_MM_H = 1.0


def run_demo(opts: DemoOptions = DemoOptions()) -> dict:
    """Sample the shipped input into opts.out/ensemble.h5 and draw opts.out/quicklook.png."""
    src = demo_input_path()
    if not src.is_file():
        raise InputFormatError(f"demo input {str(src)!r} is missing from this installation; expected the "
                               f"package data precipfast/data/demo_imerg.h5")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = run_sample(src, out / "ensemble.h5", opts.sample_options())
    with h5py.File(src, "r") as f:
        lr, lat_lr, lon_lr = f["precip"][0], f["lat"][:], f["lon"][:]
    with h5py.File(out / "ensemble.h5", "r") as f:
        thr = np.asarray(f["threshold"][:])
        k = int(np.argmin(np.abs(thr - DEMO_THRESHOLD_MM_H)))
        lat, lon = f["lat"][:], f["lon"][:]
        steps = f.attrs["steps"]
        png = quicklook(out / "quicklook.png", lr, f["corrected_lr"][0], f["precip"][0, :3],
                        f["precip_mean"][0], f["exceedance_probability"][0, k], float(thr[k]),
                        extent_lr=_extent(lat_lr, lon_lr), extent=_extent(lat, lon),
                        title=f"IMERG V06B 2017-01-03 11:00Z -> 1 km ensemble ({opts.members} members, "
                              f"{steps} steps)")
    summary["quicklook"] = str(png)
    return summary


def _extent(lat, lon):
    dlat, dlon = abs(lat[1] - lat[0]) / 2, abs(lon[1] - lon[0]) / 2
    return (float(lon[0] - dlon), float(lon[-1] + dlon), float(lat[-1] - dlat), float(lat[0] + dlat))
