"""EDM training loss on a batch of residual targets (Karras et al. 2022, Eq. 2 with Table 1 weighting).

The target is the residual the stage learns (MISSION.md): eps_bias = T(radar_LR) - T(sat) for the
correction stage, eps_res = T(radar_HR) - up(T(radar_LR)) for the downscaling stage; `cond` is the
field the residual is added to (plus aux channels).
"""
from __future__ import annotations

import torch

from precipfast.config import EDMConfig
from precipfast.edm import Denoiser, edm_loss, training_sigmas


def batch_loss(denoiser: Denoiser, target: torch.Tensor, cond: torch.Tensor, edm_cfg: EDMConfig,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean EDM loss over the batch; sigma ~ logN(P_mean, P_std^2), noise ~ N(0, I) from `generator`.
    A regression stage (edm_cfg.kind) is trained with the plain MSE of its deterministic mean."""
    if edm_cfg.kind == "regression":
        zeros = torch.zeros(target.shape[0], device=target.device)
        return ((denoiser(torch.zeros_like(target), zeros, cond) - target) ** 2).mean()
    sigma = training_sigmas(target.shape[0], edm_cfg.p_mean, edm_cfg.p_std, generator).to(target.device)
    noise = torch.randn(target.shape, generator=generator).to(target.device)
    return edm_loss(denoiser, target, cond, sigma, noise, edm_cfg.sigma_data).mean()
