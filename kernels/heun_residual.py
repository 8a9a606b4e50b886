"""EDM Heun step fused with the residual finish: the element-wise work of the sampler (Karras et al.
2022, "Elucidating the Design Space of Diffusion-Based Generative Models", Algorithm 2).

Three implementations of one step interface, side by side (the Triton-tutorial layout):

    ReferenceStep  plain torch built from `precipfast.edm`: float64-capable, allocates every result
    InplaceStep    the CPU path: the reference's operations in the same order on reused buffers, so
                   bit-identical to it, with no full-size temporaries
    TritonStep     fused Triton kernels (CUDA; the Triton interpreter runs them on the CPU in tests)

A step object's methods, in the order the sampler calls them (x: (E, 1, H, W) float32 state):

    x = init(shape, t_0, win)                           line 1:  x_0 = t_0 eps
    x, t_hat = churn(x, t_i, gamma, s_noise, win, i+1)  lines 5-6: x_hat = x + sqrt(t_hat^2 - t_i^2) S_noise eps
    x_next = euler(x, D, t_hat, t_next, out)            lines 7-8: d = (x_hat - D) / t_hat,
                                                                   x_next = x_hat + (t_next - t_hat) d
    x = heun(x, D, x_next, D', t_hat, t_next)           lines 9-11: d' = (x_next - D') / t_next,
                                                                   x = x_hat + (t_next - t_hat)(d/2 + d'/2)
    y = finish(x, D, t_hat, base, transform)            line 8 to t_N = 0, + base, inverse transform, clip

`InplaceStep` and `TritonStep` overwrite their inputs (x in churn/heun/finish, the denoised buffers in
heun): always use the returned tensor. The slope d is never stored: the Heun corrector recomputes it
from x_hat and D(x_hat), which the sampler holds anyway, so the state per member is x_hat, D(x_hat), the
Euler point and D(Euler point): 4 fields (plus the conditioning/base the stage owns).

Choosing an implementation: `get_step_impl(device, name=None)`. The name comes from the argument, else
the environment variable PRECIPFAST_STEP, else the device: "triton" on CUDA when Triton imports,
"inplace" elsewhere. `PRECIPFAST_STEP=reference` forces the plain path for debugging.
"""
from __future__ import annotations

import math
import os

import torch

from precipfast import edm
from precipfast.errors import KernelUnavailableError
from precipfast.kernels._triton import BLOCK, LAUNCH, interpreting, lazy_jit, libdevice, tl, triton, unavailable_reason
from precipfast.kernels.philox_noise import NoiseWindow, member_noise, member_noise_inplace, member_noise_reference
from precipfast.transform import inverse

__all__ = ["ReferenceStep", "InplaceStep", "TritonStep", "STEP_IMPLS", "get_step_impl", "step_impl_name",
           "NoiseWindow"]


def churn_levels(t_cur: float, gamma: float, s_noise: float) -> tuple[float, float]:
    """(t_hat, coefficient of eps) of Algorithm 2 lines 5-6, as `edm.churn` computes them."""
    t_hat = t_cur + gamma * t_cur
    return t_hat, math.sqrt(t_hat ** 2 - t_cur ** 2) * s_noise


# ---------------------------------------------------------------------------------------------------
# Reference: pure torch from precipfast.edm (the spec; float64-capable)

def euler_residual_reference(x_hat: torch.Tensor, denoised: torch.Tensor, t_hat: float, t_next: float,
                             base: torch.Tensor | None = None) -> torch.Tensor:
    """Euler step (Algorithm 2, lines 7-8); when `base` is given (last step, t_next = 0) the stage's
    conditioning field is added so the result is base + residual in working space."""
    x_next = edm.euler_update(x_hat, denoised, t_hat, t_next)
    return x_next if base is None else x_next + base


def heun_residual_reference(x_hat: torch.Tensor, denoised_hat: torch.Tensor, x_next: torch.Tensor,
                            denoised_next: torch.Tensor, t_hat: float, t_next: float,
                            base: torch.Tensor | None = None) -> torch.Tensor:
    """Heun correction (Algorithm 2, lines 9-11), plus `base` when given."""
    x = edm.heun_update(x_hat, denoised_hat, x_next, denoised_next, t_hat, t_next)
    return x if base is None else x + base


def finish_reference(x_hat: torch.Tensor, denoised: torch.Tensor, t_hat: float, base: torch.Tensor | None,
                     transform=None) -> torch.Tensor:
    """Last step: Euler to t_N = 0, plus the base, then (given a TransformConfig) mm/h clipped at 0."""
    x = euler_residual_reference(x_hat, denoised, t_hat, 0.0, base)
    return x if transform is None else inverse(x, transform)


class ReferenceStep:
    """The step arithmetic as plain torch, allocating each result like EDM's `edm_sampler`."""
    name = "reference"

    def init(self, shape, t0: float, win: NoiseWindow, *, dtype=torch.float32, device=None) -> torch.Tensor:
        return member_noise_reference(torch.empty(shape, dtype=dtype, device=device), win, 0, t0, False)

    def churn(self, x, t_cur, gamma, s_noise, win, step):
        if gamma == 0:
            return x, t_cur
        eps = member_noise_reference(torch.zeros_like(x), win, step, 1.0, True)
        return edm.churn(x, t_cur, gamma, s_noise, eps)

    def euler(self, x_hat, denoised, t_hat, t_next, out=None):
        return euler_residual_reference(x_hat, denoised, t_hat, t_next)

    def heun(self, x_hat, denoised_hat, x_next, denoised_next, t_hat, t_next):
        return heun_residual_reference(x_hat, denoised_hat, x_next, denoised_next, t_hat, t_next)

    def finish(self, x_hat, denoised, t_hat, base=None, transform=None):
        return finish_reference(x_hat, denoised, t_hat, base, transform)


# ---------------------------------------------------------------------------------------------------
# In place: the CPU path. Each line repeats one reference operation (same operands, same order, same
# rounding), writing into a buffer that is dead afterwards: (a - b) = -(b - a) and a + b = b + a
# exactly in IEEE arithmetic, so the results equal the reference's bit for bit.

class InplaceStep(ReferenceStep):
    """The reference's arithmetic on reused buffers: no full-size temporaries."""
    name = "inplace"

    def init(self, shape, t0, win, *, dtype=torch.float32, device=None):
        return member_noise_inplace(torch.empty(shape, dtype=dtype, device=device), win, 0, t0, False)

    def churn(self, x, t_cur, gamma, s_noise, win, step):
        if gamma == 0:
            return x, t_cur
        t_hat, coef = churn_levels(t_cur, gamma, s_noise)
        return member_noise_inplace(x, win, step, coef, True), t_hat

    def euler(self, x_hat, denoised, t_hat, t_next, out=None):
        out = torch.sub(x_hat, denoised, out=out)  # x_hat - D
        return out.div_(t_hat).mul_(t_next - t_hat).add_(x_hat)  # d; (t_next - t_hat) d; x_hat + ...

    def heun(self, x_hat, denoised_hat, x_next, denoised_next, t_hat, t_next):
        d_prime = _fp32_buffer(denoised_next, x_hat)
        torch.sub(x_next, denoised_next, out=d_prime).div_(t_next).mul_(0.5)  # d' / 2
        d_cur = _fp32_buffer(denoised_hat, x_hat)
        torch.sub(x_hat, denoised_hat, out=d_cur).div_(t_hat).mul_(0.5)  # d / 2
        return x_hat.add_(d_cur.add_(d_prime).mul_(t_next - t_hat))

    def finish(self, x_hat, denoised, t_hat, base=None, transform=None):
        x = self.euler(x_hat, denoised, t_hat, 0.0, out=_fp32_buffer(denoised, x_hat))
        if base is not None:
            x.add_(base)
        if transform is not None:  # transform.inverse, in place
            x.mul_(transform.norm).expm1_().mul_(transform.scale_mm_h).clamp_min_(0)
        return x


def _fp32_buffer(buf: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`buf` itself when it can hold the state's dtype (a dead denoiser output), else a new buffer."""
    return buf if buf.dtype == like.dtype and buf.shape == like.shape else torch.empty_like(like)


# ---------------------------------------------------------------------------------------------------
# Triton kernels: one pass over memory each. Pointers are (E, H*W) contiguous; program (i, e) covers
# pixels [i BLOCK, (i + 1) BLOCK) of member e, so H*W needs no relation to BLOCK.

@lazy_jit()
def _euler_kernel(
        x_hat_ptr,  # *fp32 (E, HW) x_hat, read
        den_ptr,  # *fp32|bf16|fp16 (E, HW) D(x_hat; t_hat), read (promoted to fp32)
        base_ptr,  # *fp32 (E or 1, HW) the stage's base field, read when HAS_BASE
        out_ptr,  # *fp32 (E, HW) written: x_next (may alias x_hat or den when fp32)
        hw,  # pixels per member
        base_stride,  # elements between members of base (0: one base for every member)
        t_hat, h,  # fp32 t_hat, and h = t_next - t_hat
        norm, scale_mm_h,  # inverse transform, when TO_MM_H: rate = scale (exp(norm y) - 1)
        HAS_BASE: tl.constexpr,  # add the base (last step: base + residual)
        TO_MM_H: tl.constexpr,  # inverse transform and clip at 0 mm/h
        LIBDEVICE: tl.constexpr,  # expm1 from libdevice (compiled) or via float64 exp (interpreter)
        BLOCK: tl.constexpr):  # pixels per program
    e = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < hw
    x_hat = tl.load(x_hat_ptr + e * hw + offs, mask=mask)
    den = tl.load(den_ptr + e * hw + offs, mask=mask).to(tl.float32)
    d_cur = tl.div_rn(x_hat - den, t_hat)  # line 7, IEEE division as torch's
    x = x_hat + h * d_cur  # line 8
    if HAS_BASE:
        x = x + tl.load(base_ptr + e * base_stride + offs, mask=mask)
    if TO_MM_H:
        y = x * norm
        if LIBDEVICE:
            rate = libdevice.expm1(y)
        else:  # float64 exp - 1 rounded once: within 1 ulp of expm1 in float32
            rate = (tl.exp(y.to(tl.float64)) - 1.0).to(tl.float32)
        rate = rate * scale_mm_h
        x = tl.where(rate < 0.0, 0.0, rate)  # clip at 0 mm/h; NaN stays NaN so divergence is caught
    tl.store(out_ptr + e * hw + offs, x, mask=mask)


@lazy_jit()
def _heun_kernel(
        x_hat_ptr,  # *fp32 (E, HW) x_hat, read, then overwritten with the corrected x at t_next
        den_hat_ptr,  # *fp32|bf16|fp16 (E, HW) D(x_hat; t_hat), read
        x_next_ptr,  # *fp32 (E, HW) Euler point, read
        den_next_ptr,  # *fp32|bf16|fp16 (E, HW) D(x_next; t_next), read
        hw,  # pixels per member
        t_hat, t_next, h,  # fp32 noise levels and h = t_next - t_hat
        BLOCK: tl.constexpr):  # pixels per program
    e = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < hw
    x_hat = tl.load(x_hat_ptr + e * hw + offs, mask=mask)
    x_next = tl.load(x_next_ptr + e * hw + offs, mask=mask)
    d_cur = tl.div_rn(x_hat - tl.load(den_hat_ptr + e * hw + offs, mask=mask).to(tl.float32), t_hat)
    d_prime = tl.div_rn(x_next - tl.load(den_next_ptr + e * hw + offs, mask=mask).to(tl.float32), t_next)
    x = x_hat + h * (0.5 * d_cur + 0.5 * d_prime)  # line 11
    tl.store(x_hat_ptr + e * hw + offs, x, mask=mask)


def _check_state(name: str, t: torch.Tensor, like: torch.Tensor | None = None, dtypes=(torch.float32,)):
    if t.dtype not in dtypes or not t.is_contiguous() or t.ndim != 4 or t.shape[1] != 1:
        raise ValueError(f"{name} must be a contiguous (E, 1, H, W) tensor of {[str(d) for d in dtypes]}, got "
                         f"{t.dtype} {tuple(t.shape)}{'' if t.is_contiguous() else ' (not contiguous)'}")
    if like is not None and (t.shape != like.shape or t.device != like.device):
        raise ValueError(f"{name} is {tuple(t.shape)} on {t.device}; expected {tuple(like.shape)} on {like.device}")


_DENOISED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def euler_residual(x_hat, denoised, t_hat: float, t_next: float, base=None, transform=None, out=None):
    """Launcher of `_euler_kernel`: x_next (E, 1, H, W) float32 into `out` (new when None), from x_hat
    float32 and D float32/bf16/fp16. With base (E or 1, 1, H, W): + base; with transform: mm/h >= 0."""
    _check_state("x_hat", x_hat)
    _check_state("denoised", denoised, x_hat, _DENOISED_DTYPES)
    out = torch.empty_like(x_hat) if out is None else out
    _check_state("out", out, x_hat)
    if base is not None:
        _check_state("base", base)
        if base.shape[0] not in (1, x_hat.shape[0]) or base.shape[2:] != x_hat.shape[2:] or base.device != x_hat.device:
            raise ValueError(f"base must be (1 or {x_hat.shape[0]}, 1, {x_hat.shape[2]}, {x_hat.shape[3]}) on "
                             f"{x_hat.device}, got {tuple(base.shape)} on {base.device}")
    e, _, hh, ww = x_hat.shape
    if x_hat.numel():
        norm, scale = (float(transform.norm), float(transform.scale_mm_h)) if transform is not None else (1.0, 1.0)
        _euler_kernel[(triton.cdiv(hh * ww, BLOCK), e)](
            x_hat, denoised, x_hat if base is None else base, out, hh * ww,
            0 if base is None or base.shape[0] == 1 else hh * ww, float(t_hat), float(t_next) - float(t_hat),
            norm, scale, HAS_BASE=base is not None, TO_MM_H=transform is not None, LIBDEVICE=not interpreting(),
            BLOCK=BLOCK, **LAUNCH)
    return out


def heun_residual(x_hat, denoised_hat, x_next, denoised_next, t_hat: float, t_next: float):
    """Launcher of `_heun_kernel`: the corrected x at t_next, written into x_hat (returned)."""
    _check_state("x_hat", x_hat)
    _check_state("x_next", x_next, x_hat)
    _check_state("denoised_hat", denoised_hat, x_hat, _DENOISED_DTYPES)
    _check_state("denoised_next", denoised_next, x_hat, _DENOISED_DTYPES)
    if not t_next > 0:
        raise ValueError(f"the Heun correction needs t_next > 0 (the last step is Euler), got {t_next}")
    e, _, hh, ww = x_hat.shape
    if x_hat.numel():
        _heun_kernel[(triton.cdiv(hh * ww, BLOCK), e)](
            x_hat, denoised_hat, x_next, denoised_next, hh * ww, float(t_hat), float(t_next),
            float(t_next) - float(t_hat), BLOCK=BLOCK, **LAUNCH)
    return x_hat


class TritonStep(ReferenceStep):
    """Fused Triton kernels, noise generated on the device: no host round trips inside the step loop."""
    name = "triton"

    def __init__(self):
        self._ids: dict = {}  # (members, device) -> member ids on the device, copied once per sample

    def _member_ids(self, win: NoiseWindow, device) -> torch.Tensor:
        key = (win.members, str(device))
        if key not in self._ids:
            ids = torch.tensor(win.members, dtype=torch.int64)
            if device.type == "cuda":  # from pinned memory, asynchronously: no host wait even here
                ids = ids.pin_memory().to(device, non_blocking=True)
            self._ids = {key: ids}
        return self._ids[key]

    def init(self, shape, t0, win, *, dtype=torch.float32, device=None):
        x = torch.empty(shape, dtype=dtype, device=device)
        return member_noise(x, win, 0, t0, False, self._member_ids(win, x.device))

    def churn(self, x, t_cur, gamma, s_noise, win, step):
        if gamma == 0:
            return x, t_cur
        t_hat, coef = churn_levels(t_cur, gamma, s_noise)
        return member_noise(x, win, step, coef, True, self._member_ids(win, x.device)), t_hat

    def euler(self, x_hat, denoised, t_hat, t_next, out=None):
        return euler_residual(x_hat, denoised, t_hat, t_next, out=out)

    def heun(self, x_hat, denoised_hat, x_next, denoised_next, t_hat, t_next):
        return heun_residual(x_hat, denoised_hat, x_next, denoised_next, t_hat, t_next)

    def finish(self, x_hat, denoised, t_hat, base=None, transform=None):
        return euler_residual(x_hat, denoised, t_hat, 0.0, base, transform, out=x_hat)


# ---------------------------------------------------------------------------------------------------
# Registry (pysteps' get_method): name -> implementation.

STEP_IMPLS = {"reference": ReferenceStep, "inplace": InplaceStep, "triton": TritonStep}
STEP_ENV = "PRECIPFAST_STEP"  # environment variable naming the implementation, e.g. "reference"


def step_impl_name(device="cpu", name: str | None = None) -> str:
    """The name `get_step_impl` resolves to: `name`, else $PRECIPFAST_STEP, else "triton" on CUDA when
    Triton imports and "inplace" elsewhere. Unknown names, and "triton" where it cannot run, raise (the
    latter KernelUnavailableError, saying why and which path would run instead)."""
    device = torch.device(device)
    env = os.environ.get(STEP_ENV) or None
    default = "triton" if device.type == "cuda" and unavailable_reason(device) is None else "inplace"
    chosen = name or env or default
    if chosen not in STEP_IMPLS:
        given = "name" if name else f"${STEP_ENV}"
        raise ValueError(f"unknown step implementation {chosen!r} ({given}); available: {sorted(STEP_IMPLS)}")
    if chosen == "triton" and (why := unavailable_reason(device)):
        raise KernelUnavailableError(f"step implementation 'triton' cannot run: {why}; the default on this "
                                     f"device is {default!r} (unset {STEP_ENV} and pass no name to use it)")
    return chosen


def get_step_impl(device="cpu", name: str | None = None):
    """A step object for tensors on `device`, chosen by `step_impl_name(device, name)`."""
    return STEP_IMPLS[step_impl_name(device, name)]()
