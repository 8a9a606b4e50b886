"""train/sources.py: the radar catalogue read as mean rates over the input's period."""
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from precipfast.errors import InputFormatError
from precipfast.train.sources import (
    FILES,
    QPE_FILE,
    RADAR_FILE,
    available_sources,
    frames_per_mean,
    load_source,
    resolve_data_dir,
    unpack,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not all((DATA / f).is_file() for f in FILES), reason=f"no radar files in {DATA}")


def test_frames_per_half_hour_mean():
    assert frames_per_mean("fmi/fmi_20160928", 30) == 3          # 10-min scans
    assert frames_per_mean("bom/bom_2_20180616", 30) == 5        # 6-min
    assert frames_per_mean("bom/bom_66_20201031", 30) == 3
    assert frames_per_mean("mrms/region_3", 30) == 15            # 2-min
    assert frames_per_mean("qpe/20160920", 30) == 1              # hourly: already a mean, used as it is
    assert frames_per_mean("mrms/conus", 30) == 1
    assert frames_per_mean("fmi/fmi_20160928", None) == 1


def test_unpack_scales_counts_and_masks_the_fill():
    counts = np.array([[0, 1, 173], [65535, 2999, 10]], dtype=np.uint16)
    out = unpack(counts)
    np.testing.assert_allclose(out[0], [0.0, 0.1, 17.3], rtol=1e-6)
    assert np.isnan(out[1, 0]) and out[1, 1] == pytest.approx(299.9) and out.dtype == np.float32


@needs_data
def test_half_hour_means_average_native_frames():
    native = load_source(DATA, "fmi/fmi_20170509", None)
    mean = load_source(DATA, "fmi/fmi_20170509")
    assert native.shape[0] == 20 and mean.shape == (6, *native.shape[1:])
    np.testing.assert_allclose(mean[1], native[3:6].mean(axis=0), rtol=1e-5, equal_nan=True)
    assert not mean.flags.writeable


@needs_data
def test_catalogue_names_every_source():
    names = available_sources(DATA)
    assert names[:4] == ("qpe/20160920", "qpe/20160921", "qpe/20160922", "mrms/conus")
    assert {"mrms/region_3", "fmi/fmi_20160928", "bom/bom_2_20180616"} <= set(names)


@needs_data
def test_qpe_packing_matches_the_file_attributes():
    with h5py.File(DATA / QPE_FILE, "r") as f:
        d = f["precip"]
        assert float(d.attrs["scale_factor"]) == pytest.approx(0.1)
        block = d[30, 1000:1010, 3000:3010]
    np.testing.assert_allclose(unpack(block), np.where(block == 65535, np.nan, block * 0.1), rtol=1e-6)


def test_missing_data_dir_is_named(tmp_path):
    with pytest.raises(InputFormatError, match="does not exist; expected a folder such as ../shared/data"):
        resolve_data_dir(tmp_path / "nowhere")


@needs_data
def test_missing_data_file_is_named(tmp_path):
    for name in FILES:
        if name != RADAR_FILE:
            os.symlink(DATA / name, tmp_path / name)
    with pytest.raises(InputFormatError, match=f"'{tmp_path / RADAR_FILE}' is missing"):
        resolve_data_dir(tmp_path)
