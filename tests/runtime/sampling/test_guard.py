"""runtime/sampling/guard.py: the physical guard's rule, its numbers and its message."""
import math

import numpy as np
import pytest

from precipfast.errors import SamplingError
from precipfast.runtime.sampling.guard import ABS_MAX_MM_H, FLOOR_MM_H, bound_mm_h, check_members, ratio_bound


def test_bound_uses_the_3x3_neighbourhood_max_and_the_caps():
    lr = np.zeros((4, 5), np.float32)
    lr[1, 1] = 9.0
    lr[3, 4] = np.nan
    b = bound_mm_h(lr, ratio=3.0).numpy()
    assert b[0, 0] == b[2, 2] == pytest.approx((1 + 9) * 3 - 1)      # within one coarse pixel of the 9
    assert b[3, 3] == FLOOR_MM_H and b[0, 4] == FLOOR_MM_H            # dry (and NaN) neighbourhoods
    assert bound_mm_h(lr, ratio=1000.0).numpy().max() == ABS_MAX_MM_H
    assert bound_mm_h(lr, 3.0, reach=2).numpy()[3, 3] == pytest.approx(29.0)


def test_ratio_bound_sums_the_stage_bounds():
    assert ratio_bound([1.0, 2.0]) == pytest.approx(math.exp(3.0))
    assert ratio_bound([math.inf]) == pytest.approx(math.exp(4.0))


def test_members_inside_the_bound_pass_and_one_pixel_outside_fails():
    rng = np.random.default_rng(0)
    lr = rng.gamma(0.5, 4.0, (3, 4)).astype(np.float32)
    bound = bound_mm_h(lr, 10.0).numpy().repeat(5, 0).repeat(5, 1)
    ok = (bound * rng.uniform(0, 1, (2, 15, 20))).astype(np.float32)
    check_members(ok, lr, 5, 10.0)
    bad = ok.copy()
    bad[1, 7, 12] = bound[7, 12] * 1.01
    with pytest.raises(SamplingError, match=r"1 member pixel\(s\) above the bound, worst .* \(member 1, pixel 7,12\)"):
        check_members(bad, lr, 5, 10.0)
    bad[1, 7, 12] = np.nan                                            # NaN is the finiteness check's business
    check_members(bad, lr, 5, 10.0)
