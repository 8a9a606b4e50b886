"""The physical guard: a member rate far above anything the input's neighbourhood and the training data
allow is a failure to report, like inf/NaN, never a value to write.

Rule (docs/sampling.md, "The physical guard"): a 1 km member pixel fails when its rate r (mm/h) exceeds
    min(ABS_MAX_MM_H, (1 + M) * R - 1)    ... and r > FLOOR_MM_H
where M is the largest input rate in the 3 x 3 (5 x 5 when the correction stage ran) block of coarse
pixels around the pixel's own, and R = exp(sum of the stages' `denoised_max`), the largest ratio
(1 + fine rate) / (1 + coarse rate) the stages were trained to produce, margin included (EDMConfig).
Justification: bilinear interpolation never leaves the 3 x 3 neighbourhood's range, and each stage's
residual is bounded by the largest residual of its training data, so a healthy model cannot exceed the
bound; a model that does is broken, tampered with or far outside its training data. ABS_MAX_MM_H caps
everything at 500 mm/h: above the world's 30-60 minute rainfall records (about 400-600 mm/h as mean
rates) and 1.8x the largest hourly rate in the training data (277 mm/h). FLOOR_MM_H keeps drizzle over a
dry neighbourhood (M = 0) from tripping the relative rule.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from precipfast.errors import SamplingError

ABS_MAX_MM_H = 500.0
FLOOR_MM_H = 20.0
DEFAULT_LOG_RATIO = 4.0   # per stage, for bundles that record no denoised_max (exp(4) = 55x)


def ratio_bound(denoised_max: list[float]) -> float:
    """R of the rule: exp of the stages' summed working-space residual bounds (log1p transform)."""
    return math.exp(sum(d if math.isfinite(d) else DEFAULT_LOG_RATIO for d in denoised_max))


def bound_mm_h(lr_mm_h: np.ndarray, ratio: float, reach: int = 1) -> torch.Tensor:
    """Per coarse pixel, the largest 1 km rate the rule allows (h, w): missing input counts as dry."""
    lr = torch.from_numpy(np.nan_to_num(np.asarray(lr_mm_h, dtype=np.float32), nan=0.0))
    k = 2 * reach + 1
    m = F.max_pool2d(lr[None, None], k, stride=1, padding=reach)[0, 0]
    return ((1 + m) * ratio - 1).clamp(min=FLOOR_MM_H, max=ABS_MAX_MM_H)


def check_members(precip: np.ndarray, lr_mm_h: np.ndarray, factor: int, ratio: float, *, reach: int = 1,
                  what: str = "ensemble") -> None:
    """Raise SamplingError when a member pixel of precip (E, H*f, W*f) breaks the rule; NaN is ignored."""
    e, hh, ww = precip.shape
    h, w = hh // factor, ww // factor
    bound = bound_mm_h(lr_mm_h, ratio, reach)
    p = torch.from_numpy(precip).view(e, h, factor, w, factor)
    # 0.1 % + 0.01 mm/h of float32 slack: a stage clamped exactly at its bound lands on the bound
    # only up to the round-off of expm1 and the tile blending.
    over = p > bound.view(1, h, 1, w, 1) * (1 + 1e-3) + 0.01
    if not bool(over.any()):
        return
    n = int(over.sum())
    k, i, a, j, b = (int(v) for v in torch.nonzero(over)[int(torch.argmax(p[over]))])
    lim = float(bound[i, j])
    raise SamplingError(
        f"the {what} broke the physical guard: {n} member pixel(s) above the bound, worst {float(p[k, i, a, j, b]):.1f} "
        f"mm/h (member {k}, pixel {i * factor + a},{j * factor + b}) where the input's neighbourhood allows at most "
        f"{lim:.1f} mm/h (docs/sampling.md, 'The physical guard'); expected a model inside its training range: "
        "check the bundle and the input's units")
