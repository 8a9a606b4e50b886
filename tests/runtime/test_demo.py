"""The demo runs from the package alone: its IMERG input ships as package data (runtime/demo_input.py)."""
import h5py
import numpy as np

from precipfast.options import DemoOptions
from precipfast.runtime.demo import run_demo
from precipfast.runtime.demo_input import DEMO_BBOX, demo_input_path
from precipfast.runtime.io_h5 import read_input


def test_demo_input_ships_in_the_package():
    path = demo_input_path()
    assert path.is_file() and path.stat().st_size < 32_000  # a few KB: a 20 x 20 crop
    field = read_input(path)
    assert field.precip.shape == (1, 20, 20) and field.pixel_deg == np.float64(field.pixel_deg)
    assert abs(field.pixel_deg - 0.1) < 1e-4 and int(field.times[0]) == 1483441200  # 2017-01-03T11:00Z
    s, n, w, e = DEMO_BBOX
    assert s < field.lat.min() < field.lat.max() < n and w < field.lon.min() < field.lon.max() < e
    assert np.nanmean(field.precip > 0.1) > 0.9  # widespread rain, real (not a synthetic blob)
    with h5py.File(path, "r") as f:
        assert "IMERG" in f.attrs["source"] and f.attrs["made_by"] == "python -m precipfast.runtime.demo_input"


def test_demo_writes_the_ensemble_and_the_quicklook(shipped_bundle, tmp_path):
    out = tmp_path / "demo"
    summary = run_demo(DemoOptions(out=str(out), members=1, steps=8, backend="onnxruntime", device="cpu",
                                   quiet=True))
    assert (out / "ensemble.h5").is_file() and (out / "quicklook.png").stat().st_size > 20_000
    assert summary["hr_shape"] == [200, 200]
    with h5py.File(out / "ensemble.h5", "r") as f:
        assert f.attrs["steps"] == 8 and np.nanmin(f["precip"][...]) >= 0
