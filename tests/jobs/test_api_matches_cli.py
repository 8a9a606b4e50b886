"""The Python API and `precipfast sample` take one route (Pipeline.iter_groups): the same file, seed and bbox
give bit-identical members from the reader's InputField (with the pixels it read around the crop for the
correction stage); an array with lat/lon is the crop alone."""
import h5py
import numpy as np
from click.testing import CliRunner

from precipfast.cli import main
from precipfast.runtime.files.reader import read_input
from precipfast.runtime.sampling.pipeline import Pipeline

BBOX = "40.05,40.95,-100.75,-99.75"  # a crop: its north-west pixel is not the file's, so noise keys move


def test_python_api_and_cli_give_bit_identical_members(tiny_bundle, coarse_file, tmp_path):
    out = tmp_path / "cli.h5"
    res = CliRunner().invoke(main, ["sample", str(coarse_file), "-o", str(out), "--model", str(tiny_bundle),
                                    "--members", "2", "--steps", "2", "--seed", "7", "--bbox", BBOX,
                                    "--backend", "torch", "--device", "cpu", "--quiet"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    with h5py.File(out, "r") as f:
        cli_precip, cli_corr = f["precip"][...], f["corrected_lr"][...]
    assert cli_precip.shape == (2, 2, 100, 110)  # 2 times, 2 members, the 10 x 11 coarse crop at 1 km

    pipe = Pipeline.from_bundle(tiny_bundle, backend="torch", device="cpu")
    field = read_input(coarse_file, bbox=tuple(float(v) for v in BBOX.split(",")))
    api = pipe.sample(field, members=2, steps=2, seed=7)
    np.testing.assert_array_equal(api["precip"], cli_precip)
    np.testing.assert_array_equal(api["corrected_lr"], cli_corr)

    # The reader gave the correction stage up to 8 of the file's pixels around the crop (the 12 x 14 file
    # holds 0 above, 2 below, 2 left, 1 right): the crop read alone is another field near its edges. An
    # array with its pixel centres is sampled as it is: the same members as the crop read alone.
    c = field.context
    assert (c.top, c.bottom, c.left, c.right, c.precip.shape) == (0, 2, 2, 1, (2, 12, 14))
    with h5py.File(out, "r") as f:
        assert f.attrs["correction_context_px"].tolist() == [0, 2, 2, 1]
    alone = read_input(coarse_file, bbox=tuple(float(v) for v in BBOX.split(",")), context=0)
    assert alone.context is None
    bare = pipe.sample(alone, members=2, steps=2, seed=7)
    assert np.abs(bare["corrected_lr"] - cli_corr).max() > 1e-3
    arr = pipe.sample(field.precip, members=2, steps=2, seed=7, lat=field.lat, lon=field.lon)
    np.testing.assert_array_equal(arr["precip"], bare["precip"])
    # Without geolocation the noise is keyed from the array's own corner: other members.
    local = pipe.sample(field.precip, members=2, steps=2, seed=7)
    assert not np.array_equal(np.nan_to_num(local["precip"]), np.nan_to_num(cli_precip))
