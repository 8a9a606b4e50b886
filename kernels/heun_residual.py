"""EDM Heun step with the residual addition: the element-wise work of the sampler.

Reference (pure torch, float64-capable, built from `precipfast.edm`): this is the CPU path and the
spec the fused Triton kernel (its own issue) must match. The runtime reaches these functions only
through `STEP_IMPLS`, so a fused CUDA implementation plugs in by name without touching the sampler.
"""
from __future__ import annotations

import torch

from precipfast import edm


def euler_residual_reference(x_hat: torch.Tensor, denoised: torch.Tensor, t_hat: float, t_next: float,
                             base: torch.Tensor | None = None) -> torch.Tensor:
    """Euler step (Algorithm 2, line 8); when `base` is given (last step, t_next = 0) the stage's
    conditioning field is added so the result is base + residual in working space."""
    x_next = edm.euler_update(x_hat, denoised, t_hat, t_next)
    return x_next if base is None else x_next + base


def heun_residual_reference(x_hat: torch.Tensor, denoised_hat: torch.Tensor, x_next: torch.Tensor,
                            denoised_next: torch.Tensor, t_hat: float, t_next: float,
                            base: torch.Tensor | None = None) -> torch.Tensor:
    """Heun correction (Algorithm 2, lines 9-11), plus `base` when given."""
    x = edm.heun_update(x_hat, denoised_hat, x_next, denoised_next, t_hat, t_next)
    return x if base is None else x + base


class ReferenceStep:
    """The step arithmetic as plain torch: what runs on CPU and the baseline for fused kernels."""
    name = "reference"
    euler = staticmethod(euler_residual_reference)
    heun = staticmethod(heun_residual_reference)


# name -> implementation; the Triton issue adds "triton" here (selected on CUDA).
STEP_IMPLS = {"reference": ReferenceStep}


def get_step_impl(name: str = "reference"):
    try:
        return STEP_IMPLS[name]
    except KeyError:
        raise ValueError(f"unknown step implementation {name!r}; available: {sorted(STEP_IMPLS)}") from None
