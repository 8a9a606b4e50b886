"""EDM training loss on a batch of residual targets (Karras et al. 2022, Eq. 2 with Table 1 weighting).

The target is the residual the stage learns (MISSION.md): eps_bias = T(radar_LR) - T(sat) for the
correction stage, eps_res = T(radar_HR) - up(T(radar_LR)) for the downscaling stage; `cond` is the
field the residual is added to (plus aux channels).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from precipfast.config import EDMConfig, TrainConfig, TransformConfig
from precipfast.edm import Denoiser, edm_loss, training_sigmas
from precipfast.transform import inverse
from precipfast.verify.scores import fair_crps

CRPS_MEMBERS = 4   # members per training sample of a "crps" stage (AIFS-CRPS trains with 2-4)


def batch_loss(denoiser: Denoiser, target: torch.Tensor, cond: torch.Tensor, edm_cfg: EDMConfig,
               generator: torch.Generator | None = None, transform: TransformConfig | None = None,
               train_cfg: TrainConfig | None = None) -> torch.Tensor:
    """Mean EDM loss over the batch; sigma ~ logN(P_mean, P_std^2), noise ~ N(0, I) from `generator`.
    A regression stage (edm_cfg.kind) is trained with the plain MSE of its deterministic mean, a "crps"
    stage with crps_loss."""
    if edm_cfg.kind == "crps":
        tc = train_cfg or TrainConfig()
        return crps_loss(denoiser, target, cond, edm_cfg, transform or TransformConfig(), generator,
                         scales=tc.crps_scales, space=tc.crps_space, max_scales=tc.crps_max_scales)
    if edm_cfg.kind == "regression":
        zeros = torch.zeros(target.shape[0], device=target.device)
        return ((denoiser(torch.zeros_like(target), zeros, cond) - target) ** 2).mean()
    sigma = training_sigmas(target.shape[0], edm_cfg.p_mean, edm_cfg.p_std, generator).to(target.device)
    noise = torch.randn(target.shape, generator=generator).to(target.device)
    return edm_loss(denoiser, target, cond, sigma, noise, edm_cfg.sigma_data).mean()


def crps_loss(denoiser: Denoiser, target: torch.Tensor, cond: torch.Tensor, edm_cfg: EDMConfig,
              transform: TransformConfig, generator: torch.Generator | None = None,
              members: int = CRPS_MEMBERS, scales: tuple[int, ...] = (1,), space: str = "rate",
              max_scales: tuple[int, ...] = ()) -> torch.Tensor:
    """Fair CRPS (Ferro 2014) of `members` generated fields per sample, averaged over pixels and over the
    block-averaging `scales` and block-maximum `max_scales`.

    The CRPS is a proper score, so its minimum is the true conditional distribution and the members become
    calibrated samples (Lang et al. 2024, AIFS-CRPS); the fair form is unbiased with few members. Scored
    pixel by pixel alone it says nothing of how pixels vary together: members of independent pixel noise
    have calibrated pixels but far too rough fields, whose maxima exceed any real one. Scoring block means
    too (scales 2, 4, 8: 20-80 km) rewards errors that are coherent in space, as the satellite's are
    (displacement, footprint blur); each block mean's CRPS is proper as well, so the sum stays proper.
    space "rate" scores mm/h, the suite's score, "log" log1p of the block-mean rates (multiplicative
    errors weigh alike at every intensity). Block maxima (max_scales) score the distribution of the members'
    peaks against the truth's: the CRPS of a field's functional is proper too, and this one is what the
    guard and the "never invent intensities" limits look at. The members' rates are those the stage writes: residual capped
    at denoised_max, rate clipped at 0."""
    b, shape = target.shape[0], tuple(target.shape[1:])
    cond_m = cond.repeat_interleave(members, 0)
    z = torch.randn((b * members,) + shape, generator=generator).to(target.device)
    res = denoiser(z, torch.ones(b * members, device=target.device), cond_m)
    if math.isfinite(edm_cfg.denoised_max):
        res = res.clamp_max(edm_cfg.denoised_max)
    ens = inverse(cond_m[:, : shape[0]] + res, transform)                 # (b * members, C, H, W) mm/h
    truth = inverse(cond[:, : shape[0]] + target, transform)
    total = 0.0
    pooled = [(F.avg_pool2d, k) for k in scales] + [(F.max_pool2d, k) for k in max_scales]
    for pool, k in pooled:
        e, t = (pool(ens, k), pool(truth, k)) if k > 1 else (ens, truth)
        if space == "log":
            e, t = torch.log1p(e), torch.log1p(t)
        total = total + fair_crps(e.view(b, members, *e.shape[1:]).transpose(0, 1), t).mean()
    return total / len(pooled)
