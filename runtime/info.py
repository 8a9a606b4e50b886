"""`precipfast info`: what a bundle, an output file or this machine's backends are."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from precipfast.errors import InputFormatError


def describe(path=None, show_backends: bool = False) -> dict:
    """Summary dict of a bundle directory (default: the shipped bundle) or an output HDF5 file."""
    from precipfast.runtime.bundle import default_bundle_path, open_bundle
    info: dict = {}
    p = Path(path) if path else default_bundle_path()
    if not p.exists():
        raise InputFormatError(f"'{p}' does not exist; expected a bundle directory or a precipfast output file")
    if p.is_file():
        info["output"] = read_output(p)
    else:
        b = open_bundle(p)
        m = b.manifest
        info["bundle"] = {"path": str(b.path), "name": m["name"], "model_version": m.get("model_version"),
                          "scale_factor": m["scale_factor"], "lr_pixel_deg": m["lr_pixel_deg"],
                          "hr_pixel_deg": m["hr_pixel_deg"], "pooling": m["pooling"], "transform": m["transform"],
                          "stages": {s: {"cond_channels": st["cond_channels"], "unet": st["unet"],
                                         "sampler": st["sampler"], "sigma_data": st["edm"]["sigma_data"],
                                         "train": st.get("train", {})}
                                     for s, st in m["stages"].items()},
                          "files": m["files"]}
    if show_backends or not path:
        from precipfast.runtime.backends import available_backends
        info["backends"] = {name: {"available": ok, "reason": why}
                            for name, (ok, why) in available_backends().items()}
    return info


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
