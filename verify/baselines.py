"""The simple baselines the ensemble is scored against: upsamplings of a coarse field to the 1 km grid.

- bilinear(coarse, factor): bilinear of the model's input (grid.upsample, half-pixel centres), clipped at
  0 mm/h as a user would interpolate;
- nearest(coarse, factor): each coarse pixel repeated over its block;
- bilinear_meanpool(truth, factor): bilinear of the truth mean-pooled to the coarse grid, the strongest
  simple baseline (it knows the true areal mean, which no satellite does).

`precipfast validate` and the held-out experiments build them here; their scores come from
verify/scores.py (a point forecast's CRPS is its MAE). `precipfast evaluate` regrids between files' own
latitude/longitude grids instead (verify/truth.py regrid), which on an aligned grid is the same bilinear.
"""
from __future__ import annotations

import numpy as np
import torch

from precipfast.grid import coarsen, upsample


def _upsample(coarse, factor: int, mode: str) -> torch.Tensor:
    """(..., h, w) numpy or torch -> (..., h factor, w factor) torch."""
    c = torch.from_numpy(np.ascontiguousarray(coarse)) if isinstance(coarse, np.ndarray) else coarse
    up = upsample(c.reshape(-1, 1, *c.shape[-2:]), factor, mode)
    return up.reshape(*c.shape[:-2], *up.shape[-2:])


def bilinear(coarse, factor: int) -> torch.Tensor:
    """Bilinear upsampling of coarse rain (..., h, w) mm/h by factor, clipped at 0 mm/h."""
    return _upsample(coarse, factor, "bilinear").clamp_min(0)


def nearest(coarse, factor: int) -> torch.Tensor:
    """Nearest upsampling of coarse rain (..., h, w) by factor: each pixel repeated over its block."""
    return _upsample(coarse, factor, "nearest")


def bilinear_meanpool(truth, factor: int) -> torch.Tensor:
    """Bilinear of the 1 km truth (..., H, W) mean-pooled by factor, back on the 1 km grid."""
    return bilinear(coarsen(truth, factor, "mean"), factor)
