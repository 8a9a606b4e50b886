"""Output file (runtime/files/writer.py, its plumbing in runtime/files/atomic.py): schema and xarray round trip,
statistics, streaming, atomicity, path checks."""
import os

import h5py
import numpy as np
import pytest

from precipfast._version import __version__
from precipfast.errors import OutputError
from precipfast.runtime.files import atomic
from precipfast.runtime.files import writer as output
from precipfast.runtime.files.atomic import check_output_path
from precipfast.runtime.files.writer import OutputWriter, ensemble_stats, write_output

xr = pytest.importorskip("xarray")
pytest.importorskip("h5netcdf")

ATTRS = {"model_name": "tiny", "model_sha256": "ab" * 32, "steps": 18, "seed": 3, "backend": "torch",
         "input_sha256": "cd" * 32}
T, E, H, W, F = 2, 4, 6, 10, 2
LAT, LON = 40.0 - 0.01 * np.arange(H), -100.0 + 0.01 * np.arange(W)
LAT_LR, LON_LR = LAT.reshape(-1, F).mean(1), LON.reshape(-1, F).mean(1)
TIMES = np.array([1483441200, 1483443000])


def _result(seed=0):
    rng = np.random.default_rng(seed)
    precip = rng.gamma(0.4, 4.0, (T, E, H, W)).astype(np.float32)
    precip[:, :, 0, :F] = np.nan  # one missing coarse pixel, expanded to its fine pixels
    return {"precip": precip, "corrected_lr": rng.gamma(0.4, 4.0, (T, E, H // F, W // F)).astype(np.float32)}


def _write(path, result=None, **kw):
    return write_output(path, result or _result(), lat=LAT, lon=LON, lat_lr=LAT_LR, lon_lr=LON_LR, times=TIMES,
                        attrs=ATTRS, **kw)


def _dir_names(path):
    return sorted(os.listdir(path))


def test_schema_and_xarray_round_trip(tmp_path):
    res = _result()
    path = _write(tmp_path / "out.h5", res)
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        assert dict(ds.sizes) == {"time": T, "member": E, "threshold": 5, "lat": H, "lon": W,
                                  "lat_lr": H // F, "lon_lr": W // F}
        assert ds.precip.dims == ("time", "member", "lat", "lon")
        assert ds.precip_mean.dims == ds.precip_std.dims == ("time", "lat", "lon")
        assert ds.exceedance_probability.dims == ("time", "threshold", "lat", "lon")
        assert ds.corrected_lr.dims == ("time", "member", "lat_lr", "lon_lr")
        assert ds.precip.dtype == np.float32 and ds.precip.attrs["units"] == "mm/h"
        np.testing.assert_array_equal(ds.precip.values, res["precip"])  # NaN where missing
        np.testing.assert_array_equal(ds.corrected_lr.values, res["corrected_lr"])
        np.testing.assert_array_equal(ds.time.values, TIMES.astype("datetime64[s]").astype("datetime64[ns]"))
        np.testing.assert_array_equal(ds.member.values, np.arange(E))
        np.testing.assert_allclose(ds.threshold.values, [0.1, 1.0, 5.0, 10.0, 20.0])
        np.testing.assert_allclose(ds.lat.values, LAT) and np.testing.assert_allclose(ds.lon_lr.values, LON_LR)
        assert ds.lat.attrs["units"] == "degrees_north" and ds.lon.attrs["units"] == "degrees_east"
        for k, v in ATTRS.items():
            assert ds.attrs[k] == v
        assert ds.attrs["precipfast_version"] == __version__ and ds.attrs["Conventions"] == "CF-1.8"
        assert ds.attrs["members"] == E and ds.attrs["created"].endswith("Z")
        enc = ds.precip.encoding
        assert enc["zlib"] and enc["shuffle"] and enc["chunksizes"] == (1, 1, H, W)
    assert _dir_names(tmp_path) == ["out.h5"]  # no temp file left behind


def test_statistics_on_known_ensemble(tmp_path):
    members = np.array([0.0, 1.0, 2.0, 7.0], np.float32)
    precip = np.broadcast_to(members[:, None, None], (E, H, W)).copy()
    precip[:, 0, 0] = np.nan
    path = write_output(tmp_path / "o.h5", {"precip": precip}, lat=LAT, lon=LON, attrs=ATTRS,
                        thresholds_mm_h=(0.5, 1.0, 5.0, 10.0))
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        assert ds.sizes["time"] == 1 and "corrected_lr" not in ds
        mean, std, exc = ds.precip_mean.values[0], ds.precip_std.values[0], ds.exceedance_probability.values[0]
    assert mean[1, 1] == pytest.approx(2.5) and std[1, 1] == pytest.approx(np.std([0, 1, 2, 7]))
    np.testing.assert_allclose(exc[:, 1, 1], [0.75, 0.5, 0.25, 0.0])  # "> threshold": 1.0 is not above 1.0
    assert np.isnan(mean[0, 0]) and np.isnan(std[0, 0]) and np.isnan(exc[:, 0, 0]).all()
    assert np.isfinite(mean[1:]).all() and np.isfinite(exc[:, 1:]).all()


def test_streamed_tiles_match_in_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(output, "BLOCK", 4)  # several statistics blocks, ragged at the edges
    res = _result(1)
    with OutputWriter(tmp_path / "s.h5", lat=LAT, lon=LON, members=E, times=TIMES, lat_lr=LAT_LR,
                      lon_lr=LON_LR, attrs=ATTRS) as w:
        for t in range(T):
            for m0 in (0, 3):  # member groups of 3 and 1
                ms = slice(m0, min(m0 + 3, E))
                for rs in (slice(0, 4), slice(4, H)):
                    w.write_members(t, ms, rs, slice(None), res["precip"][t, ms, rs])
            w.write_corrected(t, values=res["corrected_lr"][t])
    _write(tmp_path / "m.h5", res)
    with h5py.File(tmp_path / "s.h5") as a, h5py.File(tmp_path / "m.h5") as b:
        for name in ("precip", "precip_mean", "precip_std", "exceedance_probability", "corrected_lr"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
    mean, std, exc = ensemble_stats(res["precip"][1], (0.1, 1.0, 5.0, 10.0, 20.0))
    with xr.open_dataset(tmp_path / "s.h5", engine="h5netcdf") as ds:
        np.testing.assert_allclose(ds.precip_mean.values[1], mean)
        np.testing.assert_allclose(ds.exceedance_probability.values[1], exc)


def test_exception_mid_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with OutputWriter(tmp_path / "o.h5", lat=LAT, lon=LON, members=E, attrs=ATTRS) as w:
            w.write_members(0, slice(0, 2), values=np.zeros((2, H, W)))
            raise RuntimeError("boom")
    assert _dir_names(tmp_path) == []


def test_existing_output_is_kept_unless_overwrite_succeeds(tmp_path):
    path = _write(tmp_path / "o.h5", _result(0))
    before = path.read_bytes()
    with pytest.raises(OutputError, match=r"output '.*o.h5' exists; pass --overwrite to replace it"):
        _write(path, _result(1))
    with pytest.raises(ValueError, match="values are"):  # fails mid-write with overwrite=True
        with OutputWriter(path, lat=LAT, lon=LON, members=E, attrs=ATTRS, overwrite=True) as w:
            w.write_members(0, values=np.zeros((E, H, W + 1)))
    assert path.read_bytes() == before and _dir_names(tmp_path) == ["o.h5"]
    new = _result(1)
    _write(path, new, overwrite=True)
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["precip"][()], new["precip"])
    assert _dir_names(tmp_path) == ["o.h5"]


def test_check_output_path(tmp_path):
    with pytest.raises(OutputError, match=r"output directory '.*nodir' does not exist"):
        check_output_path(tmp_path / "nodir" / "o.h5", overwrite=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"output directory '.*file' is not a directory"):
        check_output_path(tmp_path / "file" / "o.h5", overwrite=True)
    with pytest.raises(OutputError, match=r"is a directory; expected a file path"):
        check_output_path(tmp_path, overwrite=True)
    assert check_output_path(tmp_path / "file", overwrite=True) == tmp_path / "file"
    assert _dir_names(tmp_path) == ["file"]  # the write probe cleaned up after itself


def test_unwritable_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: chmod 0o555 does not stop writes (the path-under-a-file case is "
                        "covered by test_check_output_path)")
        with pytest.raises(OutputError, match=r"output directory '.*ro' is not writable"):
            check_output_path(ro / "o.h5", overwrite=False)
    finally:
        ro.chmod(0o755)


def test_writer_checks_arguments_before_creating_files(tmp_path):
    with pytest.raises(ValueError, match=r"attrs lacks \['input_sha256'\]"):
        OutputWriter(tmp_path / "o.h5", lat=LAT, lon=LON, members=E,
                     attrs={k: v for k, v in ATTRS.items() if k != "input_sha256"})
    with pytest.raises(ValueError, match="members must be >= 1"):
        OutputWriter(tmp_path / "o.h5", lat=LAT, lon=LON, members=0, attrs=ATTRS)
    with pytest.raises(ValueError, match="pass lat_lr and lon_lr"):
        write_output(tmp_path / "o.h5", _result(), lat=LAT, lon=LON, attrs=ATTRS)
    assert _dir_names(tmp_path) == []


def test_no_times_gives_a_step_index(tmp_path):
    path = write_output(tmp_path / "o.h5", {"precip": np.ones((2, 1, H, W), np.float32)}, lat=LAT, lon=LON,
                        attrs=ATTRS)
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        np.testing.assert_array_equal(ds.time.values, [0, 1])


def test_unwritable_directory_detected_even_as_root(tmp_path, monkeypatch):
    # Root ignores chmod, so prove both checks by making them fail: os.access, then the real write probe.
    monkeypatch.setattr(atomic.os, "access", lambda *a, **k: False)
    with pytest.raises(OutputError, match=r"output directory '.*' is not writable$"):
        check_output_path(tmp_path / "o.h5")
    monkeypatch.undo()

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(atomic, "create_temp", refuse)
    with pytest.raises(OutputError, match=r"is not writable \(Permission denied\)"):
        check_output_path(tmp_path / "o.h5")
    assert _dir_names(tmp_path) == []
