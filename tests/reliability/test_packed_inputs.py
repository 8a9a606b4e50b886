"""Packed inputs: CF scale_factor / add_offset / _FillValue / missing_value / valid_range decoded the way
netCDF readers do (masks on the packed values, then unpacking), units converted or refused, and sizes a
file declares checked before anything is read."""
import h5py
import numpy as np
import pytest
from faultkit import cli, one_line, snapshot

from precipfast.runtime.files.input_writer import write_precipfast_input
from precipfast.runtime.files.reader import read_input

LAT = 40.95 - 0.1 * np.arange(10)
LON = -100.95 + 0.1 * np.arange(12)


def _counts():
    yy, xx = np.mgrid[0:10, 0:12]
    rate = 8.68 * np.exp(-((yy - 5) ** 2 + (xx - 6) ** 2) / 8.0)
    counts = np.round(rate / 0.01).astype(np.int16)[None]  # (1, H, W) hundredths of mm/h
    counts[0, 0, 0] = -9999                                # missing
    return counts


def _packed(path, data, **attrs):
    with h5py.File(path, "w") as f:
        d = f.create_dataset("precip", data=data)
        d.attrs.update(attrs)
        f["lat"], f["lon"] = LAT, LON
        f["time"] = np.array([1_500_000_000])
    return path


def test_packed_input_gives_the_members_of_its_float32_twin(tmp_path, tiny_bundle):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    _packed(tmp_path / "packed.h5", _counts(), scale_factor=np.float32(0.01), _FillValue=np.int16(-9999),
            units="mm/h")
    with xr.open_dataset(tmp_path / "packed.h5", engine="h5netcdf", phony_dims="sort") as ds:  # the twin as xarray decodes it
        twin = ds["precip"].values
    assert twin.dtype == np.float32 and np.isnan(twin[0, 0, 0]) and abs(np.nanmax(twin) - 8.68) < 1e-5
    write_precipfast_input(tmp_path / "float.h5", twin, LAT, LON, times=[1_500_000_000])
    np.testing.assert_array_equal(read_input(tmp_path / "packed.h5").precip, twin)
    args = ["--model", tiny_bundle, "--members", "2", "--steps", "2", "--backend", "torch", "--quiet"]
    for name in ("packed", "float"):
        res = cli("sample", tmp_path / f"{name}.h5", "-o", tmp_path / f"{name}_ens.h5", *args)
        assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "packed_ens.h5") as a, h5py.File(tmp_path / "float_ens.h5") as b:
        for var in ("precip", "corrected_lr", "precip_mean"):
            np.testing.assert_array_equal(a[var][()], b[var][()])


CASES = {  # attrs, raw values -> expected mm/h (NaN = masked)
    "scale+fill": (dict(scale_factor=0.01, _FillValue=np.int16(-9999)), [868, -9999, 0], [8.68, np.nan, 0.0]),
    "uint16 MRMS": (dict(scale_factor=np.float32(0.1), _FillValue=np.uint16(65535)), np.array([10, 65535, 3],
                    np.uint16), [1.0, np.nan, 0.3]),
    "offset": (dict(scale_factor=0.5, add_offset=1.0), [0, 2, 4], [1.0, 2.0, 3.0]),
    "missing_value": (dict(scale_factor=0.01, missing_value=np.int16(-1)), [100, -1, 5], [1.0, np.nan, 0.05]),
    "valid_range": (dict(scale_factor=0.01, valid_range=np.array([0, 20000], np.int16)), [100, 30000, -5],
                    [1.0, np.nan, np.nan]),
    "valid_min/max": (dict(scale_factor=0.01, valid_min=np.int16(0), valid_max=np.int16(500)), [100, 600, -3],
                      [1.0, np.nan, np.nan]),
    "kg m-2 s-1": (dict(units="kg m-2 s-1"), np.array([1e-3, 0.0, 5e-4], np.float32), [3.6, 0.0, 1.8]),
    "mm hr-1": (dict(units="mm hr-1"), np.array([1.5, 0.0, 2.0], np.float32), [1.5, 0.0, 2.0]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cf_decoding(tmp_path, case):
    attrs, raw, want = CASES[case]
    raw = np.asarray(raw, dtype=getattr(raw, "dtype", np.int16))
    data = np.zeros((1, 10, 12), raw.dtype)
    data[0, 4, 4:7] = raw
    field = read_input(_packed(tmp_path / "p.h5", data, **attrs))
    got = field.precip[0, 4, 4:7]  # lat is descending in the file already: rows keep their order
    np.testing.assert_allclose(got, np.asarray(want, np.float32), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("units", ["mm", "mm/day", "K"])
def test_other_units_are_refused(tmp_path, units):
    path = _packed(tmp_path / "u.h5", np.ones((1, 10, 12), np.float32), units=units)
    before = snapshot(tmp_path)
    res = cli("sample", path, "-o", tmp_path / "o.h5")
    one_line(res, 1, f"'/precip': has units '{units}'; expected a rain rate in mm/h (or mm/hr, mm h-1, mm hr-1) "
                     f"or kg m-2 s-1")
    assert snapshot(tmp_path) == before


def test_huge_declared_dataset_is_refused_before_reading(tmp_path):
    n = 150_000
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as f:  # 84 GiB declared, a few MB on disk (chunks never written)
        f.create_dataset("precip", shape=(1, n, n), dtype=np.float32, chunks=(1, 1024, 1024))
        f["lat"] = 74.9995 - 0.001 * np.arange(n)
        f["lon"] = -100.0 + 0.001 * np.arange(n)
    before = snapshot(tmp_path)
    res = cli("sample", path, "-o", tmp_path / "o.h5")
    one_line(res, 1, "the input field (1 x 150000 x 150000 float32) needs 83.8 GiB, more than the memory budget",
             "crop the input with --bbox")
    assert snapshot(tmp_path) == before


def test_latitudes_beyond_the_poles_are_refused(tmp_path):
    path = _packed(tmp_path / "lat.h5", np.ones((1, 10, 12), np.float32), units="mm/h")
    with h5py.File(path, "a") as f:
        f["lat"][...] = 100.0 - 0.1 * np.arange(10)
    res = cli("sample", path, "-o", tmp_path / "o.h5")
    one_line(res, 1, "lat spans 99.1..100; expected pixel centres in degrees within [-90, 90]")
