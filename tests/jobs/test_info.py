"""`precipfast info` (precipfast/jobs/info.py): what an output file, a bundle or a wrong path is."""
import h5py
import numpy as np
import pytest

from precipfast.errors import InputFormatError
from precipfast.jobs.info import describe
from precipfast.runtime.files.ensemble_file import read_output
from precipfast.runtime.files.input_writer import write_precipfast_input
from precipfast.runtime.files.writer import write_output

ATTRS = {"model_name": "tiny", "model_sha256": "ab" * 32, "steps": 18, "seed": 3, "backend": "torch",
         "input_sha256": "cd" * 32}
T, E, H, W, F = 2, 4, 6, 10, 2
LAT, LON = 40.0 - 0.01 * np.arange(H), -100.0 + 0.01 * np.arange(W)


def test_read_output_summary(tmp_path):
    rng = np.random.default_rng(0)
    result = {"precip": rng.gamma(0.4, 4.0, (T, E, H, W)).astype(np.float32),
              "corrected_lr": rng.gamma(0.4, 4.0, (T, E, H // F, W // F)).astype(np.float32)}
    path = write_output(tmp_path / "o.h5", result, lat=LAT, lon=LON, lat_lr=LAT.reshape(-1, F).mean(1),
                        lon_lr=LON.reshape(-1, F).mean(1), times=np.array([1483441200, 1483443000]), attrs=ATTRS)
    info = read_output(path)
    assert info["dims"] == {"time": T, "member": E, "threshold": 5, "lat": H, "lon": W, "lat_lr": H // F,
                            "lon_lr": W // F}
    assert info["variables"]["precip"]["dims"] == ("time", "member", "lat", "lon")
    assert info["variables"]["exceedance_probability"]["units"] == "1"
    assert info["attrs"]["model_name"] == "tiny" and info["attrs"]["steps"] == 18
    with pytest.raises(InputFormatError, match="does not exist"):
        read_output(tmp_path / "none.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(InputFormatError, match="has no 'precip' with a 'member' axis; expected a precipfast output"):
        read_output(tmp_path / "other.h5")


def test_an_input_file_is_described_as_an_input(tmp_path):
    inp = write_precipfast_input(tmp_path / "in.h5", np.ones((3, 3), np.float32), [1.2, 1.1, 1.0], [0, 0.1, 0.2])
    info = describe(inp)
    assert "output" not in info and info["input"]["shape"] == {"time": 1, "lat": 3, "lon": 3}
    assert info["input"]["max_mm_h"] == 1.0 and info["input"]["missing_fraction"] == 0.0


def test_a_missing_path_says_what_was_expected(tmp_path):
    with pytest.raises(InputFormatError, match="no such file or directory: .*; expected an output or input HDF5 file or a model bundle"):
        describe(tmp_path / "nope.h5")
