"""Where no rain can be, enforced on the members (issue 33, "dry in, dry out").

- Under a dry coarse pixel every 1 km pixel is dry: the training targets are pooled (mean or max) from the
  1 km field, and a pool of non-negative rates is 0 only when every rate in it is 0. So the downscaling
  stage's member is 0 wherever its coarse field (the corrected member, or the input) is 0 mm/h.
- Far from the input's rain the corrected field is dry: the satellite-error model the correction was trained
  on moves rain by at most its reach (3 standard deviations of the displacement plus 3 of the blur, the
  bundle stage's `rain_reach_px`, train/degrade.py margin_px), so a coarse pixel with no input rain within
  that reach had no rain in any training truth either. Bundles without the key keep the correction as is.

Both are element-wise masks of fields the sampler already holds, the same on every tiling and backend.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def within_reach(x: torch.Tensor, reach_px: int) -> torch.Tensor:
    """(1 or B, 1, H, W) bool: True where a wet pixel of x (working space, > 0) lies within reach_px pixels
    (a (2 reach + 1)^2 square; pixels beyond the field count as dry)."""
    wet = (x > 0).to(torch.float32)
    return F.max_pool2d(wet, 2 * reach_px + 1, stride=1, padding=reach_px) > 0


def dry_under(dry_coarse: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, 1, H*factor, W*factor) bool: True on the 1 km pixels under a dry coarse pixel (dry_coarse: the
    coarse field <= 0 in working space, i.e. 0 mm/h)."""
    return dry_coarse.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
