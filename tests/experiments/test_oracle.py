"""experiments/oracle.py: the shift oracle reproduces the displacement the held-out frames got and places the
truth exactly where the posterior puts it."""
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.heldout import frame_generator
from experiments.oracle import floor
from experiments.shift_oracle import frame_shift, shift_oracle
from precipfast.config import DegradationConfig
from precipfast.train.degrade import degrade, shift_bilinear
from precipfast.train.sources import FILES
from precipfast.verify.scores import fair_crps

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

SHIFT_ONLY = DegradationConfig(bias_a=1.0, gamma_exp=1.0, shift_px=2.0, blur_px=0.0, noise_std=0.0, p_miss=0.0)


def test_frame_shift_is_the_shift_the_seeded_degradation_applied():
    lr = torch.rand(40, 50, generator=torch.Generator().manual_seed(1)) * 10
    for seed, t in ((0, 3), (2, 15)):
        got = degrade(lr, SHIFT_ONLY, frame_generator(seed, t))
        want = shift_bilinear(lr[None, None].double(), frame_shift(SHIFT_ONLY, seed, t)[None]).float()[0, 0]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert frame_shift(SHIFT_ONLY, 0, 3).abs().max() > 0.1
    # with the full fitted model too: the displacement is degrade's first draw whatever else it does
    full = DegradationConfig(bias_a=1.13, gamma_exp=1.09, shift_px=2.0, blur_px=0.55, noise_std=0.2, p_miss=0.3)
    assert torch.equal(frame_shift(full, 0, 3), frame_shift(SHIFT_ONLY, 0, 3))
    assert torch.equal(frame_shift(DegradationConfig(enabled=False), 0, 3), torch.zeros(2, dtype=torch.float64))


def test_oracle_without_displacement_is_the_truth_and_scores_zero():
    frame = np.random.default_rng(0).gamma(0.5, 3.0, (120, 150)).astype(np.float32)
    m = shift_oracle(frame, 30, 40, 50, torch.zeros(2), 0.0, 10, members=4)
    assert m.shape == (4, 50, 50)
    for k in range(4):
        np.testing.assert_allclose(m[k].numpy(), frame[30:80, 40:90], rtol=1e-5, atol=1e-5)
    assert float(fair_crps(m, torch.from_numpy(frame[30:80, 40:90])).mean()) < 1e-5


def test_oracle_moves_the_truth_by_the_shift_in_fine_pixels():
    """A frame shifted by (dy, dx) coarse pixels shows the truth (i - dy f, j - dx f), as degrade shifts."""
    frame = np.random.default_rng(1).gamma(0.5, 3.0, (120, 150)).astype(np.float32)
    m = shift_oracle(frame, 30, 40, 50, torch.tensor([0.5, -0.3]), 0.0, 10, members=2)
    np.testing.assert_allclose(m[0].numpy(), frame[25:75, 43:93], rtol=1e-5, atol=1e-5)
    # a wider prior spreads the members: the ensemble is no longer the truth
    wide = shift_oracle(frame, 30, 40, 50, torch.zeros(2), 2.0, 10, members=8)
    assert float(wide.std(0).mean()) > 0.5


@pytest.mark.skipif(not all((DATA / f).is_file() for f in FILES), reason=f"no radar files in {DATA}")
def test_floor_on_a_held_out_case_is_the_ratio_of_its_row():
    (r,) = floor(DATA, (0,), cases={"fmi/fmi_20170509": (1,)}, max_windows=1).values()
    (row,) = r["rows"]
    assert r["fair_crps_over_bilinear_input"] == row["shift_oracle_fair_crps"] / row["sat_bilinear_mae"]
    assert r["coarse_fair_crps_over_input"] == row["shift_oracle_coarse_fair_crps"] / row["sat_mae"]
    assert 0.3 < r["coarse_fair_crps_over_input"] < 0.9
    # a light FMI shower moved ~14 km: even knowing the truth, the shift's prior leaves 0.5-0.9x
    assert 0.5 < r["fair_crps_over_bilinear_input"] < 0.9
    assert row["shift"] == frame_shift(DegradationConfig(shift_px=2.0), 0, 1).tolist()
    # a satellite placed exactly leaves the oracle nothing to guess: it is the truth
    (r0,) = floor(DATA, (0,), cases={"fmi/fmi_20170509": (1,)}, max_windows=1, shift_px=0.0).values()
    assert r0["rows"][0]["shift"] == [0.0, 0.0] and r0["fair_crps_over_bilinear_input"] < 1e-5
    assert r0["coarse_fair_crps_over_input"] < 1e-5
