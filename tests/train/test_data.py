"""train/data.py: paired patches for both stages from the real radar in ../shared/data."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from precipfast.config import DataConfig
from precipfast.errors import InputFormatError
from precipfast.grid import coarsen, upsample
from precipfast.train.data import PairDataset
from precipfast.train.sources import FILES
from precipfast.transform import forward

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not all((DATA / f).is_file() for f in FILES),
                                reason=f"real radar files not found in {DATA} (repo root's ../shared/data)")
# Small sources: one FMI day (NaN outside its composite) for training, the other for validation.
CFG = DataConfig(patch_hr=40, patch_lr=16, train_sources=("fmi/fmi_20160928", "bom/bom_2_20180616"),
                 val_sources=("fmi/fmi_20170509",))


@pytest.fixture(scope="module")
def datasets():
    if not all((DATA / f).is_file() for f in FILES):
        pytest.skip(f"real radar files not found in {DATA}")
    return {(st, sp): PairDataset(CFG, st, sp, DATA) for st in ("downscaling", "correction")
            for sp in ("train", "val")}


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
    torch.testing.assert_close(b["lr_mm_h"], coarsen(b["hr_mm_h"], s, "mean"))   # areal mean, like IMERG
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
def test_splits_hold_whole_sources(datasets):
    for stage in ("downscaling", "correction"):
        assert "fmi/fmi_20170509" not in datasets[stage, "train"].source_names
        assert datasets[stage, "val"].source_names == ["fmi/fmi_20170509"]
    leaky = dataclasses.replace(CFG, val_sources=("fmi/fmi_20160928",))
    with pytest.raises(ValueError, match=r"\['fmi/fmi_20160928'\] are both training and validation"):
        PairDataset(leaky, "downscaling", "train", DATA)


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
def test_qpe_day_crops_are_unpacked_hourly_rates():
    """The packed uint16 QPE day: crops are NaN-free mm/h on the 0.1 mm grid, wet ones preferred."""
    ds = PairDataset(CFG, "downscaling", "val", DATA, sources=["qpe/20160922"])
    b = ds.batch(16, torch.Generator().manual_seed(0))
    hr = b["hr_mm_h"].double()
    assert torch.isfinite(hr).all() and hr.min() >= 0 and hr.max() < 300
    np.testing.assert_allclose(hr * 10, (hr * 10).round(), atol=1e-3)   # counts x 0.1 mm/h
    assert ((hr >= 0.1).double().mean(dim=(1, 2, 3)) >= CFG.min_wet_fraction).double().mean() >= 0.5


@needs_data
def test_unknown_source_lists_available_sources():
    with pytest.raises(ValueError, match=r"unknown train sources \['nexrad/x'\].*qpe/20160920"):
        PairDataset(CFG, "downscaling", "train", DATA, sources=["nexrad/x"])


def test_missing_data_dir_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(InputFormatError, match=f"'{missing}' does not exist; expected"):
        PairDataset(CFG, "downscaling", "train", missing)


def test_bad_stage_and_split(tmp_path):
    with pytest.raises(ValueError, match="stage must be one of"):
        PairDataset(CFG, "superres", "train", tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        PairDataset(CFG, "correction", "test", tmp_path)


@needs_data
def test_wide_error_prior_gives_each_crop_its_own_satellite_and_the_same_truth():
    """error_prior "wide": the same crops (the same truth) as the fit, each degraded by its own draw of the
    prior, so far more crops see a satellite that underestimates (the fit overestimates: bias 1.13, gamma 1.09)."""
    wide = PairDataset(dataclasses.replace(CFG, error_prior="wide"), "correction", "train", DATA)
    fit = PairDataset(CFG, "correction", "train", DATA)
    assert wide.margin == 13 and fit.margin == 9
    b = wide.batch(256, torch.Generator().manual_seed(1))
    assert torch.equal(b["sat_mm_h"], wide.batch(256, torch.Generator().manual_seed(1))["sat_mm_h"])  # deterministic
    stats = {}
    for name, batch in (("wide", b), ("fit", fit.batch(256, torch.Generator().manual_seed(1)))):
        sat, truth = batch["sat_mm_h"].sum(dim=(1, 2, 3)), batch["truth_mm_h"].sum(dim=(1, 2, 3))
        ok = truth > 1.0
        log_ratio = torch.log(sat[ok] / truth[ok])
        stats[name] = ((log_ratio < -0.4).float().mean().item(), log_ratio.median().item())
    assert stats["wide"][0] > 1.4 * stats["fit"][0] and stats["wide"][1] < stats["fit"][1] - 0.1, stats
    with pytest.raises(ValueError, match="--error-prior must be one of fit, wide"):
        DataConfig(error_prior="broad")
