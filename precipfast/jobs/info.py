"""`precipfast info`: what a bundle, an output file, an input file or this machine's backends are."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import h5py
import numpy as np

from precipfast.errors import InputFormatError
from precipfast.runtime.engines.backends import available_backends
from precipfast.runtime.engines.bundle import default_bundle_path, open_bundle
from precipfast.runtime.files.ensemble_file import is_output, read_output
from precipfast.runtime.files.reader import read_input


def describe(path=None, show_backends: bool = False) -> dict:
    """Summary dict of a bundle directory (default: the shipped bundle), an output HDF5 file ({"output":
    ...}) or an input file `precipfast sample` accepts ({"input": ...})."""
    info: dict = {}
    p = Path(path) if path else default_bundle_path()
    if not p.exists():
        raise InputFormatError(f"no such file or directory: '{p}'; expected an output or input HDF5 file or a "
                               f"model bundle directory")
    if p.is_file():
        info.update(_describe_file(p))
    else:
        b = open_bundle(p)
        m = b.manifest
        info["bundle"] = {"path": str(b.path), "name": m["name"], "model_version": m.get("model_version"),
                          "scale_factor": m["scale_factor"], "lr_pixel_deg": m["lr_pixel_deg"],
                          "hr_pixel_deg": m["hr_pixel_deg"], "pooling": m["pooling"], "transform": m["transform"],
                          "stages": {s: {"cond_channels": st["cond_channels"], "unet": st["unet"],
                                         "sampler": st["sampler"], "sigma_data": st["edm"]["sigma_data"],
                                         "train": st.get("train", {}),
                                         # the tile the stage is sampled at, or the user's --tile
                                         "tile": st.get("tile", "--tile")}
                                     for s, st in m["stages"].items()},
                          "files": m["files"]}
    if show_backends or not path:
        info["backends"] = {name: {"available": ok, "reason": why}
                            for name, (ok, why) in available_backends().items()}
    return info


def _describe_file(p: Path) -> dict:
    """{"output": ...} for a precipfast output, {"input": ...} for a file `sample` reads (checked as it would)."""
    if not h5py.is_hdf5(p):
        raise InputFormatError(f"'{p}' is not an HDF5 file; expected a precipfast output, an input (precipfast "
                               f"or IMERG HDF5) or a model bundle directory")
    if is_output(p):
        return {"output": read_output(p)}
    field = read_input(p)
    valid = field.precip[~np.isnan(field.precip)]
    times = (None if field.times is None else
             [dt.datetime.fromtimestamp(int(t), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") for t in field.times])
    return {"input": {"path": str(p), "format": field.source_format, "variable": field.variable,
                      "shape": {"time": field.precip.shape[0], "lat": field.precip.shape[1],
                                "lon": field.precip.shape[2]},
                      "pixel_deg": round(field.pixel_deg, 6),
                      "lat_range": [float(field.lat.min()), float(field.lat.max())],
                      "lon_range": [float(field.lon.min()), float(field.lon.max())], "times": times,
                      "missing_fraction": round(1 - valid.size / field.precip.size, 4),
                      "max_mm_h": round(float(valid.max()), 3), "aux": sorted(field.aux), "sha256": field.sha256}}
