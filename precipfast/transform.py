"""Precipitation transform between mm/h and the model's working space (recorded in every manifest).

y = log1p(rate / scale_mm_h) / norm. Rain is heavy-tailed and mostly zero; the log compresses
convective cores (100+ mm/h) to O(1) values while keeping 0 mm/h at 0 (PrecipDiff, Sec. 3; the
same log1p choice as arXiv 2504.00307). The inverse clips at 0 mm/h: rain is never negative.
"""
from __future__ import annotations

import torch

from precipfast.config import TransformConfig


def forward(rate_mm_h: torch.Tensor, cfg: TransformConfig) -> torch.Tensor:
    """mm/h -> working space. Negative rates are treated as 0 (they are not physical)."""
    return torch.log1p(rate_mm_h.clamp_min(0) / cfg.scale_mm_h) / cfg.norm


def inverse(y: torch.Tensor, cfg: TransformConfig) -> torch.Tensor:
    """Working space -> mm/h, clipped at 0."""
    return (torch.expm1(y * cfg.norm) * cfg.scale_mm_h).clamp_min(0)
