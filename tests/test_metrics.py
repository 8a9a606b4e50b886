"""Verification scores against closed forms."""
import math

import torch

from precipfast.metrics import crps_ensemble, spread_skill


def _crps_bruteforce(x, y, fair=False):
    e = len(x)
    skill = sum(abs(xi - y) for xi in x) / e
    pair = sum(abs(a - b) for a in x for b in x)
    return skill - pair / (2 * e * (e - 1) if fair else 2 * e * e)


def test_crps_matches_definition():
    g = torch.Generator().manual_seed(0)
    members, truth = torch.randn(7, 5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    got, got_fair = crps_ensemble(members, truth), crps_ensemble(members, truth, fair=True)
    for i in range(5):
        for j in range(3):
            x = members[:, i, j].tolist()
            assert math.isclose(float(got[i, j]), _crps_bruteforce(x, float(truth[i, j])), rel_tol=1e-12)
            assert math.isclose(float(got_fair[i, j]), _crps_bruteforce(x, float(truth[i, j]), True), rel_tol=1e-12)


def test_crps_of_point_forecast_is_mae_and_of_gaussian_is_closed_form():
    y = torch.tensor([0.3, -1.0], dtype=torch.float64)
    assert torch.allclose(crps_ensemble(torch.full((4, 2), 1.0, dtype=torch.float64), y), (1.0 - y).abs())
    # N(0, 1) forecast of y = 0: CRPS = 2 phi(0) - 1/sqrt(pi) = (sqrt 2 - 1)/sqrt pi (Gneiting & Raftery 2007).
    x = torch.randn(20000, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = (math.sqrt(2) - 1) / math.sqrt(math.pi)
    assert abs(float(crps_ensemble(x, torch.zeros(1, dtype=torch.float64), fair=True)) - exact) < 0.01


def test_spread_skill_is_one_for_a_calibrated_ensemble():
    g = torch.Generator().manual_seed(2)
    truth = torch.randn(20000, generator=g)
    members = torch.randn(10, 20000, generator=g)  # truth and members from the same N(0, 1)
    assert abs(spread_skill(members, truth) - 1.0) < 0.03
