"""The correction's amplitude: it moves the input's rain, it does not guess the satellite's bias (issue 33).

Nobody knows from one field which way the satellite errs: a light field seen 1.5x too high looks like a
heavier one seen 0.65x too low. On the held-out cases even an oracle that knows the truth's exact rain field
and only has to pick its amplitude as c times the input's cannot be better than the input under a satellite
35 % low (c >= 0.9) and beat it by 20 % under the fitted one (c <= 0.85) at once (experiments/amplitude.py,
docs/experiments.md "The amplitude dilemma"). A correction that learned the fit's bias (0.3.x: it keeps 0.7x
the input's rain) makes every satellite that errs the other way worse than no correction at all.

So a correction stage with an "amplitude" entry in its manifest (config.AmplitudeConfig) leaves the bias
alone: each corrected member is rescaled so that, in every Gaussian window of `window_px` coarse pixels
(std), it holds `keep` times the input's rain. The network may move rain, sharpen or fill it (displacement,
blur, noise, missed light rain: what the field reveals), not add or remove it at scales beyond the window.
This is the multiplicative constraint layer of Harder et al. (2023, "Hard-constrained deep learning for
climate downscaling", JMLR 24, eq. 3), with a smooth window instead of the coarse pixel. The gain is bounded
to [1 / max_gain, max_gain]; where a member has no rain in a window it stays dry, and raising rain never
lifts a pixel above both its own value and the input's largest rate within the window's radius.

The rule is element-wise per member (each member's windows against the input's), so a member depends on its
own noise only: the same on any batch, tiling or backend.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from precipfast.config import AmplitudeConfig


def window_mean(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """(B, 1, H, W) -> the Gaussian-weighted mean around each pixel (std sigma_px), over the pixels inside the
    field only (the weights are renormalised at the border), computed separably in float64."""
    radius = max(1, math.ceil(3 * sigma_px))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64, device=x.device)
    k = torch.exp(-0.5 * (t / sigma_px) ** 2)
    k = k / k.sum()

    def blur(v):
        v = F.conv2d(F.pad(v, (radius, radius, 0, 0)), k.view(1, 1, 1, -1))
        return F.conv2d(F.pad(v, (0, 0, radius, radius)), k.view(1, 1, -1, 1))

    x64 = x.to(torch.float64)
    return blur(x64) / blur(torch.ones_like(x64[:1]))


def keep_rain(members: torch.Tensor, reference: torch.Tensor, amp: AmplitudeConfig) -> torch.Tensor:
    """members (E, 1, H, W) and the input (1, 1, H, W), both mm/h >= 0 (missing pixels as 0) -> members scaled
    so each holds amp.keep times the input's rain in every window (module docstring)."""
    want = amp.keep * window_mean(reference, amp.window_px)
    have = window_mean(members, amp.window_px)
    gain = torch.where(have > 0, want / have.clamp_min(1e-30), torch.ones_like(have))
    gain = gain.clamp(1.0 / amp.max_gain, amp.max_gain)
    scaled = members.to(torch.float64) * gain
    # raising rain never lifts a pixel above the input's largest rate within the window's radius (nor its own
    # value): without this the gain multiplied the generator's peaks (corrected 10 km peaks of 142 mm/h from a
    # 45.5 mm/h IMERG box, 1 km members of 278 mm/h)
    r = max(1, round(amp.window_px))
    top = F.max_pool2d(F.pad(reference.to(torch.float64), (r,) * 4, mode="replicate"), 2 * r + 1, stride=1)
    raised = torch.minimum(scaled, torch.maximum(members.to(torch.float64), top))
    return torch.where(gain > 1, raised, scaled).to(members.dtype)
