"""train/data.py: paired patches for both stages from the real radar in ../shared/data."""
import dataclasses
import os
from pathlib import Path

import pytest
import torch

from precipfast.config import DataConfig
from precipfast.errors import InputFormatError
from precipfast.grid import coarsen, upsample
from precipfast.train.data import MRMS_FILE, RADAR_FILE, PairDataset, residual_std, split_frames
from precipfast.transform import forward

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / MRMS_FILE).is_file() or not (DATA / RADAR_FILE).is_file(),
                                reason=f"real radar files not found in {DATA} (repo root's ../shared/data)")
# Small subset: one training region, the held-out region, one FMI day with NaN outside its composite.
SOURCES = ["mrms/region_0", "mrms/region_3", "fmi/fmi_20170509"]
CFG = DataConfig(patch_hr=40, patch_lr=16)


@pytest.fixture(scope="module")
def datasets():
    if not (DATA / MRMS_FILE).is_file() or not (DATA / RADAR_FILE).is_file():
        pytest.skip(f"real radar files not found in {DATA}")
    return {(st, sp): PairDataset(CFG, st, sp, DATA, sources=SOURCES)
            for st in ("downscaling", "correction") for sp in ("train", "val")}


@needs_data
@pytest.mark.parametrize("split", ["train", "val"])
def test_downscaling_batch_shapes_and_residual_identity(datasets, split):
    b = datasets["downscaling", split].batch(6, torch.Generator().manual_seed(0))
    s = CFG.scale_factor
    for k in ("hr", "cond", "target", "base", "hr_mm_h"):
        assert b[k].shape == (6, 1, 40, 40) and b[k].dtype == torch.float32, k
    assert b["lr_mm_h"].shape == (6, 1, 40 // s, 40 // s)
    assert torch.equal(b["target"] + b["base"], b["hr"])          # exact by construction
    torch.testing.assert_close(b["hr"], forward(b["hr_mm_h"], CFG.transform), atol=1e-6, rtol=0)
    assert torch.equal(b["cond"], b["base"])
    torch.testing.assert_close(b["lr_mm_h"], coarsen(b["hr_mm_h"], s, "max"))
    torch.testing.assert_close(b["cond"], upsample(forward(b["lr_mm_h"], CFG.transform), s))
    assert all(torch.isfinite(v).all() for v in b.values())


@needs_data
@pytest.mark.parametrize("split", ["train", "val"])
def test_correction_batch_shapes_and_residual_identity(datasets, split):
    b = datasets["correction", split].batch(6, torch.Generator().manual_seed(0))
    for k in ("truth", "sat", "cond", "target", "base", "truth_mm_h", "sat_mm_h"):
        assert b[k].shape == (6, 1, 16, 16) and b[k].dtype == torch.float32, k
    assert torch.equal(b["target"] + b["base"], b["truth"])
    torch.testing.assert_close(b["truth"], forward(b["truth_mm_h"], CFG.transform), atol=1e-6, rtol=0)
    torch.testing.assert_close(b["sat"], forward(b["sat_mm_h"], CFG.transform))
    assert torch.equal(b["cond"], b["sat"]) and torch.equal(b["base"], b["sat"])
    assert not torch.equal(b["sat"], b["truth"])                   # the degradation did something
    assert all(torch.isfinite(v).all() for v in b.values())


@needs_data
def test_held_out_region_only_in_validation(datasets):
    for stage in ("downscaling", "correction"):
        train, val = datasets[stage, "train"], datasets[stage, "val"]
        assert "mrms/region_3" not in train.source_names
        assert "mrms/region_3" in val.source_names
        assert val.frames["mrms/region_3"] == range(0, 36)
        for name in ("mrms/region_0", "fmi/fmi_20170509"):
            tr, va = set(train.frames[name]), set(val.frames[name])
            assert tr and va and not tr & va and max(tr) < min(va)
    assert split_frames(36, False, "val", 0.2) == range(29, 36)
    assert split_frames(36, True, "train", 0.2) == range(0, 0)


@needs_data
def test_batches_are_reproducible(datasets):
    for ds in datasets.values():
        a = ds.batch(4, torch.Generator().manual_seed(11))
        b = ds.batch(4, torch.Generator().manual_seed(11))
        c = ds.batch(4, torch.Generator().manual_seed(12))
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not torch.equal(a["target"], c["target"])


@needs_data
def test_wet_crops_are_preferred(datasets):
    b = datasets["downscaling", "train"].batch(64, torch.Generator().manual_seed(3))
    wet = (b["hr_mm_h"] >= 0.1).float().mean(dim=(1, 2, 3))
    assert (wet >= CFG.min_wet_fraction).float().mean() >= 0.7


@needs_data
def test_residual_std_is_a_positive_float(datasets):
    sd = residual_std(datasets["correction", "train"], n=32, generator=torch.Generator().manual_seed(0))
    assert isinstance(sd, float) and 0.05 < sd < 3


@needs_data
def test_unknown_region_lists_available_sources():
    cfg = dataclasses.replace(CFG, val_regions=("mrms/region_9",))
    with pytest.raises(ValueError, match=r"unknown val_regions \['mrms/region_9'\].*mrms/region_0"):
        PairDataset(cfg, "downscaling", "train", DATA, sources=SOURCES)
    with pytest.raises(ValueError, match="unknown sources"):
        PairDataset(CFG, "downscaling", "train", DATA, sources=["nexrad/x"])


def test_missing_data_dir_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(InputFormatError, match=f"'{missing}' does not exist; expected .*{MRMS_FILE}"):
        PairDataset(CFG, "downscaling", "train", missing)


@needs_data
def test_missing_data_file_is_named(tmp_path):
    os.symlink(DATA / MRMS_FILE, tmp_path / MRMS_FILE)
    with pytest.raises(InputFormatError, match=f"'{tmp_path / RADAR_FILE}' is missing"):
        PairDataset(CFG, "downscaling", "train", tmp_path)


def test_bad_stage_and_split(tmp_path):
    with pytest.raises(ValueError, match="stage must be one of"):
        PairDataset(CFG, "superres", "train", tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        PairDataset(CFG, "correction", "test", tmp_path)
