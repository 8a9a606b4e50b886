"""The denoiser D(x, sigma, cond): the EDM-preconditioned U-Net built from its configs, and its weights
loaded from safetensors. Training builds it to learn; the runtime builds it to sample."""
from __future__ import annotations

from pathlib import Path

import torch

from precipfast.config import EDMConfig, UNetConfig
from precipfast.edm import Preconditioned
from precipfast.errors import EngineMismatchError
from precipfast.unet import UNet


def build_denoiser(unet_cfg: UNetConfig, edm_cfg: EDMConfig) -> Preconditioned:
    """The EDM-preconditioned U-Net D(x, sigma, cond) for the given configs (random weights)."""
    mean_net = UNet(unet_cfg) if edm_cfg.kind == "mean+edm" else None   # CorrDiff's regression mean
    return Preconditioned(UNet(unet_cfg), edm_cfg.sigma_data, edm_cfg.kind, edm_cfg.denoised_max, mean_net)


def load_weights(module: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights, refusing missing/unexpected keys or shapes with one clear line."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise EngineMismatchError(f"weights file {str(path)!r} is missing")
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated headers
        raise EngineMismatchError(f"weights file {str(path)!r} is unreadable ({e})") from None
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or bad:
        raise EngineMismatchError(
            f"weights {str(path)!r} do not match the network config: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, wrong shape {bad[:3]}")
    module.load_state_dict(state)
