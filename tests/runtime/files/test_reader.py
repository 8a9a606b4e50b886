"""Input reader (runtime/files/reader.py): every layout, orientation, fill values, bbox, and each bad input's message."""
import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from precipfast.errors import InputFormatError
from precipfast.runtime.files.input_writer import write_precipfast_input
from precipfast.runtime.files.reader import expected_pixel_check, missing_mask, read_input

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
V07A = DATA / "fixtures" / "3B-HHR.MS.MRG.3IMERG.20000601-S000000-E002959.0000.V07A.HDF5"
SAMPLES = DATA / "imerg_samples.h5"
GPS_EPOCH_UNIX = 315964800  # 1980-01-06T00:00:00Z

# A small non-square grid: 5 lat x 7 lon at 0.1 deg, stored south first as NASA does.
LAT_ASC = np.round(np.arange(5) * 0.1 + 30.05, 2).astype(np.float32)
LON = np.round(np.arange(7) * 0.1 - 100.95, 2).astype(np.float32)


def _imerg(path, data_tll, *, group="Grid", var="precipitation", lat=LAT_ASC, lon=LON, times=(0,),
           time_units="seconds since 1980-01-06 00:00:00 UTC", dim_names=True, attrs=None):
    """An IMERG-like file: `var` (time, lon, lat) float32, fill -9999.9, as NASA ships it."""
    with h5py.File(path, "w") as f:
        g = f.require_group(group) if group else f
        d = g.create_dataset(var, data=np.asarray(data_tll, np.float32))
        d.attrs["_FillValue"] = np.float32(-9999.9)
        d.attrs["CodeMissingValue"] = np.bytes_(b"-9999.9")
        d.attrs["units"] = np.bytes_(b"mm/hr")
        if dim_names:
            d.attrs["DimensionNames"] = np.bytes_(b"time,lon,lat")
        d.attrs.update(attrs or {})
        g.create_dataset("lat", data=lat)
        g.create_dataset("lon", data=lon)
        if times is not None:
            g.create_dataset("time", data=np.asarray(times, np.int32)).attrs["units"] = np.bytes_(time_units.encode())
    return path


def _one_hot(t=1, value=7.5, lon_i=2, lat_j=1):
    a = np.zeros((t, LON.size, LAT_ASC.size), np.float32)
    a[:, lon_i, lat_j] = value
    return a


# ---------------------------------------------------------------------------- layouts
def test_precipfast_2d(tmp_path):
    rng = np.random.default_rng(0)
    p = rng.gamma(0.5, 2.0, (4, 6)).astype(np.float32)
    p[1, 2] = np.nan
    lat, lon = 40.35 - 0.1 * np.arange(4), -90.25 + 0.1 * np.arange(6)
    path = write_precipfast_input(tmp_path / "in.h5", p, lat, lon)
    f = read_input(path)
    assert f.source_format == "precipfast" and f.variable == "/precip"
    assert f.precip.shape == (1, 4, 6) and f.precip.dtype == np.float32
    np.testing.assert_array_equal(f.precip[0], p)
    np.testing.assert_allclose(f.lat, lat) and np.testing.assert_allclose(f.lon, lon)
    assert f.times is None and f.aux == {} and f.pixel_deg == pytest.approx(0.1)
    assert f.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert missing_mask(f).sum() == 1
    fine = missing_mask(f, factor=3)
    assert fine.shape == (1, 12, 18) and fine[0, 3:6, 6:9].all() and fine.sum() == 9


def test_precipfast_3d_lat_ascending_is_flipped_with_aux(tmp_path):
    lat_asc = 10.05 + 0.1 * np.arange(3)
    lon = 20.05 + 0.1 * np.arange(4)
    p = np.zeros((2, 3, 4), np.float32)
    p[1, 0, 3] = 4.0  # southernmost row, easternmost column, second time
    dem = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = write_precipfast_input(tmp_path / "in.h5", p, lat_asc, lon, times=[100, 1900], aux={"dem": dem})
    f = read_input(path)
    assert np.all(np.diff(f.lat) < 0) and f.lat[-1] == pytest.approx(10.05)
    assert f.precip[1, 2, 3] == 4.0 and np.nansum(f.precip) == 4.0
    np.testing.assert_array_equal(f.times, [100, 1900])
    np.testing.assert_array_equal(f.aux["dem"], dem[::-1])


def test_imerg_v07_orientation_and_time(tmp_path):
    # value at lon index 2, lat index 1 (south first) must land at row H-1-1, col 2, north-up
    path = _imerg(tmp_path / "v07.h5", _one_hot(), times=[643852800])
    f = read_input(path)
    assert f.source_format == "imerg-v07" and f.variable == "/Grid/precipitation"
    assert f.precip.shape == (1, LAT_ASC.size, LON.size)
    row, col = np.argwhere(f.precip[0] == 7.5)[0]
    assert f.lat[row] == pytest.approx(float(LAT_ASC[1])) and f.lon[col] == pytest.approx(float(LON[2]))
    assert (row, col) == (LAT_ASC.size - 2, 2)
    assert np.all(np.diff(f.lat) < 0) and np.all(np.diff(f.lon) > 0)
    np.testing.assert_array_equal(f.times, [643852800 + GPS_EPOCH_UNIX])  # 2000-06-01T00:00:00Z
    assert f.pixel_deg == pytest.approx(0.1)


@pytest.mark.parametrize("group,var,fmt", [("Grid", "precipitationCal", "imerg-v06"),
                                           ("", "precipitation", "imerg-subset-v07"),
                                           ("", "precipitationCal", "imerg-subset-v06")])
def test_imerg_v06_and_gesdisc_subsets(tmp_path, group, var, fmt):
    path = _imerg(tmp_path / "x.h5", _one_hot(), group=group, var=var, dim_names=(group == "Grid"),
                  times=[1483441200], time_units="seconds since 1970-01-01 00:00:00Z")
    f = read_input(path)
    assert f.source_format == fmt and f.variable == "/" + (f"{group}/" if group else "") + var
    assert f.precip[0, LAT_ASC.size - 2, 2] == 7.5 and np.nansum(f.precip) == 7.5
    np.testing.assert_array_equal(f.times, [1483441200])


def test_square_imerg_grid_uses_dimension_names_or_nasa_order(tmp_path):
    lat = np.round(np.arange(4) * 0.1 + 1.05, 2)
    lon = np.round(np.arange(4) * 0.1 + 2.05, 2)
    a = np.zeros((1, 4, 4), np.float32)
    a[0, 3, 0] = 2.0  # lon index 3, lat index 0 (southernmost)
    for dim_names in (True, False):
        f = read_input(_imerg(tmp_path / f"sq{dim_names}.h5", a, lat=lat, lon=lon, dim_names=dim_names))
        assert f.precip[0, 3, 3] == 2.0


def test_several_times_and_minutes_units(tmp_path):
    a = np.stack([_one_hot(value=v)[0] for v in (1.0, 2.0, 3.0)])
    path = _imerg(tmp_path / "t.h5", a, times=[0, 30, 60], time_units="minutes since 2020-01-01 00:00:00")
    f = read_input(path)
    assert f.precip.shape == (3, LAT_ASC.size, LON.size)
    np.testing.assert_array_equal(np.nanmax(f.precip, axis=(1, 2)), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(f.times, 1577836800 + np.array([0, 1800, 3600]))


def test_fill_values_become_nan(tmp_path):
    a = _one_hot()
    a[0, 0, 0] = -9999.9
    a[0, 1, 0] = -99.0  # the file's own _FillValue
    path = _imerg(tmp_path / "fill.h5", a, attrs={"_FillValue": np.float32(-99.0)})
    f = read_input(path)
    assert np.isnan(f.precip).sum() == 2 and np.nanmin(f.precip) == 0.0
    assert np.isnan(f.precip[0, -1, 0]) and np.isnan(f.precip[0, -1, 1])  # lat index 0 = south = last row


def test_lon_0_360_grid_is_rolled(tmp_path):
    lon = np.round(np.arange(3600) * 0.1 + 0.05, 2)
    lat = np.array([0.05, 0.15])
    a = np.zeros((1, 3600, 2), np.float32)
    a[0, 3599, 1] = 5.0  # lon 359.95 = -0.05
    f = read_input(_imerg(tmp_path / "g.h5", a, lat=lat, lon=lon))
    assert f.lon[0] == pytest.approx(-179.95) and f.lon[-1] == pytest.approx(179.95)
    col = int(np.argmin(np.abs(f.lon + 0.05)))
    assert f.precip[0, 0, col] == 5.0


def test_bbox_crop(tmp_path):
    lat = np.round(40.95 - 0.1 * np.arange(10), 2)
    lon = np.round(-100.95 + 0.1 * np.arange(12), 2)
    p = np.arange(120, dtype=np.float32).reshape(10, 12) / 10
    path = write_precipfast_input(tmp_path / "in.h5", p, lat, lon, aux={"dem": p * 100})
    f = read_input(path, bbox=(40.3, 40.75, -100.5, -100.2))
    np.testing.assert_allclose(f.lat, [40.75, 40.65, 40.55, 40.45, 40.35])
    np.testing.assert_allclose(f.lon, [-100.45, -100.35, -100.25])
    np.testing.assert_array_equal(f.precip[0], p[2:7, 5:8])
    np.testing.assert_array_equal(f.aux["dem"], p[2:7, 5:8] * 100)
    g = read_input(_imerg(tmp_path / "v07.h5", _one_hot()), bbox=(30.1, 30.2, -100.8, -100.6))
    assert g.precip.shape == (1, 1, 2) and g.precip[0, 0, 0] == 7.5  # lat 30.15, lon -100.75


def test_bbox_crop_reads_its_neighbours_for_the_correction_stage(tmp_path):
    lat = np.round(40.95 - 0.1 * np.arange(10), 2)
    lon = np.round(-100.95 + 0.1 * np.arange(12), 2)
    p = np.arange(120, dtype=np.float32).reshape(10, 12) / 10
    path = write_precipfast_input(tmp_path / "in.h5", p, lat, lon)
    f = read_input(path, bbox=(40.3, 40.75, -100.5, -100.2), context=3)  # rows 2-6, cols 5-7
    c = f.context
    assert (c.top, c.bottom, c.left, c.right) == (2, 3, 3, 3)  # only 2 rows above it in the file
    np.testing.assert_array_equal(c.precip[0], p[0:10, 2:11])
    np.testing.assert_array_equal(c.precip[:, c.top:c.top + 5, c.left:c.left + 3], f.precip)
    assert read_input(path, bbox=(40.3, 40.75, -100.5, -100.2)).context.precip.shape == (1, 10, 12)  # 8 default
    assert read_input(path, bbox=(40.3, 40.75, -100.5, -100.2), context=0).context is None
    assert read_input(path).context is None  # no crop: the file is the domain
    # A south-first IMERG file: the context is north-up like the crop.
    g = read_input(_imerg(tmp_path / "v07.h5", _one_hot()), bbox=(30.1, 30.2, -100.8, -100.6), context=1)
    assert g.context.precip.shape == (1, 3, 4) and g.context.precip[0, 1, 1] == 7.5
    # The neighbours are checked like the crop: one line naming where the bad value is.
    bad = p.copy()
    bad[0, 0] = -5.0
    path = write_precipfast_input(tmp_path / "bad.h5", bad, lat, lon)
    with pytest.raises(InputFormatError, match=r"negative.* \(in the 8-pixel context read around bbox .*; crop a "
                                               r"bbox at least 8 pixels away from such values\)"):
        read_input(path, bbox=(40.3, 40.75, -100.5, -100.2))
    assert read_input(path, bbox=(40.3, 40.75, -100.5, -100.2), context=0).precip.min() >= 0


def test_expected_pixel_check(tmp_path):
    f = read_input(write_precipfast_input(tmp_path / "in.h5", np.zeros((3, 3)), [1.1, 1.05, 1.0], [0, 0.05, 0.1]))
    expected_pixel_check(f, 0.05)
    with pytest.raises(InputFormatError, match=r"coarse grid pixel is 0.05 deg; the model expects 0.1 deg"):
        expected_pixel_check(f, 0.1)


# ---------------------------------------------------------------------------- bad inputs
def _raw(path, **datasets):
    with h5py.File(path, "w") as f:
        for name, v in datasets.items():
            f.create_dataset(name, data=v)
    return path


GOOD_LAT, GOOD_LON = 2.25 - 0.1 * np.arange(3), 5.05 + 0.1 * np.arange(4)
BAD = {
    "missing file": (lambda p: p / "nope.h5", {}, r"input file '.*nope.h5' does not exist"),
    "not hdf5": (lambda p: (p / "x.h5").write_text("hello") and p / "x.h5", {}, r"not an HDF5 file"),
    "no precip": (lambda p: _raw(p / "x.h5", rain=np.zeros(3), lat=GOOD_LAT), {},
                  r"no precipitation variable; datasets found: /lat \(3,\), /rain \(3,\); expected one of"),
    "no such variable": (lambda p: _raw(p / "x.h5", precip=np.zeros((3, 4)), lat=GOOD_LAT, lon=GOOD_LON),
                         {"variable": "a/b"}, r"no dataset '/a/b'; datasets found: /lat"),
    "1-D": (lambda p: _raw(p / "x.h5", precip=np.zeros(4), lat=GOOD_LAT, lon=GOOD_LON), {},
            r"'/precip': is 1-D \(4,\); expected \(lat, lon\) or \(time, lat, lon\)"),
    "4-D": (lambda p: _raw(p / "x.h5", precip=np.zeros((1, 1, 3, 4)), lat=GOOD_LAT, lon=GOOD_LON), {},
            r"is 4-D"),
    "lat length": (lambda p: _raw(p / "x.h5", precip=np.zeros((2, 4)), lat=GOOD_LAT, lon=GOOD_LON), {},
                   r"has shape \(2, 4\) but lat has 3 values and lon 4; expected"),
    "irregular lon": (lambda p: _raw(p / "x.h5", precip=np.zeros((3, 4)), lat=GOOD_LAT,
                                     lon=np.array([5.05, 5.15, 5.25, 5.4])), {},
                      r"lon spacing is not uniform: step 0.15 deg between lon\[2\] and lon\[3\]"),
    "not square": (lambda p: _raw(p / "x.h5", precip=np.zeros((3, 4)), lat=GOOD_LAT, lon=np.arange(4) * 0.25), {},
                   r"pixels are not square"),
    "nan lat": (lambda p: _raw(p / "x.h5", precip=np.zeros((3, 4)), lat=np.array([2.0, np.nan, 1.8]),
                               lon=GOOD_LON), {}, r"'/lat' has 1 NaN/inf of 3 values"),
    "2-D lat": (lambda p: _raw(p / "x.h5", precip=np.zeros((3, 4)), lat=np.zeros((3, 4)), lon=GOOD_LON), {},
                r"'/lat' is 2-D \(3, 4\); expected 1-D"),
    "all nan": (lambda p: _raw(p / "x.h5", precip=np.full((3, 4), np.nan), lat=GOOD_LAT, lon=GOOD_LON), {},
                r"is all missing"),
    "all nan in bbox": (lambda p: _raw(p / "x.h5", precip=np.array([[np.nan] * 4, [0] * 4, [0] * 4]),
                                       lat=GOOD_LAT, lon=GOOD_LON), {"bbox": (2.2, 2.3, 5, 6)},
                        r"is all missing \(NaN or fill\) inside bbox"),
    "negative": (lambda p: _raw(p / "x.h5", precip=np.array([[0, -2.5, 0, 0]] * 3), lat=GOOD_LAT, lon=GOOD_LON),
                 {}, r"has 3 negative values \(min -2.5 mm/h\) that are not fill values; expected rates >= 0"),
    "absurd": (lambda p: _raw(p / "x.h5", precip=np.array([[0, 1e4, 0, 0]] * 3), lat=GOOD_LAT, lon=GOOD_LON),
               {}, r"has rates up to 10000 mm/h; expected <= 1000 mm/h"),
    "bbox outside": (lambda p: _raw(p / "x.h5", precip=np.zeros((3, 4)), lat=GOOD_LAT, lon=GOOD_LON),
                     {"bbox": (40, 50, -10, 0)},
                     r"bbox \(S 40, N 50, W -10, E 0\) contains no pixel centre; the grid spans lat 2.0500..2.2500"),
    "bbox malformed": (lambda p: _raw(p / "x.h5", precip=np.zeros((3, 4)), lat=GOOD_LAT, lon=GOOD_LON),
                       {"bbox": (50, 40, 0, 1)}, r"bbox south 50 must be < north 40"),
    "bbox not numbers": (lambda p: p, {"bbox": "1,2"}, r"bbox must be 4 numbers"),
    "time length": (lambda p: _raw(p / "x.h5", precip=np.zeros((2, 3, 4)), lat=GOOD_LAT, lon=GOOD_LON,
                                   time=np.arange(3)), {}, r"has 2 time steps but '/time' has 3 values"),
    "aux shape": (lambda p: _raw(p / "x.h5", precip=np.zeros((3, 4)), lat=GOOD_LAT, lon=GOOD_LON,
                                 **{"aux/dem": np.zeros((4, 3))}), {}, r"aux '/aux/dem' is \(4, 3\); expected"),
    "antimeridian": (lambda p: _raw(p / "x.h5", precip=np.zeros((3, 4)), lat=GOOD_LAT,
                                    lon=np.array([179.75, 179.85, 179.95, 180.05])), {},
                     r"crosses the antimeridian"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_say_what_and_expected(tmp_path, case):
    make, kwargs, pattern = BAD[case]
    with pytest.raises(InputFormatError, match=pattern) as err:
        read_input(make(tmp_path), **kwargs)
    assert "\n" not in str(err.value)


def test_bad_units_and_time_units(tmp_path):
    path = _imerg(tmp_path / "u.h5", _one_hot(), attrs={"units": np.bytes_(b"mm")})
    with pytest.raises(InputFormatError, match=r"'/Grid/precipitation': has units 'mm'; expected a rain rate in mm/h"):
        read_input(path)
    path = _imerg(tmp_path / "t.h5", _one_hot(), time_units="fortnights")
    with pytest.raises(InputFormatError, match=r"'/Grid/time' has units 'fortnights'; expected"):
        read_input(path)


def test_imerg_shape_mismatch_names_nasa_order(tmp_path):
    path = _imerg(tmp_path / "m.h5", np.zeros((1, LAT_ASC.size, LON.size), np.float32))  # (time, lat, lon)
    with pytest.raises(InputFormatError, match=r"expected \(time, lon, lat\) per DimensionNames"):
        read_input(path)


# ---------------------------------------------------------------------------- real files
@pytest.mark.data
@pytest.mark.skipif(not V07A.exists(), reason=f"real IMERG V07A fixture not found at {V07A}")
def test_real_imerg_v07a_granule():
    f = read_input(V07A)
    assert f.source_format == "imerg-v07" and f.precip.shape == (1, 10, 10)
    assert np.all(np.diff(f.lat) < 0) and f.lat[0] == pytest.approx(-89.05) and f.lat[-1] == pytest.approx(-89.95)
    assert f.lon[0] == pytest.approx(-179.95) and f.pixel_deg == 0.1
    np.testing.assert_array_equal(f.times, [959817600])  # 2000-06-01T00:00:00Z, the granule's start
    assert np.nansum(f.precip) == 0.0


@pytest.mark.data
@pytest.mark.skipif(not SAMPLES.exists(), reason=f"real IMERG samples not found at {SAMPLES}")
@pytest.mark.parametrize("variable,shape,time", [
    ("v06b_final_conus_20170103T1100/precipitationCal", (1, 250, 570), 1483441200),
    ("v03e_early_20151001T0000/conus/precipitationCal", (1, 350, 700), 1443657600),
])
def test_real_imerg_samples(variable, shape, time):
    f = read_input(SAMPLES, variable=variable)
    assert f.precip.shape == shape and f.source_format == "variable"
    assert np.all(np.diff(f.lat) < 0) and np.all(np.diff(f.lon) > 0) and f.pixel_deg == 0.1
    np.testing.assert_array_equal(f.times, [time])
    assert np.nanmax(f.precip) > 1.0  # real rain, not an all-zero layout fixture
    g = read_input(SAMPLES, variable=variable, bbox=(30, 40, -100, -90))
    assert g.precip.shape == (1, 100, 100)
    np.testing.assert_array_equal(g.precip, f.precip[:, np.isin(f.lat, g.lat)][:, :, np.isin(f.lon, g.lon)])


@pytest.mark.data
@pytest.mark.skipif(not SAMPLES.exists(), reason=f"real IMERG samples not found at {SAMPLES}")
def test_real_samples_without_variable_lists_datasets():
    with pytest.raises(InputFormatError, match=r"no precipitation variable; datasets found: .*precipitationCal"):
        read_input(SAMPLES)
