"""Where no rain can be, enforced on the members (issue 33, "dry in, dry out").

- Under a dry coarse pixel every 1 km pixel is dry: the training targets are pooled (mean or max) from the
  1 km field, and a pool of non-negative rates is 0 only when every rate in it is 0. So the downscaling
  stage's member is 0 wherever its coarse field (the corrected member, or the input) is 0 mm/h.
- Far from the input's rain the corrected field is dry: the satellite-error model the correction was trained
  on moves rain by at most its reach (3 standard deviations of the displacement plus 3 of the blur, the
  bundle stage's `rain_reach_px`, train/degrade.py margin_px), so a coarse pixel with no input rain within
  that reach had no rain in any training truth either. Bundles without the key keep the correction as is.

And the converse, wet in, wet out:

- Inside widespread rain the corrected field has no dry holes: where the input rains at least INSIDE_MM_H on
  every coarse pixel of the (2 R + 1)^2 square around a pixel (R: the bundle stage's `rain_inside_px`), a
  corrected member below config.WET_MM_H there is filled from the member itself: the mean (working space)
  of its 3 x 3 neighbours that are not holes, or the input's rate where all eight are (filling with the
  input's rate instead put the satellite's peak into holes at cell cores: 1 km p99.99 up to 3.6x the
  truth's maximum on the held-out cases, against 2.7x). The satellite-error model makes a
  dry truth pixel under satellite rain only by moving rain over it (a false alarm beside a displaced cell),
  so the input has dry or light pixels within the displacement's reach of every such pixel: in the
  correction's training pairs the truth is dry under 3.6 % of the pixels whose 3 x 3 input square rains
  >= 1 mm/h, 1.2 % with a 5 x 5 square and 0.6 % (training days) / 0.2 % (validation day) with a 7 x 7 one
  (R = 3, the shipped value). The CRPS generator draws such holes anywhere, also inside winter stratiform
  rain that has none (docs/experiments.md, failure modes).

All are element-wise masks of fields the sampler already holds, the same on every tiling and backend.
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


INSIDE_MM_H = 1.0   # the input's rate over the whole square that makes a pixel "inside widespread rain"


def inside_rain(x: torch.Tensor, radius_px: int, wet: float) -> torch.Tensor:
    """(1 or B, 1, H, W) bool: True where every pixel of x within radius_px (a (2 radius + 1)^2 square) is at
    least `wet` (working space); beyond the field its edge is repeated (as in the measurement above: a crop
    that ends inside rain is inside rain at its edge)."""
    if radius_px == 0:
        return x >= wet
    low = -F.max_pool2d(F.pad(-x.to(torch.float32), (radius_px,) * 4, mode="replicate"), 2 * radius_px + 1,
                        stride=1)
    return low >= wet


def fill_holes(x: torch.Tensor, holes: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """x (E, 1, H, W) working space with each `holes` pixel set to the mean of its 3 x 3 neighbours that are
    not holes (edges repeated), or to `fallback` (broadcast to x) where every neighbour is a hole."""
    if not holes.any():
        return x
    good = (~holes).to(x.dtype)
    pad = lambda v: F.pad(v, (1, 1, 1, 1), mode="replicate")  # noqa: E731
    total = F.avg_pool2d(pad(x * good), 3, stride=1)
    count = F.avg_pool2d(pad(good), 3, stride=1)
    filled = torch.where(count > 0, total / count.clamp_min(1e-12), fallback.expand_as(x))
    return torch.where(holes, filled, x)
