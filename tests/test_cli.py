"""CLI contract: every bad input gets one clear line, exit code 1, and no output file."""
import json
import os

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from precipfast.cli import main
from precipfast.runtime.files.input_writer import write_precipfast_input

FAST = ["--members", "2", "--steps", "2", "--backend", "torch", "--device", "cpu", "--quiet"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _one_line_error(res, *fragments):
    assert res.exit_code != 0, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    assert "Traceback" not in res.output
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])


def test_help_and_version():
    assert "sample" in run("--help").output
    for cmd in ("sample", "demo", "train", "export", "info", "bench", "validate"):
        r = run(cmd, "--help")
        assert r.exit_code == 0 and "Usage" in r.output, cmd
    assert "precipfast, version" in run("--version").output


def test_sample_end_to_end(tiny_bundle, coarse_file, tmp_path):
    import xarray as xr
    out = tmp_path / "ens.h5"
    res = run("sample", coarse_file, "-o", out, "--model", tiny_bundle, *FAST)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["hr_shape"] == [120, 140] and summary["members"] == 2
    ds = xr.open_dataset(out, engine="h5netcdf")
    assert ds["precip"].dims == ("time", "member", "lat", "lon") and ds["precip"].shape == (2, 2, 120, 140)
    assert ds["corrected_lr"].shape == (2, 2, 12, 14)
    assert ds["exceedance_probability"].dims == ("time", "threshold", "lat", "lon")
    assert ds.attrs["backend"] == "torch" and ds.attrs["members"] == 2 and len(ds.attrs["model_sha256"]) == 64
    # The coarse NaN at (0, 0) is missing in every fine pixel it covers, and nowhere else.
    p = ds["precip"].values
    assert np.isnan(p[:, :, :10, :10]).all() and not np.isnan(p[:, :, 10:, 10:]).any()
    assert float(np.nanmin(p)) >= 0
    ds.close()
    # An existing output is refused without --overwrite and left untouched.
    before = out.read_bytes()
    _one_line_error(run("sample", coarse_file, "-o", out, "--model", tiny_bundle, *FAST), "exists", "--overwrite")
    assert out.read_bytes() == before
    assert run("sample", coarse_file, "-o", out, "--model", tiny_bundle, "--overwrite", *FAST).exit_code == 0


def _h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f[k] = v
    return path


def _bad_inputs(tmp):
    lat, lon = 40.95 - 0.1 * np.arange(6), -100.95 + 0.1 * np.arange(6)
    good = np.ones((6, 6), np.float32)
    (tmp / "text.h5").write_text("not hdf5")
    return {
        "missing": (tmp / "nope.h5", [], ["does not exist"]),
        "not-hdf5": (tmp / "text.h5", [], ["HDF5"]),
        "no-variable": (_h5(tmp / "novar.h5", lat=lat, lon=lon, other=good), [], ["precip"]),
        "rank": (_h5(tmp / "rank.h5", precip=np.ones(6, np.float32), lat=lat, lon=lon), [], ["precip"]),
        "all-nan": (write_precipfast_input(tmp / "nan.h5", np.full((6, 6), np.nan, np.float32), lat, lon), [],
                    ["NaN"]),
        "negative": (write_precipfast_input(tmp / "neg.h5", -good, lat, lon), [], ["negative"]),
        "absurd": (write_precipfast_input(tmp / "big.h5", good * 5000, lat, lon), [], ["5000"]),
        "pixel": (write_precipfast_input(tmp / "fine.h5", good, 40.95 - 0.05 * np.arange(6),
                                         -100.95 + 0.05 * np.arange(6)), [], ["0.05", "0.1"]),
        "bbox-outside": (write_precipfast_input(tmp / "ok.h5", good, lat, lon), ["--bbox", "0,1,0,1"], ["bbox"]),
        "members-0": (write_precipfast_input(tmp / "ok2.h5", good, lat, lon), ["--members", "0"], ["members"]),
        "steps-1": (write_precipfast_input(tmp / "ok3.h5", good, lat, lon), ["--steps", "1"], ["steps"]),
    }


@pytest.mark.parametrize("case", ["missing", "not-hdf5", "no-variable", "rank", "all-nan", "negative", "absurd",
                                  "pixel", "bbox-outside", "members-0", "steps-1"])
def test_bad_input_one_line_no_output(case, tiny_bundle, tmp_path):
    path, extra, fragments = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out.h5"
    base = ["--members", "2", "--steps", "2", "--backend", "torch", "--device", "cpu", "--quiet"]
    res = run("sample", path, "-o", out, "--model", tiny_bundle, *base, *extra)
    _one_line_error(res, *fragments)
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_bad_output_paths(tiny_bundle, coarse_file, tmp_path):
    _one_line_error(run("sample", coarse_file, "-o", tmp_path / "no" / "dir" / "o.h5", "--model", tiny_bundle,
                        *FAST), "does not exist")
    (tmp_path / "afile").write_text("x")
    _one_line_error(run("sample", coarse_file, "-o", tmp_path / "afile" / "o.h5", "--model", tiny_bundle, *FAST),
                    "afile")


def test_tampered_and_incomplete_bundle(tiny_bundle, coarse_file, tmp_path):
    import shutil
    bad = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bad)
    w = bad / "downscaling.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    out = tmp_path / "o.h5"
    _one_line_error(run("sample", coarse_file, "-o", out, "--model", bad, *FAST), "downscaling.safetensors", "sha256")
    assert not out.exists()
    (bad / "correction.onnx").unlink()
    _one_line_error(run("sample", coarse_file, "-o", out, "--model", bad, *FAST), "correction.onnx")
    _one_line_error(run("sample", coarse_file, "-o", out, "--model", tmp_path / "nothing", *FAST), "nothing")
    assert not out.exists()


def test_unknown_and_unavailable_backend(tiny_bundle, coarse_file, tmp_path):
    out = tmp_path / "o.h5"
    _one_line_error(run("sample", coarse_file, "-o", out, "--model", tiny_bundle, "--backend", "nope"),
                    "unknown backend", "onnxruntime")
    _one_line_error(run("sample", coarse_file, "-o", out, "--model", tiny_bundle, "--backend", "tensorrt",
                        "--device", "cpu"), "tensorrt")
    assert not out.exists()


def test_info_on_bundle_and_output(tiny_bundle, coarse_file, tmp_path):
    r = run("info", tiny_bundle, "--backends")
    assert r.exit_code == 0
    info = json.loads(r.output)
    assert info["bundle"]["name"] == "tiny-test" and set(info["bundle"]["stages"]) == {"correction", "downscaling"}
    assert info["bundle"]["stages"]["downscaling"]["tile"] == "--tile"  # no tile of its own: the user's
    assert info["backends"]["torch"]["available"] is True
    out = tmp_path / "o.h5"
    assert run("sample", coarse_file, "-o", out, "--model", tiny_bundle, *FAST).exit_code == 0
    assert json.loads(run("info", out).output)["output"]["attrs"]["members"] == 2


def test_sample_reads_real_imerg_v07_granule(tiny_bundle, tmp_path, shared_data):
    src = shared_data / "fixtures/3B-HHR.MS.MRG.3IMERG.20000601-S000000-E002959.0000.V07A.HDF5"
    out = tmp_path / "v07.h5"
    res = run("sample", src, "-o", out, "--model", tiny_bundle, *FAST)
    assert res.exit_code == 0, res.output
    with h5py.File(out) as f:
        assert f["precip"].shape == (1, 2, 100, 100)
        assert f["lat"][0] > f["lat"][-1]  # north-up
        assert int(f["time"][0]) == 959817600  # 2000-06-01T00:00Z from 'seconds since 1980-01-06'
