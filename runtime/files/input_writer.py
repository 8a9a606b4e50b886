"""Writing precipfast's own input schema (the reader is runtime/files/reader.py): for tests, the demo input and
users who convert their own fields."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np


def write_precipfast_input(path, precip, lat, lon, times=None, aux=None) -> Path:
    """Write the precipfast input schema: precip (H, W) or (T, H, W) mm/h, 1-D lat/lon, time, aux/<name>."""
    precip = np.asarray(precip, dtype=np.float32)
    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    if precip.ndim not in (2, 3) or precip.shape[-2:] != (lat.size, lon.size) or lat.ndim != 1 or lon.ndim != 1:
        raise ValueError(f"precip must be (H, W) or (T, H, W) with H = len(lat), W = len(lon); got precip "
                         f"{precip.shape}, lat {lat.shape}, lon {lon.shape}")
    path = Path(path)
    with h5py.File(path, "w") as f:
        chunks = (1,) * (precip.ndim - 2) + tuple(min(n, 512) for n in precip.shape[-2:])
        d = f.create_dataset("precip", data=precip, chunks=chunks, compression="gzip", shuffle=True)
        d.attrs.update(units="mm/h", long_name="precipitation rate")
        f.create_dataset("lat", data=lat).attrs["units"] = "degrees_north"
        f.create_dataset("lon", data=lon).attrs["units"] = "degrees_east"
        if times is not None:
            t = np.asarray(times, np.int64).reshape(-1)
            if t.size != (precip.shape[0] if precip.ndim == 3 else 1):
                raise ValueError(f"times has {t.size} values; precip {precip.shape} needs one per time step")
            f.create_dataset("time", data=t).attrs["units"] = "seconds since 1970-01-01 00:00:00"
        for name, a in (aux or {}).items():
            a = np.asarray(a, np.float32)
            if a.shape != precip.shape[-2:]:
                raise ValueError(f"aux {name!r} is {a.shape}; expected {precip.shape[-2:]} (H, W)")
            f.create_dataset(f"aux/{name}", data=a, compression="gzip", shuffle=True)
    return path
