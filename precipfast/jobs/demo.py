"""`precipfast demo`: the shipped model on the demo input (precipfast/jobs/demo_input.py: a real IMERG crop beside
../shared/data, a synthetic field elsewhere), sampled exactly as `precipfast sample` does, with a quick-look."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from precipfast.jobs.demo_input import write_demo_input
from precipfast.jobs.quicklook import quicklook
from precipfast.jobs.sample import run_sample
from precipfast.options import DemoOptions
from precipfast.runtime.files.ensemble_file import open_ensemble

DEMO_THRESHOLD_MM_H = 1.0


def run_demo(opts: DemoOptions = DemoOptions()) -> dict:
    """Sample the shipped input into opts.out/ensemble.h5 and draw opts.out/quicklook.png."""
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    src, source = write_demo_input(out / "input.h5")
    summary = run_sample(src, out / "ensemble.h5", opts.sample_options())
    with h5py.File(src, "r") as f:
        lr, lat_lr, lon_lr = f["precip"][0], f["lat"][:], f["lon"][:]
    with open_ensemble(out / "ensemble.h5") as ens:
        thr = ens.thresholds
        k = int(np.argmin(np.abs(thr - DEMO_THRESHOLD_MM_H)))
        png = quicklook(out / "quicklook.png", lr, ens.field("corrected_lr", 0), ens.read(0, slice(0, 3)),
                        ens.field("precip_mean", 0), ens.field("exceedance_probability", 0, k), float(thr[k]),
                        extent_lr=_extent(lat_lr, lon_lr), extent=_extent(ens.lat, ens.lon),
                        title=f"{source} -> 1 km ensemble ({opts.members} members, "
                              f"{ens.attrs['steps']} steps)")
    summary["quicklook"] = str(png)
    return summary


def _extent(lat, lon):
    dlat, dlon = abs(lat[1] - lat[0]) / 2, abs(lon[1] - lon[0]) / 2
    return (float(lon[0] - dlon), float(lon[-1] + dlon), float(lat[-1] - dlat), float(lat[0] + dlat))
