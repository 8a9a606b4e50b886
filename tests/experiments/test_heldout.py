"""experiments/heldout.py: the shipped checkpoints against the strongest simple baselines on radar from places and
days they never saw (a skill ceiling: a regression of the model fails here)."""
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments import heldout
from precipfast.train.sources import FILES

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
CKPT = ROOT / "checkpoints" / "v2"
pytestmark = pytest.mark.skipif(not all((DATA / f).is_file() for f in FILES), reason=f"no radar files in {DATA}")


def test_wettest_windows_are_nan_free_and_disjoint():
    rng = np.random.default_rng(0)
    frame = rng.gamma(0.3, 2.0, (100, 120)).astype(np.float32)
    frame[:30, :30] = np.nan
    frame[60:80, 80:100] += 50                                          # the wettest spot
    wins = heldout.wettest_windows(frame, 40, 3, stride=10)
    y, x = wins[0]
    assert len(wins) == 3 and y <= 60 <= 80 <= y + 40 and x <= 80 <= 100 <= x + 40   # holds the wet spot
    for y, x in wins:
        assert np.isfinite(frame[y:y + 40, x:x + 40]).all()
    for i, (a, b) in enumerate(wins):
        assert all(abs(a - c) >= 40 or abs(b - d) >= 40 for c, d in wins[i + 1:])


@pytest.mark.slow
def test_shipped_checkpoints_beat_interpolation_on_held_out_places():
    """Finnish spring showers and Melbourne winter showers: neither place nor season is in training."""
    from experiments.qmap import quantile_map
    res = heldout.run(CKPT, DATA, members=4, steps_list=(8,), default_steps=8,
                      cases={"fmi/fmi_20170509": (1,), "bom/bom_2_20180616": (2,)},
                      qmap=quantile_map(np.linspace(0, 10, 50), np.linspace(0, 10, 50)),
                      corrections=("correction_crps_max48",))
    s = res["summary"]
    assert s["down_8"]["fair_crps_over_better_bilinear"] <= 0.8          # measured 0.69 at 250 steps
    assert 0.5 <= s["down_8"]["median_spread_skill"] <= 1.6
    two = s["two_crps_max48"]                                        # the shipped correction (a CRPS generator)
    assert two["coarse_fair_crps_over_input"] <= 0.9                 # stage 1 helps (measured 0.70)
    assert two["fair_crps_over_bilinear_input"] < s["two_none"]["fair_crps_over_bilinear_input"]
    assert two["worst_p9999_over_truth_max"] <= 2.0 and two["worst_max_over_truth_max"] <= 4.0  # never invents


def test_case_table_lists_each_case_against_its_baselines():
    down = {"fair_crps": 0.3, "bilinear_mean_mae": 0.6, "bilinear_max_mae": 0.5, "spread_skill": 0.9, "psd_ratio": 0.8}
    two = {"coarse_mae": 0.4, "coarse_fair_crps": 0.25, "fair_crps": 0.45, "p9999": 30.0, "max": 45.0}
    res = {"default_steps": 8, "rows": [{"source": "qpe/20160922", "frame": 3, "row0": 100, "col0": 40,
                                         "truth_max": 20.0, "sat_mae": 0.5, "sat_bilinear_mae": 0.9,
                                         "down_8": down, "two_crps_max": two}]}
    lines = heldout.case_table(res, "crps_max").splitlines()
    assert len(lines) == 3 and "crps_max: coarse MAE / input" in lines[0]
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    #              CRPS / better bilinear 0.3/0.5, coarse MAE 0.4/0.5, CRPS 0.25/0.5, 0.45/0.9, 30/20, 45/20
    assert cells == ["qpe/20160922", "3", "100, 40", "20.0", "0.600", "0.90", "0.80", "0.80", "0.50", "0.500",
                     "1.50", "2.25"]


def test_runtime_route_crop_carries_its_neighbours_and_scores_both_routes():
    """experiments/heldout_runtime.py: a case is the reader's --bbox crop (with the frame's pixels around it),
    sampled by the shipped bundle's Pipeline and by the same bundle in one tile without neighbours."""
    from experiments import heldout_runtime
    sat = np.arange(30 * 40, dtype=np.float32).reshape(30, 40)
    fld = heldout_runtime.case_field(sat, 3, 30, 5, 8)
    c = fld.context
    assert (c.top, c.bottom, c.left, c.right) == (3, 8, 8, 5) and c.precip.shape == (1, 16, 18)
    np.testing.assert_array_equal(c.precip[0, c.top:c.top + 5, c.left:c.left + 5], fld.precip[0])
    np.testing.assert_array_equal(fld.precip[0], sat[3:8, 30:35])
    assert heldout_runtime.case_field(sat, 3, 30, 5, 0).context is None
    res = heldout_runtime.run(DATA, members=2, seeds=(0,), ckpt=CKPT, cases={"fmi/fmi_20170509": (1,)},
                              max_windows=1)
    (row,) = res["rows"]
    for route in heldout_runtime.ROUTES:
        s = res["summary"][f"{route}_0"]
        # two members on a light shower: the shipped route helps; all stay physical; without the correction
        # the coarse field is the input (every member alike: its fair CRPS is its MAE)
        assert 0.3 < s["fair_crps_over_bilinear_input"] < 1.0
        if route == "no_correction":
            assert s["coarse_fair_crps_over_input"] == pytest.approx(1.0) == s["coarse_mean_mae_over_input"]
            assert s["coarse_outside_range"] > 0.5   # one value a pixel: the truth is outside wherever they differ
        else:
            assert s["coarse_fair_crps_over_input"] < 1.0
        assert s["worst_p9999_over_truth_max"] <= 2.0 and row[f"{route}_0"]["fair_crps"] > 0
        # issue 33's measures: the corrected mean against the input, the rain kept, the truth outside the members
        assert 0 < s["coarse_mean_mae_over_input"] < 1.5 and 0.3 < s["rain_over_truth"] < 3.0
        assert 0 <= s["outside_range"] <= 1 and 0 <= s["far_rain_share"] < 0.05 and s["worst_far_max"] >= 0
    assert row["shipped_0"]["coarse_fair_crps"] != row["one_tile_no_context_0"]["coarse_fair_crps"]
    # the information floor beside them (experiments/oracle.py): the truth itself, spread by the shift's prior
    o = res["summary"]["shift_oracle"]
    assert 0.1 < o["fair_crps_over_bilinear_input"] < 1.0 and row["shift_oracle_fair_crps"] > 0
    assert o["fair_crps_over_bilinear_clean"] > o["fair_crps_over_bilinear_input"]
    assert 0.1 < o["coarse_fair_crps_over_input"] < 1.0 and row["shift_oracle_coarse_fair_crps"] > 0


def test_coarse_only_runs_the_correction_alone_with_the_same_coarse_scores():
    """--coarse-only (many error draws fast): the correction stage alone, the same coarse scores as the
    two-stage run, no 1 km ones."""
    from experiments import heldout_runtime
    kw = dict(members=2, seeds=(0,), ckpt=CKPT, cases={"fmi/fmi_20170509": (1,)}, max_windows=1, routes=("shipped",))
    full, coarse = heldout_runtime.run(DATA, **kw), heldout_runtime.run(DATA, coarse_only=True, **kw)
    f, c = full["summary"]["shipped_0"], coarse["summary"]["shipped_0"]
    assert "fair_crps_over_bilinear_input" not in c and "fair_crps" not in coarse["rows"][0]["shipped_0"]
    for k in ("coarse_fair_crps_over_input", "coarse_mean_mae_over_input", "coarse_rain_over_truth",
              "coarse_outside_range", "worst_coarse_max_over_truth_max"):
        assert c[k] == pytest.approx(f[k], rel=1e-5), k
    assert 0.2 < c["coarse_rain_over_truth"] < 3.0 and c["worst_coarse_max_over_truth_max"] > 0.2
    assert coarse["summary"]["input"]["coarse_rain_over_truth"] > 0
    # the truth's rank among the 2 members (Talagrand): 3 shares summing to 1, the same as the full run's
    hist = c["coarse_rank_histogram"]
    assert len(hist) == 3 and sum(hist) == pytest.approx(1.0, abs=1e-3) and hist == pytest.approx(f["coarse_rank_histogram"], abs=0.01)
    assert len(f["rank_histogram"]) == 3 and sum(f["rank_histogram"]) == pytest.approx(1.0, abs=1e-3)


def test_over_draws_averages_skill_and_keeps_the_worst_peaks():
    from experiments.heldout_runtime import over_draws
    got = over_draws({0: {"shipped_0": {"fair_crps_over_bilinear_input": 0.5, "worst_p9999_over_truth_max": 2.1,
                                        "rank_histogram": [0.2, 0.8]}},
                      3: {"shipped_0": {"fair_crps_over_bilinear_input": 0.6, "worst_p9999_over_truth_max": 1.5,
                                        "rank_histogram": [0.4, 0.6]}}})
    assert got == {"shipped_0": {"fair_crps_over_bilinear_input": 0.55, "worst_p9999_over_truth_max": 2.1,
                                 "rank_histogram": [0.3, 0.7]}}


def test_correction_domains_score_each_domain_by_ring():
    from experiments import heldout_runtime
    res = heldout_runtime.correction_domains(DATA, members=4, seed=5, ckpt=CKPT, cases={"fmi/fmi_20170509": (1,)})
    assert set(res) == set(heldout_runtime.DOMAINS)
    for v in res.values():
        assert 0.2 < v["coarse_fair_crps_over_input"] < 1.2 and len(v["by_ring"]) == 10   # 20 px crops: rings 0-9
    # the crop alone and the crop among its neighbours are different problems at the crop's edge
    assert res["crop_one_tile"]["by_ring"][0] != res["crop_context8_tiled32"]["by_ring"][0]


def test_outside_range_counts_the_truth_beyond_every_member():
    from experiments.heldout_runtime import outside_range
    members = torch.tensor([[[0.0, 1.0, 2.0]], [[0.0, 3.0, 4.0]]])
    truth = torch.tensor([[0.0, 5.0, 3.0]])      # tie at zero inside, above every member, between them
    assert outside_range(members, truth) == 1 / 3
