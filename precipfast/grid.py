"""Coarsening and upsampling between the 1 km and 10 km grids.

Coarsening by max-value pooling keeps the intensities a satellite pixel "sees" (PrecipDiff, Sec. 4.1);
mean pooling conserves the areal mean. Upsampling is bilinear with half-pixel centres
(align_corners=False), so an LR pixel's centre sits at the centre of its block of HR pixels.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from precipfast.config import POOLINGS


def coarsen(hr, factor: int, how: str = "max"):
    """Pool the last two axes by `factor` (they must divide). Accepts numpy or torch, any leading dims.

    NaN handling: a block with any NaN is NaN for "mean" and ignores NaNs for "max" unless all are NaN."""
    if how not in POOLINGS:
        raise ValueError(f"how must be one of {POOLINGS}, got {how!r}")
    if int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    is_np = isinstance(hr, np.ndarray)
    t = torch.from_numpy(np.array(hr) if not hr.flags.writeable else np.ascontiguousarray(hr)) if is_np else hr
    h, w = t.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"field of {h}x{w} is not divisible by factor {factor}")
    blocks = t.reshape(*t.shape[:-2], h // factor, factor, w // factor, factor)
    if how == "mean":
        out = blocks.mean(dim=(-3, -1))
    else:
        nan = torch.isnan(blocks)
        out = blocks.masked_fill(nan, -torch.inf).amax(dim=(-3, -1))
        out = out.masked_fill(nan.all(dim=-1).all(dim=-2), torch.nan)
    return out.numpy() if is_np else out


def upsample(lr: torch.Tensor, factor: int, mode: str = "bilinear") -> torch.Tensor:
    """(B, C, h, w) -> (B, C, h*factor, w*factor); bilinear or nearest."""
    if mode == "nearest":
        return lr.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    if mode != "bilinear":
        raise ValueError(f"upsample mode must be 'bilinear' or 'nearest', got {mode!r}")
    return F.interpolate(lr, scale_factor=factor, mode="bilinear", align_corners=False)
