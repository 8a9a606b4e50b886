"""Verification scores for precipitation ensembles (pySTEPS-style: skill is asserted, not just shapes).

CRPS uses the ensemble ("fair"-free, Gneiting & Raftery 2007, Eq. 21) form
    CRPS = mean_k |x_k - y| - 1/(2 E^2) sum_{k,l} |x_k - x_l|,
computed with the sorted-member identity so it costs O(E log E) per pixel, not O(E^2).
"""
from __future__ import annotations

import torch


def crps_ensemble(members: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Pixel-wise CRPS. members (E, ...), truth (...). NaN in truth propagates. Returns (...)."""
    e = members.shape[0]
    skill = (members - truth.unsqueeze(0)).abs().mean(dim=0)
    x = members.sort(dim=0).values
    # sum_{k,l} |x_k - x_l| = 2 sum_i (2i - E + 1) x_(i) for sorted x, i = 0..E-1
    w = (2 * torch.arange(e, dtype=x.dtype, device=x.device) - e + 1).view(-1, *([1] * (x.ndim - 1)))
    spread = 2 * (w * x).sum(dim=0) / (2 * e * e)
    return skill - spread


def nanmean(x: torch.Tensor) -> float:
    return float(x[~torch.isnan(x)].mean()) if (~torch.isnan(x)).any() else float("nan")


def mae(pred: torch.Tensor, truth: torch.Tensor) -> float:
    return nanmean((pred - truth).abs())


def rmse(pred: torch.Tensor, truth: torch.Tensor) -> float:
    return nanmean((pred - truth) ** 2) ** 0.5


def spread_skill(members: torch.Tensor, truth: torch.Tensor) -> float:
    """Ensemble spread over RMSE of the ensemble mean, with the (E+1)/E finite-ensemble correction
    (Fortin et al. 2014): 1 for a calibrated ensemble."""
    e = members.shape[0]
    spread = nanmean(members.var(dim=0, unbiased=True)) ** 0.5
    return spread * ((e + 1) / e) ** 0.5 / max(rmse(members.mean(dim=0), truth), 1e-12)
