"""experiments/dry_pixels.py: the inside-rain mask, dry shares against hand counts, a sample output read on its
input's grid, and the truth's share in real training pairs."""
import numpy as np
import pytest

from experiments import dry_pixels
from precipfast.runtime.files.input_writer import write_precipfast_input
from precipfast.runtime.files.writer import write_output

ATTRS = {"model_name": "t", "model_sha256": "ab" * 32, "steps": 2, "seed": 0, "backend": "torch",
         "input_sha256": "cd" * 32}


def test_inside_rain_mask_by_hand():
    lr = np.full((8, 8), 2.0)
    lr[0, 0] = 0.5                                    # at the edge: left out anyway
    assert dry_pixels.inside_rain(lr).sum() == 16     # rows and cols 2..5
    lr[4, 4] = np.nan                                 # not wet: itself and its 8 neighbours drop out
    mask = dry_pixels.inside_rain(lr)
    assert mask.sum() == 16 - 9 and not mask[3:6, 3:6].any() and mask[2, 2]
    lr[4, 4] = 0.99                                   # just below 1 mm/h: the same
    assert dry_pixels.inside_rain(lr).sum() == 7
    assert dry_pixels.inside_rain(np.full((5, 6), 1.0), edge_px=0).all()   # edges repeated, not padded dry


def test_dry_share_by_hand():
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    field = np.full((4, 4), 3.0)
    field[1, 1], field[2, 2], field[0, 0] = 0.0, 0.099, 0.0     # two of the four masked pixels dry
    assert dry_pixels.dry_share(field, mask) == (50.0, 4)
    share, n = dry_pixels.dry_share(field, np.zeros((4, 4), bool))
    assert n == 0 and np.isnan(share)


def _sample_file(path, corrected, lat, lon):
    """A `precipfast sample` output whose correction stage gave `corrected` (T, E, h, w) on the grid (lat, lon)."""
    t, e, h, w = corrected.shape
    half = np.array([0.025, -0.025])                  # two fine pixels a coarse one
    write_output(path, {"precip": np.ones((t, e, 2 * h, 2 * w), np.float32), "corrected_lr": corrected},
                 lat=(lat[:, None] + half).ravel(), lon=(lon[:, None] - half).ravel(), lat_lr=lat, lon_lr=lon,
                 attrs=ATTRS)


def test_no_corrected_lr_is_refused(tmp_path):
    lat, lon = 40 - 0.1 * np.arange(4), -100 + 0.1 * np.arange(4)
    write_output(tmp_path / "out.h5", {"precip": np.ones((1, 2, 4, 4), np.float32)}, lat=lat, lon=lon, attrs=ATTRS)
    with pytest.raises(ValueError, match="has no corrected_lr: run `precipfast sample` with the correction stage"):
        dry_pixels.members_share(str(tmp_path / "out.h5"), str(tmp_path / "in.h5"))


def test_members_share_on_the_inputs_grid(tmp_path):
    lat, lon = 40 - 0.1 * np.arange(10), -100 + 0.1 * np.arange(12)
    write_precipfast_input(tmp_path / "in.h5", np.full((10, 12), 2.0), lat, lon)
    corrected = np.full((1, 2, 6, 6), 2.0, np.float32)   # the output covers rows 2..7, cols 3..8
    corrected[0, 1, 2:4, 2] = 0.0                         # member 1: 2 of the 4 inner pixels dry
    corrected[0, 0, 0, 0] = 0.0                           # member 0: dry at the edge only
    _sample_file(tmp_path / "out.h5", corrected, lat[2:8], lon[3:9])
    got = dry_pixels.members_share(str(tmp_path / "out.h5"), str(tmp_path / "in.h5"))
    assert got["pixels"] == 4 and got["dry_percent"] == [0.0, 50.0]
    _sample_file(tmp_path / "off.h5", corrected, lat[2:8] + 0.3, lon[3:9] + 5)
    with pytest.raises(ValueError, match="coarse grid is not on .*in.h5's grid"):
        dry_pixels.members_share(str(tmp_path / "off.h5"), str(tmp_path / "in.h5"))


def test_cli_needs_a_source(capsys):
    for argv in ([], ["--sample", "x.h5"]):
        with pytest.raises(SystemExit) as e:
            dry_pixels.main(argv)
        assert e.value.code == 2 and "pass --data DIR, or --sample OUT.h5 with --input IN.h5" in capsys.readouterr().err


def test_truth_of_validation_pairs_is_sometimes_dry_inside_satellite_rain(shared_data):
    """The fitted satellite-error model displaces and blurs rain, so the radar truth under a wet
    satellite neighbourhood is dry a few percent of the time (MODEL_CARD.md: 4.5 % on the validation day)."""
    got = dry_pixels.pairs_share(str(shared_data), "val", batches=4)
    assert got["sources"] == ["qpe/20160922"] and got["pixels"] > 5000
    assert 1.0 < got["dry_percent"] < 10.0
