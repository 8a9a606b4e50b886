"""The one reader of the output format (runtime/files/ensemble_file.py): north-up reads of a file written
south-up, and the refusal of what is not an output, with its message."""
import re

import h5py
import numpy as np
import pytest

from precipfast.errors import InputFormatError
from precipfast.runtime.files.ensemble_file import is_output, open_ensemble, read_output
from precipfast.runtime.files.input_writer import write_precipfast_input
from precipfast.runtime.files.writer import write_output

ATTRS = {"model_name": "tiny", "model_sha256": "ab" * 32, "steps": 18, "seed": 3, "backend": "torch",
         "input_sha256": "cd" * 32}
T, E, H, W, F = 2, 3, 6, 8, 2
NORTH_UP_LAT, LON = 40.0 - 0.01 * np.arange(H), -100.0 + 0.01 * np.arange(W)
LAT_LR, LON_LR = NORTH_UP_LAT.reshape(-1, F).mean(1), LON.reshape(-1, F).mean(1)


def _members():
    rng = np.random.default_rng(0)
    return (rng.gamma(0.4, 4.0, (T, E, H, W)).astype(np.float32),
            rng.gamma(0.4, 4.0, (T, E, H // F, W // F)).astype(np.float32))


def test_a_south_up_file_with_descending_lon_reads_north_up(tmp_path):
    precip, corrected = _members()  # north-up; written with both grid axes reversed
    path = write_output(tmp_path / "o.h5", {"precip": precip[..., ::-1, ::-1],
                                            "corrected_lr": corrected[..., ::-1, ::-1]},
                        lat=NORTH_UP_LAT[::-1], lon=LON[::-1], lat_lr=LAT_LR[::-1], lon_lr=LON_LR[::-1],
                        times=[1483441200, 1483443000], attrs=ATTRS)
    with open_ensemble(path) as ens:
        assert ens.flip_lat and ens.flip_lon and (ens.n_times, ens.n_members) == (T, E)
        np.testing.assert_array_equal(ens.lat, NORTH_UP_LAT)
        np.testing.assert_array_equal(ens.lon, LON)
        np.testing.assert_array_equal(ens.lat_lr, LAT_LR)
        np.testing.assert_array_equal(ens.lon_lr, LON_LR)
        np.testing.assert_array_equal(ens.read(1), precip[1])
        np.testing.assert_array_equal(ens.read(0, 2, slice(1, 4), slice(5, 8)), precip[0, 2, 1:4, 5:8])
        np.testing.assert_array_equal(ens.field("corrected_lr", 1), corrected[1])
        np.testing.assert_allclose(ens.field("precip_mean", 0), precip[0].mean(0), rtol=1e-6)
        k = int(np.argmin(np.abs(ens.thresholds - 1.0)))
        np.testing.assert_allclose(ens.field("exceedance_probability", 0, k), (precip[0] > 1.0).mean(0), rtol=1e-6)
        assert ens.label(1) == 1483443000 and ens.attrs["model_name"] == "tiny" and ens.has("corrected_lr")
        assert ens.describe() == (f"ensemble '{path}' 6x8 px of 0.01 deg, lat 40.0000..39.9500, "
                                  f"lon -100.0000..-99.9300")


def _refused(path, message):
    with pytest.raises(InputFormatError, match=re.escape(message)), open_ensemble(path):
        pass


def test_what_is_not_an_output_is_refused_with_its_message(tmp_path):
    _refused(tmp_path / "none.h5",
             f"ensemble file '{tmp_path / 'none.h5'}' does not exist; expected the output of `precipfast sample`")
    (tmp_path / "notes.txt").write_text("not HDF5")
    _refused(tmp_path / "notes.txt",
             f"ensemble '{tmp_path / 'notes.txt'}' is not an HDF5 file; expected the output of `precipfast sample`")
    inp = write_precipfast_input(tmp_path / "in.h5", np.ones((3, 3), np.float32), [1.2, 1.1, 1.0], [0, 0.1, 0.2])
    assert not is_output(inp)
    _refused(inp, f"ensemble '{inp}' has 'precip' of shape (3, 3); expected precip (time, member, lat, lon) with "
                  f"1-D lat, lon, time (a `precipfast sample` output)")
    with pytest.raises(InputFormatError, match=re.escape(
            f"'{inp}' has no 'precip' with a 'member' axis; expected a precipfast output")):
        read_output(inp)
    with h5py.File(tmp_path / "bare.h5", "w") as f:
        f["precip"] = np.ones((1, 2, 3, 3), np.float32)
        f["lat"], f["lon"] = [1.2, 1.1, 1.0], [0, 0.1, 0.2]
    _refused(tmp_path / "bare.h5", f"ensemble '{tmp_path / 'bare.h5'}': 'time' is missing; expected 1-D of 1 "
                                   f"values to match precip (1, 2, 3, 3)")


def test_an_output_without_the_correction_stage(tmp_path):
    precip, _ = _members()
    path = write_output(tmp_path / "o.h5", {"precip": precip}, lat=NORTH_UP_LAT, lon=LON, attrs=ATTRS)
    assert is_output(path)
    with open_ensemble(path) as ens:
        assert not ens.flip_lat and not ens.flip_lon and ens.times is None and ens.lat_lr is None
        assert not ens.has("corrected_lr")
        np.testing.assert_array_equal(ens.read(0), precip[0])
        with pytest.raises(InputFormatError, match=re.escape(
                f"ensemble '{path}' has no 'corrected_lr'; expected a `precipfast sample` output")):
            ens.field("corrected_lr", 0)
