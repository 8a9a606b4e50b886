"""runtime/sampling/amplitude.py: the correction keeps the input's rain in every window (issue 33), member by
member, the same on any batch or tiling; a bad "amplitude" entry is refused with the rule it breaks."""

import numpy as np
import pytest
import torch

import precipfast
from precipfast.config import AmplitudeConfig
from precipfast.errors import EngineMismatchError
from precipfast.runtime.engines.bundle import open_bundle
from precipfast.runtime.sampling.amplitude import keep_rain, window_mean


def test_window_mean_is_a_normalised_gaussian_mean():
    x = torch.zeros(1, 1, 31, 31, dtype=torch.float64)
    x[0, 0, 15, 15] = 1.0
    m = window_mean(x, 2.0)[0, 0]
    assert m.sum().item() == pytest.approx(1.0, rel=1e-9)          # mass kept away from the border
    assert m[15, 15] == m.max() and m[15, 17].item() == pytest.approx(m[15, 15].item() * np.exp(-0.5), rel=1e-9)
    ones = window_mean(torch.ones(1, 1, 7, 9), 3.0)                   # renormalised at the border: a mean
    assert torch.allclose(ones, torch.ones_like(ones, dtype=torch.float64))


def test_keep_rain_gives_each_member_the_input_s_rain_in_every_window():
    gen = torch.Generator().manual_seed(0)
    ref = torch.rand(1, 1, 40, 40, generator=gen, dtype=torch.float64) * 5
    yy = torch.arange(40, dtype=torch.float64).view(1, 1, 40, 1)
    members = ref * (0.4 + 0.2 * torch.sin(yy / 7 + torch.arange(3, dtype=torch.float64).view(3, 1, 1, 1)))
    members = members.expand(3, 1, 40, 40).clone()                     # each too dry, unevenly
    amp = AmplitudeConfig(keep=1.0, window_px=3.0, max_gain=100.0)
    kept = keep_rain(members, ref, amp)
    # every window of every member now holds the input's rain (to the smoothness of the gain field)
    ratio = window_mean(kept, 3.0) / window_mean(ref, 3.0)
    assert ratio.mean().item() == pytest.approx(1.0, abs=0.01) and (ratio - 1).abs().max() < 0.2
    # rain moves, it is not made: where a member was dry it stays dry; members stay in their order at a pixel
    members[1, 0, 10:14, 10:14] = 0
    kept = keep_rain(members, ref, amp)
    assert torch.all(kept[1, 0, 10:14, 10:14] == 0)
    # member-wise: one member alone gets the same values as in the batch (no dependence between members)
    assert torch.equal(keep_rain(members[2:3], ref, amp), kept[2:3])


def test_keep_rain_bounds_the_gain_and_keeps_a_dry_window_dry():
    ref = torch.full((1, 1, 20, 20), 4.0, dtype=torch.float64)
    members = torch.full((2, 1, 20, 20), 0.1, dtype=torch.float64)
    members[1] = 0
    kept = keep_rain(members, ref, AmplitudeConfig(keep=1.0, window_px=2.0, max_gain=4.0))
    assert torch.allclose(kept[0], torch.full_like(kept[0], 0.4))        # 40x asked, 4x given
    assert torch.all(kept[1] == 0)                                        # nothing to scale: stays dry
    half = keep_rain(torch.full((1, 1, 8, 8), 2.0), torch.full((1, 1, 8, 8), 2.0),
                     AmplitudeConfig(keep=0.5, window_px=1.0, max_gain=4.0))
    assert torch.allclose(half, torch.full_like(half, 1.0)) and half.dtype == torch.float32


def test_raising_rain_lifts_no_pixel_above_the_input_s_nearby_peak():
    """The gain restores a window's rain, but a raised pixel stays below the input's largest rate within the
    window's radius (or its own value, if the network put it higher): the rule moves no new peaks in."""
    ref = torch.full((1, 1, 20, 20), 2.0, dtype=torch.float64)
    ref[0, 0, 5, 5] = 6.0
    members = torch.full((2, 1, 20, 20), 0.5, dtype=torch.float64)
    members[0, 0, 14, 14] = 1.9          # raised 4x it would be 7.6: held at the local input max 2.0
    members[1, 0, 14, 14] = 9.0          # the network's own peak above the input's: raised no further than 9.0
    kept = keep_rain(members, ref, AmplitudeConfig(keep=1.0, window_px=2.0, max_gain=4.0))
    assert kept[0, 0, 14, 14] == 2.0 and kept[1, 0, 14, 14] == 9.0
    assert kept[0, 0, 5, 5].item() == pytest.approx(2.0)      # 0.5 raised 4x, under the 6.0 peak nearby
    assert kept.max() <= 9.0 and (kept[0] <= 6.0).all()


def test_the_pipeline_keeps_the_input_s_rain_on_any_batch(shipped_with):
    """Through Pipeline.sample: each corrected member holds the input's rain over a widespread field, where
    the same net without the rule keeps much less; member groups of any size give the same members."""
    torch.set_num_threads(1)
    copy = shipped_with(amplitude={"keep": 1.0, "window_px": 4.0, "max_gain": 4.0})
    assert open_bundle(copy).amplitude("correction") == AmplitudeConfig(1.0, 4.0, 4.0)
    yy, xx = np.mgrid[:24, :24]
    field = (3.0 + 2.5 * np.sin(yy / 3.0) * np.cos(xx / 4.0)).astype(np.float32)
    lat, lon = 40.95 - 0.1 * np.arange(24), -100.95 + 0.1 * np.arange(24)
    kw = dict(lat=lat, lon=lon, members=4, seed=3, steps=2)
    ruled = precipfast.Pipeline.from_bundle(copy, device="cpu", backend="torch", stages=("correction",))
    plain = precipfast.Pipeline.from_bundle(shipped_with("plain", amplitude=None), device="cpu",
                                            backend="torch", stages=("correction",))
    got, raw = ruled.sample(field, **kw)["corrected_lr"], plain.sample(field, **kw)["corrected_lr"]
    total = field.sum()
    assert all(0.95 < m.sum() / total < 1.05 for m in got), [m.sum() / total for m in got]
    assert np.mean([m.sum() / total for m in raw]) < 0.9   # without the rule the net removes rain (the fit's bias)
    small = precipfast.Pipeline.from_bundle(copy, device="cpu", backend="torch", stages=("correction",),
                                            max_batch=1, memory_gb=0.001)
    np.testing.assert_allclose(small.sample(field, **kw)["corrected_lr"], got, rtol=1e-3, atol=1e-5)   # float32 convs
    one = ruled.sample(field, **(kw | {"members": 1}))["corrected_lr"]
    np.testing.assert_allclose(one, got[:1], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("amp, why", [
    ({"keep": 1.0, "window_px": 4.0, "max_gain": 4.0, "spread": 1}, "unknown AmplitudeConfig keys"),
    ({"keep": 0.0, "window_px": 4.0, "max_gain": 4.0}, r"amplitude.keep must be in \[0.25, 4\]"),
    ({"keep": 1.0, "window_px": float("nan"), "max_gain": 4.0}, "finite numbers"),
    ({"keep": 1.0, "window_px": 4.0, "max_gain": 0.5}, r"amplitude.max_gain must be in \[1, 100\]"),
    ({"keep": True, "window_px": 4.0, "max_gain": 4.0}, "finite numbers"),
    ([1.0, 4.0, 4.0], "only the correction stage may, as an object"),
])
def test_a_bad_amplitude_entry_is_refused(shipped_with, amp, why):
    with pytest.raises(EngineMismatchError, match=why):
        open_bundle(shipped_with(amplitude=amp))
