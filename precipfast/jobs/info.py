"""`precipfast info`: what a bundle, an output file, an input file or this machine's backends are."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import h5py
import numpy as np

from precipfast.errors import InputFormatError
from precipfast.runtime.engines.backends import available_backends
from precipfast.runtime.engines.bundle import default_bundle_path, open_bundle
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
    with h5py.File(p, "r") as f:
        is_output = isinstance(f.get("precip"), h5py.Dataset) and f["precip"].ndim == 4 and "model_sha256" in f.attrs
    if is_output:
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
