"""Shared fixtures for export tests: a tiny U-Net denoiser with non-trivial random weights."""
import pytest
import torch

from precipfast.config import EDMConfig, SamplerConfig, UNetConfig, to_dict
from precipfast.denoiser import build_denoiser

TINY = dict(model_channels=8, channel_mult=(1, 2), attn_levels=(1,), channels_per_head=8)


def tiny_denoiser(cond_channels: int = 2, seed: int = 0, sigma_data: float = 0.5):
    """A 2-level U-Net whose zero-initialised layers are re-drawn, so F is far from zero and parity is
    a real test (with EDM's zero init, D = c_skip x exactly and any export would 'match')."""
    torch.manual_seed(seed)
    unet = UNetConfig(cond_channels=cond_channels, **TINY)
    den = build_denoiser(unet, EDMConfig(sigma_data=sigma_data))
    with torch.no_grad():
        for p in den.parameters():
            p.normal_(0.0, 0.15)
    return den.eval()


def stage_config(den) -> dict:
    """A checkpoint-style config dict for `den`."""
    return {"unet": to_dict(den.net.cfg), "edm": to_dict(EDMConfig(sigma_data=den.sigma_data)),
            "sampler": to_dict(SamplerConfig(num_steps=12)), "step": 7,
            "history": [{"step": 7, "val_crps_mm_h": 0.5}]}


@pytest.fixture(scope="module")
def tiny():
    return tiny_denoiser()


@pytest.fixture(scope="module")
def tiny_onnx(tiny, tmp_path_factory):
    from precipfast.export.onnx import export_onnx
    return export_onnx(tiny, tmp_path_factory.mktemp("onnx") / "d.onnx", cond_channels=2)


@pytest.fixture(scope="session")
def make_tiny():
    """Factory fixture: `make_tiny(cond_channels, seed, sigma_data)` (test files import nothing)."""
    return tiny_denoiser


@pytest.fixture(scope="session")
def make_stage_config():
    return stage_config
