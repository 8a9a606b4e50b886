"""runtime/sampling/dry.py: dry in, dry out. A dry coarse pixel pools only dry 1 km pixels, and the correction
puts no rain beyond the reach of its training errors (the bundle stage's rain_reach_px)."""

import numpy as np
import pytest
import torch

import precipfast
from precipfast.errors import EngineMismatchError
from precipfast.runtime.engines.bundle import open_bundle
from precipfast.runtime.sampling.dry import dry_under, fill_holes, inside_rain, within_reach


def test_within_reach_is_a_square_around_each_wet_pixel():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 2] = 0.3
    near = within_reach(x, 2)[0, 0]
    expect = torch.zeros(9, 9, dtype=torch.bool)
    expect[2:7, 0:5] = True
    assert torch.equal(near, expect)
    assert not within_reach(torch.zeros(1, 1, 5, 5), 3).any()
    assert torch.equal(within_reach(x, 0)[0, 0], x[0, 0] > 0)


def test_dry_under_covers_each_dry_coarse_pixel_s_block():
    coarse = torch.tensor([[[[0.0, 1.0], [0.5, -0.2]]]])
    fine = dry_under(coarse <= 0, 3)[0, 0]
    assert fine.shape == (6, 6) and fine[:3, :3].all() and fine[3:, 3:].all() and not fine[:3, 3:].any()


def _sample(pipe, precip, members=4):
    n, m = precip.shape
    lat, lon = 40.95 - 0.1 * np.arange(n), -100.95 + 0.1 * np.arange(m)
    return pipe.sample(precip.astype(np.float32), lat=lat, lon=lon, members=members, seed=3, steps=3)


def test_dry_input_gives_dry_members_and_rain_stays_within_reach(shipped_bundle):
    torch.set_num_threads(1)
    pipe = precipfast.Pipeline.from_bundle(shipped_bundle, device="cpu", backend="torch")
    reach = open_bundle(shipped_bundle).rain_reach("correction")
    assert reach == 9
    dry = _sample(pipe, np.zeros((24, 24)))
    assert np.all(dry["precip"] == 0) and np.all(dry["corrected_lr"] == 0)
    # one shower in the north-west corner: beyond the reach the corrected members and the 1 km members are dry
    field = np.zeros((30, 30))
    field[2:5, 2:5] = 6.0
    res = _sample(pipe, field)
    far = np.zeros((30, 30), dtype=bool)
    far[5 + reach:, :] = True
    far[:, 5 + reach:] = True
    assert res["corrected_lr"][:, far].max() == 0 and res["corrected_lr"][:, 2:5, 2:5].max() > 0
    fine_far = far.repeat(10, 0).repeat(10, 1)
    assert res["precip"][:, fine_far].max() == 0
    # under every dry corrected pixel, every 1 km pixel of the member is dry
    under = (res["corrected_lr"] <= 0).repeat(10, 1).repeat(10, 2)
    assert res["precip"][under].max() == 0 and res["precip"][~under].max() > 0


def test_inside_rain_needs_the_whole_square_wet():
    x = torch.full((1, 1, 9, 9), 2.0)
    x[0, 0, 4, 7] = 0.5
    inside = inside_rain(x, 1, 1.0)[0, 0]
    assert inside[0].all() and inside[:, 0].all()                # the field's edge is repeated beyond it
    assert not inside[3:6, 6:9].any() and inside[:3].all() and inside[6:].all() and inside[3:6, :6].all()
    assert torch.equal(inside_rain(x, 0, 1.0)[0, 0], x[0, 0] >= 1.0)


def test_fill_holes_takes_the_member_s_own_neighbours():
    x = torch.full((2, 1, 5, 5), 1.0)
    x[0, 0, 2, 3] = 3.0
    holes = torch.zeros(2, 1, 5, 5, dtype=torch.bool)
    holes[0, 0, 2, 2] = True                      # one hole: the mean of its 8 neighbours (one of them 3.0)
    holes[1, 0, 1:4, 1:4] = True                  # a 3 x 3 hole: its centre has no good neighbour
    fallback = torch.full((1, 1, 5, 5), 7.0)
    got = fill_holes(x.masked_fill(holes, 0.0), holes, fallback)
    assert got[0, 0, 2, 2].item() == pytest.approx(10.0 / 8) and got[1, 0, 2, 2] == 7.0
    assert got[1, 0, 1, 1] == 1.0 and torch.equal(got[~holes], x[~holes])      # the rest untouched
    assert fill_holes(x, torch.zeros_like(holes), fallback) is x


def test_no_dry_holes_inside_widespread_rain(shipped_with):
    """Uniform 2-3 mm/h stratiform rain: without the rule the generator punches dry 10 km holes into some
    members; with rain_inside_px 3 none is (the whole 7 x 7 input square rains >= 1 mm/h everywhere)."""
    torch.set_num_threads(1)
    yy, xx = np.mgrid[:24, :24]
    field = 2.5 + 0.5 * np.sin(yy / 2.0) * np.cos(xx / 3.0)
    plain = precipfast.Pipeline.from_bundle(shipped_with("plain", rain_inside_px=None), device="cpu",
                                            backend="torch", stages=("correction",))
    holes = (_sample(plain, field, members=16)["corrected_lr"] < 0.1).sum()
    ruled = precipfast.Pipeline.from_bundle(shipped_with("ruled", rain_inside_px=3), device="cpu",
                                            backend="torch", stages=("correction",))
    got = _sample(ruled, field, members=16)["corrected_lr"]
    assert holes > 0 and (got < 0.1).sum() == 0, holes


@pytest.mark.parametrize("key", ["rain_reach_px", "rain_inside_px"])
@pytest.mark.parametrize("value", [-1, 65, 2.5, True, "9"])
def test_a_bad_rain_reach_is_refused(shipped_with, key, value):
    with pytest.raises(EngineMismatchError, match=f"{key} .* is invalid; expected an integer 0-64"):
        open_bundle(shipped_with(**{key: value}))
