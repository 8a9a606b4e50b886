"""EDM training loss on a batch of residual targets (Karras et al. 2022, Eq. 2 with Table 1 weighting).

The target is the residual the stage learns (MISSION.md): eps_bias = T(radar_LR) - T(sat) for the
correction stage, eps_res = T(radar_HR) - up(T(radar_LR)) for the downscaling stage; `cond` is the
field the residual is added to (plus aux channels).
"""
from __future__ import annotations

import math

import torch

from precipfast.config import EDMConfig, TransformConfig
from precipfast.edm import Denoiser, edm_loss, training_sigmas
from precipfast.metrics import crps_ensemble
from precipfast.transform import inverse

CRPS_MEMBERS = 4   # members per training sample of a "crps" stage (AIFS-CRPS trains with 2-4)


def batch_loss(denoiser: Denoiser, target: torch.Tensor, cond: torch.Tensor, edm_cfg: EDMConfig,
               generator: torch.Generator | None = None, transform: TransformConfig | None = None) -> torch.Tensor:
    """Mean EDM loss over the batch; sigma ~ logN(P_mean, P_std^2), noise ~ N(0, I) from `generator`.
    A regression stage (edm_cfg.kind) is trained with the plain MSE of its deterministic mean, a "crps"
    stage with crps_loss."""
    if edm_cfg.kind == "crps":
        return crps_loss(denoiser, target, cond, edm_cfg, transform or TransformConfig(), generator)
    if edm_cfg.kind == "regression":
        zeros = torch.zeros(target.shape[0], device=target.device)
        return ((denoiser(torch.zeros_like(target), zeros, cond) - target) ** 2).mean()
    sigma = training_sigmas(target.shape[0], edm_cfg.p_mean, edm_cfg.p_std, generator).to(target.device)
    noise = torch.randn(target.shape, generator=generator).to(target.device)
    return edm_loss(denoiser, target, cond, sigma, noise, edm_cfg.sigma_data).mean()


def crps_loss(denoiser: Denoiser, target: torch.Tensor, cond: torch.Tensor, edm_cfg: EDMConfig,
              transform: TransformConfig, generator: torch.Generator | None = None,
              members: int = CRPS_MEMBERS) -> torch.Tensor:
    """Fair CRPS (Ferro 2014) in mm/h of `members` generated fields per sample, averaged over pixels.

    The CRPS is a proper score, so its minimum is the true conditional distribution of the residual and the
    members become calibrated samples (Lang et al. 2024, AIFS-CRPS); the fair form is unbiased with few
    members. Scored in mm/h, the score the suite reports, so heavy rain weighs what it weighs there. The
    members' rates are those the stage writes: residual capped at denoised_max, rate clipped at 0."""
    b = target.shape[0]
    cond_m = cond.repeat_interleave(members, 0)
    z = torch.randn((b * members,) + tuple(target.shape[1:]), generator=generator).to(target.device)
    res = denoiser(z, torch.ones(b * members, device=target.device), cond_m)
    if math.isfinite(edm_cfg.denoised_max):
        res = res.clamp_max(edm_cfg.denoised_max)
    base = cond[:, : target.shape[1]]
    ens = inverse(cond_m[:, : target.shape[1]] + res, transform).view(b, members, *target.shape[1:])
    truth = inverse(base + target, transform)
    return crps_ensemble(ens.transpose(0, 1), truth, fair=True).mean()
