"""The demo runs from the package alone: a real IMERG crop beside ../shared/data, else a synthetic field."""
import h5py
import numpy as np

from precipfast.jobs.demo import run_demo
from precipfast.jobs.demo_input import DEMO_BBOX, synthetic_field, write_demo_input
from precipfast.options import DemoOptions
from precipfast.runtime.files.reader import read_input


def test_without_shared_data_the_demo_input_is_a_synthetic_rain_field(tmp_path):
    path, source = write_demo_input(tmp_path / "in.h5", imerg_samples=tmp_path / "absent.h5")
    field = read_input(path)
    assert "synthetic" in source and field.precip.shape == (1, 20, 20) and abs(field.pixel_deg - 0.1) < 1e-4
    s, n, w, e = DEMO_BBOX
    assert s < field.lat.min() < field.lat.max() < n and w < field.lon.min() < field.lon.max() < e
    r = synthetic_field()
    assert 1.0 < np.median(r) < 3.5 and 8.0 < r.max() < 15.0 and (r > 0.1).all()
    assert np.array_equal(r, synthetic_field())                      # fixed seed


def test_with_shared_data_the_demo_input_is_the_real_imerg_crop(tmp_path, shared_data):
    path, source = write_demo_input(tmp_path / "in.h5", imerg_samples=shared_data / "imerg_samples.h5")
    field = read_input(path)
    assert "IMERG" in source and field.precip.shape == (1, 20, 20) and int(field.times[0]) == 1483441200
    assert np.nanmean(field.precip > 0.1) > 0.9                      # widespread winter rain
    with h5py.File(path, "r") as f:
        assert "IMERG" in f.attrs["source"]


def test_demo_writes_the_ensemble_and_the_quicklook(shipped_bundle, tmp_path):
    out = tmp_path / "demo"
    summary = run_demo(DemoOptions(out=str(out), members=1, steps=8, backend="onnxruntime", device="cpu",
                                   quiet=True))
    assert (out / "ensemble.h5").is_file() and (out / "quicklook.png").stat().st_size > 20_000
    assert summary["hr_shape"] == [200, 200]
    with h5py.File(out / "ensemble.h5", "r") as f:
        assert f.attrs["steps"] == 8 and np.nanmin(f["precip"][...]) >= 0
