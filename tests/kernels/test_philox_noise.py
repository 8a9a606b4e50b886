"""The device noise kernel gives precipfast/noise.py's numbers bit for bit: same seed, member, stage, step
and global pixel, same float32 value, whatever the window, member order or block boundaries."""
import pytest
import torch

from precipfast import noise
from precipfast.kernels.philox_noise import NoiseWindow, member_noise, member_noise_inplace, member_noise_reference
from precipfast.noise import Origin

# Windows chosen to reach every word of the layout: a seed above 2^32 (key word 1) whose low word is
# above 2^31 (an unsigned key word), odd columns (windows starting on lane 1), a global index above
# 2^32 (counter word 1), members out of order, and shapes that are not multiples of the 1024-pixel
# block (37 x 53 = 1961, 3 x 1 x 1).
WINDOWS = [
    ((1, 1, 37, 53), NoiseWindow(2 ** 40 + 2 ** 31 + 12345, (5,), "downscaling", Origin(3, 7, 101))),
    ((3, 1, 19, 67), NoiseWindow(7, (4, 0, 2), "correction", Origin(50_000, 99_931, 100_001))),  # p > 2^32
    ((3, 1, 1, 1), NoiseWindow(0, (0, 1, 2), "downscaling", Origin(0, 0, 1))),
]


def _poisoned(shape, device):
    """A state buffer full of NaN: any element the kernel fails to write stays NaN."""
    return torch.full(shape, float("nan"), device=device)


@pytest.mark.parametrize("shape, win", WINDOWS)
def test_initial_noise_is_bit_identical_to_runtime_noise(shape, win, device):
    got = member_noise(_poisoned(shape, device), win, 0, 80.0, accumulate=False).cpu()
    eps = noise.normal_members(win.seed, win.members, win.stage, 0, win.origin.row0, win.origin.row0 + shape[2],
                               win.origin.col0, win.origin.col0 + shape[3], win.origin.width)
    # Exact: the Philox words are integers; Box-Muller runs in float64 and is rounded once to float32,
    # where a last-bit difference of numpy's / libdevice's log, cos or sin against torch's survives in
    # ~1e-8 of samples (precipfast/noise.py), i.e. in none of these few thousand.
    torch.testing.assert_close(got, eps * 80.0, rtol=0, atol=0)
    assert not got.isnan().any()


@pytest.mark.parametrize("shape, win", WINDOWS)
def test_churn_noise_accumulates_like_the_reference(shape, win, device):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g)
    coef = 0.7310585786300049  # a float64 coefficient, rounded to float32 as torch rounds a scalar
    got = member_noise(x.clone().to(device), win, 11, coef, accumulate=True).cpu()
    # Exact: x + coef * eps with the same float32 roundings (fp fusion is off in the kernel).
    torch.testing.assert_close(got, member_noise_reference(x, win, 11, coef, True), rtol=0, atol=0)


def test_inplace_cpu_noise_equals_reference():
    shape, win = WINDOWS[1]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    ref = member_noise_reference(x, win, 2, 0.25, True)
    torch.testing.assert_close(member_noise_inplace(x.clone(), win, 2, 0.25, True), ref, rtol=0, atol=0)
    torch.testing.assert_close(member_noise_inplace(_poisoned(shape, "cpu"), win, 2, 3.0, False),
                               member_noise_reference(x, win, 2, 3.0, False), rtol=0, atol=0)


def test_member_noise_refuses_bad_arguments(device):
    win = NoiseWindow(1, (0, 1), "downscaling", Origin(0, 0, 8))
    with pytest.raises(ValueError, match="float32"):
        member_noise(torch.zeros(2, 1, 4, 8, dtype=torch.float64, device=device), win, 0, 1.0, False)
    with pytest.raises(ValueError, match="names 2"):
        member_noise(torch.zeros(3, 1, 4, 8, device=device), win, 0, 1.0, False)
    with pytest.raises(ValueError, match="step"):
        member_noise(torch.zeros(2, 1, 4, 8, device=device), win, 70_000, 1.0, False)
    with pytest.raises(ValueError, match="stage"):
        NoiseWindow(1, (0,), "nowcast", Origin(0, 0, 8))
    with pytest.raises(ValueError, match="width"):
        NoiseWindow(1, (0,), "downscaling", Origin(0, 0, 0))
