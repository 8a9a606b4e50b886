"""experiments/amplitude.py: the shape oracle's and a bundle's corrected mean rescaled to c times the input's
rain, and the c where every panel member is never worse while the fit gains 20 %."""
from pathlib import Path

import pytest
import torch

from experiments import amplitude
from precipfast.train.sources import FILES

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not all((DATA / f).is_file() for f in FILES), reason=f"no radar files in {DATA}")


def test_rescaled_mae_scores_the_shape_at_each_amplitude():
    truth = torch.tensor([[2.0, 0.0], [4.0, 2.0]], dtype=torch.float64)
    sat = 0.5 * truth                       # the right shape at half the rain
    got = amplitude.rescaled_mae(truth * 3, sat, truth, scales=(1.0, 2.0, 4.0))
    assert got.tolist() == pytest.approx([1.0, 0.0, 2.0])   # c = 2 undoes the half: only then exact


def test_feasible_keeps_the_c_where_every_member_passes():
    res = {"scales": [0.8, 0.9, 1.0], "members": {"fit": {"oracle": [0.7, 0.79, 0.85]},
                                                  "under": {"oracle": [1.05, 0.99, 0.97]}}}
    assert amplitude.feasible(res) == [0.9] and amplitude.feasible(res, fit_max=0.75) == []


def test_sweep_on_one_case_with_a_bundle():
    res = amplitude.sweep(DATA, panel=("fit", "under"), cases={"fmi/fmi_20170509": (1,)}, max_windows=1,
                          bundle=ROOT / "precipfast" / "bundles" / "default", members=2)
    assert res["scales"][0] == 0.5 and len(res["scales"]) == 19
    for name in ("fit", "under"):
        v = res["members"][name]
        assert v["input_mae"] > 0 and len(v["oracle"]) == len(v["model"]) == 19
        assert min(v["oracle"]) < 1.0                     # the truth's shape, placed, beats the input somewhere
    # under a low satellite more rain helps; under the fit (1.3x high) less does
    i90, i110 = res["scales"].index(0.9), res["scales"].index(1.1)
    assert res["members"]["under"]["oracle"][i110] < res["members"]["under"]["oracle"][i90]
    assert res["members"]["fit"]["oracle"][i90] < res["members"]["fit"]["oracle"][i110]
    with pytest.raises(ValueError, match="no satellite error"):
        amplitude.sweep(DATA, panel=("clean",), cases={"fmi/fmi_20170509": (1,)}, max_windows=1)
