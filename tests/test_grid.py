"""precipfast.grid: pooling keeps what it promises (max keeps maxima, mean keeps the areal mean), NaN rules."""
import numpy as np
import pytest
import torch

from precipfast.grid import coarsen, upsample


def _field(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.gamma(0.5, 2.0, size=shape) * (rng.random(shape) < 0.4)).astype(np.float32)


@pytest.mark.parametrize("factor", [2, 5, 10])
def test_max_pooling_preserves_the_maximum_of_every_block(factor):
    hr = _field((3, 4 * factor, 6 * factor))
    lr = coarsen(hr, factor, "max")
    assert lr.shape == (3, 4, 6)
    assert lr.max() == hr.max()
    blocks = hr.reshape(3, 4, factor, 6, factor)
    np.testing.assert_array_equal(lr, blocks.max(axis=(2, 4)))


@pytest.mark.parametrize("factor", [2, 5, 10])
def test_mean_pooling_preserves_the_areal_mean(factor):
    hr = _field((2, 3 * factor, 5 * factor)).astype(np.float64)
    lr = coarsen(hr, factor, "mean")
    np.testing.assert_allclose(lr.mean(axis=(-2, -1)), hr.mean(axis=(-2, -1)), rtol=1e-12)


def test_torch_and_numpy_agree_and_keep_their_type():
    hr = _field((1, 1, 20, 30))
    for how in ("max", "mean"):
        a, b = coarsen(hr, 10, how), coarsen(torch.from_numpy(hr), 10, how)
        assert isinstance(a, np.ndarray) and torch.is_tensor(b)
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-6)


def test_nan_rules():
    hr = np.ones((4, 4), np.float32)
    hr[0, 0] = np.nan           # one NaN in block (0, 0)
    hr[2:, 2:] = np.nan         # block (1, 1) all NaN
    hr[0, 1] = 5.0
    mx, mn = coarsen(hr, 2, "max"), coarsen(hr, 2, "mean")
    assert mx[0, 0] == 5.0      # max ignores a NaN while the block has valid pixels
    assert np.isnan(mx[1, 1])   # ... and is NaN when all are NaN
    assert np.isnan(mn[0, 0]) and np.isnan(mn[1, 1])  # mean is NaN with any NaN
    assert mx[0, 1] == mn[0, 1] == 1.0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="not divisible"):
        coarsen(np.zeros((11, 10)), 10)
    with pytest.raises(ValueError, match="how must be"):
        coarsen(np.zeros((10, 10)), 10, "median")
    with pytest.raises(ValueError, match="positive integer"):
        coarsen(np.zeros((10, 10)), 0)


def test_upsample_keeps_constant_fields_and_block_means_for_nearest():
    lr = torch.rand(2, 1, 3, 4)
    up = upsample(lr, 5, "nearest")
    torch.testing.assert_close(coarsen(up, 5, "mean"), lr)
    const = torch.full((1, 1, 3, 3), 2.5)
    torch.testing.assert_close(upsample(const, 4), torch.full((1, 1, 12, 12), 2.5))
