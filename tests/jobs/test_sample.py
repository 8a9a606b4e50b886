"""`precipfast sample` as a job: members streamed to the file group by group, the same file for any grouping."""
import h5py
import numpy as np
import pytest

from precipfast.jobs.sample import run_sample
from precipfast.kernels.heun_residual import step_impl_name
from precipfast.options import SampleOptions
from precipfast.runtime.sampling.memory import state_fields
from precipfast.runtime.sampling.pipeline import Pipeline


def _members(path):
    with h5py.File(path, "r") as f:
        return f["precip"][...], f["corrected_lr"][...], f["precip_mean"][...]


def test_groups_of_one_member_write_the_same_file_as_one_group(tiny_bundle, coarse_file, tmp_path):
    base = dict(model=str(tiny_bundle), members=3, steps=3, seed=5, backend="torch", device="cpu", max_batch=1,
                quiet=True)
    whole = run_sample(coarse_file, tmp_path / "whole.h5", SampleOptions(**base))
    # A budget of 1.5 members: the state of one 120 x 140 member (state_fields float32 fields), not two.
    one_px = 120 * 140 * 4 * state_fields(step_impl_name("cpu"))
    budget_gb = 1.5 * one_px / 1024 ** 3
    split = run_sample(coarse_file, tmp_path / "split.h5", SampleOptions(**base, memory_gb=budget_gb))
    assert whole["members"] == split["members"] == 3
    for a, b in zip(_members(tmp_path / "whole.h5"), _members(tmp_path / "split.h5")):
        np.testing.assert_array_equal(a, b)  # same images per call: bit-identical
    p = _members(tmp_path / "split.h5")[0]
    assert not np.isnan(p[:, :, 10:, 10:]).any()  # every member of every time was written


@pytest.mark.parametrize("step", ["inplace", "reference"])
def test_member_groups_follow_the_budget(tiny_bundle, step, monkeypatch):
    """Groups are sized for the step the pipeline samples with ($PRECIPFAST_STEP here)."""
    monkeypatch.setenv("PRECIPFAST_STEP", step)
    pixels = 120 * 140
    one = state_fields(step) * 4 * pixels
    pipe = Pipeline.from_bundle(tiny_bundle, backend="torch", device="cpu", memory_gb=2.5 * one / 1024 ** 3)
    assert pipe.step_name == step
    lr = np.ones((1, 12, 14), np.float32)
    groups = [g["members"] for _, g in pipe.iter_groups(lr, None, None, pipe.options.replace(members=5, steps=2))]
    assert groups == [[0, 1], [2, 3], [4]]


def test_bad_field_is_refused_before_any_sampling(tiny_bundle):
    from precipfast.errors import InputFormatError
    pipe = Pipeline.from_bundle(tiny_bundle, backend="torch", device="cpu")
    with pytest.raises(InputFormatError, match="negative"):
        pipe.prepare(-np.ones((12, 14), np.float32))


def test_memory_budget_must_be_positive():
    with pytest.raises(ValueError, match=r"--memory-gb must be in \[0.0001, 100000\] GiB, got 0"):
        SampleOptions(memory_gb=0)


def test_progress_counts_every_image_the_backend_denoises(tiny_bundle):
    pipe = Pipeline.from_bundle(tiny_bundle, backend="torch", device="cpu", tile=32, overlap=8)
    seen = {}
    lr = np.ones((6, 7), np.float32)  # 60 x 70 fine: 3 x 3 tiles of 32 px; the coarse grid is one tile
    pipe.sample_field(lr, 2, 3, seed=0, progress=lambda n, stage: seen.__setitem__(stage, seen.get(stage, 0) + n))
    evals = 2 * 3 - 1  # Heun: two evaluations per step, Euler on the last
    assert seen == {"correction": 2 * 1 * evals, "downscaling": 2 * 9 * evals}
    assert sum(seen.values()) == pipe.images_per_field(6, 7, 2, 3)


def test_progress_bar_on_stderr_names_the_stage_and_time(tiny_bundle, coarse_file, tmp_path, capsys):
    opts = SampleOptions(model=str(tiny_bundle), members=2, steps=2, backend="torch", device="cpu")
    run_sample(coarse_file, tmp_path / "p.h5", opts)
    err = capsys.readouterr().err
    # tqdm redraws at most every 0.1 s, so the quick correction stage may never be drawn.
    assert "time 1/2 " in err and "time 2/2 downscaling (member x tile x evaluation)" in err and "100%" in err
    run_sample(coarse_file, tmp_path / "q.h5", opts.replace(quiet=True))
    assert capsys.readouterr().err == ""


def test_a_diverged_run_leaves_no_output(tiny_bundle, coarse_file, tmp_path, monkeypatch):
    from precipfast.errors import SamplingError
    from precipfast.runtime.sampling import pipeline as pl
    real = pl.sample_ensemble
    monkeypatch.setattr(pl, "sample_ensemble", lambda *a, **k: real(*a, **k) * 1e9)  # exp() overflows
    out = tmp_path / "ens.h5"
    with pytest.raises(SamplingError, match="correction stage diverged"):
        run_sample(coarse_file, out, SampleOptions(model=str(tiny_bundle), members=2, steps=2, backend="torch",
                                                   device="cpu", quiet=True))
    assert not out.exists() and not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
