"""The demo's input, shipped in the package (precipfast/data/demo_imerg.h5) so `precipfast demo` needs
nothing beside the checkout: a 2 x 2 degree crop (20 x 20 pixels, 0.1 deg) of the real NASA GPM IMERG
Final V06B half-hour field of 2017-01-03 11:00Z over Ohio / West Virginia (widespread winter rain), taken
from ../shared/data/imerg_samples.h5 and written in precipfast's own input schema.

Reproduce it with
    python -m precipfast.runtime.demo_input ../shared/data/imerg_samples.h5 precipfast/data/demo_imerg.h5
"""
from __future__ import annotations

import sys
from pathlib import Path

import h5py

DEMO_SOURCE_VARIABLE = "v06b_final_conus_20170103T1100/precipitationCal"
DEMO_BBOX = (38.5, 40.5, -82.5, -80.5)  # south, north, west, east (degrees)


def demo_input_path() -> Path:
    """The shipped demo input inside the installed package."""
    import precipfast
    return Path(precipfast.__file__).parent / "data" / "demo_imerg.h5"


def make_demo_input(src, out) -> Path:
    """Crop DEMO_BBOX out of imerg_samples.h5 and write it, with its provenance, to `out`."""
    from precipfast.runtime.input_writer import write_precipfast_input
    from precipfast.runtime.io_h5 import read_input

    field = read_input(src, variable=DEMO_SOURCE_VARIABLE, bbox=DEMO_BBOX)
    path = write_precipfast_input(out, field.precip, field.lat, field.lon, times=field.times)
    with h5py.File(path, "a") as f:
        f.attrs.update(source="NASA GPM IMERG Final Run V06B, half-hourly precipitationCal",
                       source_file=f"imerg_samples.h5:/{DEMO_SOURCE_VARIABLE}",
                       source_sha256=field.sha256, bbox_south_north_west_east=DEMO_BBOX,
                       made_by="python -m precipfast.runtime.demo_input")
    return path


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) != 3:
        sys.exit("usage: python -m precipfast.runtime.demo_input IMERG_SAMPLES_H5 OUT_H5")
    print(make_demo_input(sys.argv[1], sys.argv[2]))
