"""U-Net denoiser: any H x W, batch 1, config validation."""
import pytest
import torch

from precipfast.config import UNetConfig
from precipfast.unet import UNet, count_flops

CFG = UNetConfig(model_channels=8, channel_mult=(1, 2, 2), attn_levels=(2,), channels_per_head=8, cond_channels=2)


def _randomize(net):
    # Zero-initialised output layers make every shape test pass trivially: perturb them.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net


@pytest.mark.parametrize("hw", [(37, 53), (16, 16), (1, 1), (9, 64)])
def test_odd_sizes_batch_one(hw):
    net = _randomize(UNet(CFG)).eval()
    x = torch.randn(1, 1, *hw)
    out = net(x, torch.zeros(1), torch.randn(1, 2, *hw))
    assert out.shape == (1, 1, *hw)
    assert torch.isfinite(out).all() and out.abs().sum() > 0


def test_batch_independence():
    """A sample's output does not depend on the other samples in the batch (no batch statistics)."""
    net = _randomize(UNet(CFG)).eval()
    x, c, s = torch.randn(3, 1, 20, 24), torch.randn(3, 2, 20, 24), torch.tensor([0.1, 1.0, 3.0])
    full = net(x, s, c)
    one = net(x[1:2], s[1:2], c[1:2])
    torch.testing.assert_close(full[1:2], one, rtol=1e-5, atol=1e-5)


def test_conditioning_changes_output():
    net = _randomize(UNet(CFG)).eval()
    x = torch.randn(1, 1, 16, 16)
    a = net(x, torch.zeros(1), torch.zeros(1, 2, 16, 16))
    b = net(x, torch.zeros(1), torch.ones(1, 2, 16, 16))
    assert (a - b).abs().max() > 1e-4


def test_config_validation_messages():
    with pytest.raises(ValueError, match=r"--attn-levels \(unet.attn_levels\) must index levels 0..1"):
        UNetConfig(channel_mult=(1, 2), attn_levels=(2,))
    with pytest.raises(ValueError, match=r"--model-channels \(unet.model_channels\) must be a positive multiple of 4"):
        UNetConfig(model_channels=10)


def test_flops_scale_with_area():
    f1, f2 = count_flops(CFG, 16, 16), count_flops(CFG, 32, 32)
    # Convolutions dominate: 4x the pixels, about 4x the FLOPs (attention adds a little more).
    assert 3.9 < f2 / f1 < 4.6
