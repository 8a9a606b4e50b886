"""`precipfast info`: what a bundle, an output file or this machine's backends are."""
from __future__ import annotations

from pathlib import Path


def describe(path=None, show_backends: bool = False) -> dict:
    """Summary dict of a bundle directory (default: the shipped bundle) or an output HDF5 file."""
    from precipfast.export.bundle import default_bundle_path, open_bundle
    info: dict = {}
    p = Path(path) if path else default_bundle_path()
    if p.is_file():
        from precipfast.runtime.output import read_output
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
