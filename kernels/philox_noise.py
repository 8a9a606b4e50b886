"""Member noise on the device: Philox4x32-10 and Box-Muller inside a Triton kernel, bit for bit the
layout of `precipfast/noise.py` (Salmon et al. 2011; the layout and its scalar reference are documented there).

Used by the sampler for the initial noise x_0 = t_0 eps (Karras et al. 2022, Algorithm 2, line 1) and
for churn, x_hat = x + sqrt(t_hat^2 - t^2) S_noise eps (lines 5-6), so no noise crosses from the host.

    member_noise_reference(...)   plain torch via runtime.noise: the spec and the CPU path
    _member_noise_kernel          the Triton kernel
    member_noise(...)             launcher: checks, grid

The uint32 Philox words are exact on every device; the float64 log/cos/sin come from numpy (Triton's
interpreter), libdevice (CUDA) or SLEEF (torch CPU), whose last bits may differ: after the rounding to
float32 that shows as a 1-ulp difference in about one sample per hundred million (precipfast/noise.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from precipfast import noise as pf_noise
from precipfast.kernels._triton import BLOCK, LAUNCH, interpreting, lazy_jit, libdevice, tl, triton
from precipfast.noise import Origin


@dataclass(frozen=True)
class NoiseWindow:
    """Where a batch of member fields sits in the noise space: seed, member ids, stage, and the window's
    Origin on the global grid (`precipfast/noise.py`)."""
    seed: int
    members: tuple[int, ...]
    stage: str
    origin: Origin

    def __post_init__(self):
        pf_noise.check_ids(self.seed, self.members, self.stage, 0)
        o = self.origin
        if o.width < 1 or o.row0 < 0 or o.col0 < 0:
            raise ValueError(f"noise window needs row0, col0 >= 0 and width >= 1, got {o.row0}, {o.col0}, {o.width}")


def member_noise_reference(x: torch.Tensor, win: NoiseWindow, step: int, scale: float,
                           accumulate: bool) -> torch.Tensor:
    """x (E, 1, H, W) <- scale * eps (accumulate=False) or x + scale * eps (True), eps the members' noise
    at `step`. Returns a new tensor (x is not modified): the allocating twin of the kernel."""
    e, _, h, w = x.shape
    eps = pf_noise.normal_members(win.seed, win.members, win.stage, step, win.origin.row0, win.origin.row0 + h,
                                  win.origin.col0, win.origin.col0 + w, win.origin.width).to(x)
    return x + scale * eps if accumulate else eps * scale


def member_noise_inplace(x: torch.Tensor, win: NoiseWindow, step: int, scale: float,
                         accumulate: bool) -> torch.Tensor:
    """The same into x itself, one member's noise at a time (the CPU path: one member field of
    temporaries at most). Bit-identical to `member_noise_reference`."""
    _, _, h, w = x.shape
    for k, m in enumerate(win.members):
        eps = pf_noise.normal(win.seed, m, win.stage, step, range(win.origin.row0, win.origin.row0 + h),
                              range(win.origin.col0, win.origin.col0 + w), win.origin.width, device=x.device).to(x)
        if accumulate:
            x[k, 0].add_(eps.mul_(scale))
        else:
            x[k, 0].copy_(eps.mul_(scale))
    return x


@lazy_jit(do_not_specialize=("row0", "col0", "k0", "k1", "c3"))
def _member_noise_kernel(
        x_ptr,  # *fp32 (E, H*W) contiguous: written (scale * eps) or updated (x + scale * eps)
        member_ptr,  # *int64 (E,) member id of each row of x
        hw, w,  # pixels per member, window width
        row0, col0, width,  # window origin on the global grid of `width` columns
        k0, k1,  # Philox key words: seed & 0xFFFFFFFF, seed >> 32
        c3,  # counter word 3: (stage id << 16) | step
        scale,  # fp32 factor on eps (t_0, or sqrt(t_hat^2 - t^2) S_noise)
        ACCUMULATE: tl.constexpr,  # add to x (churn) instead of overwriting it (initial noise)
        LIBDEVICE: tl.constexpr,  # float64 log/sqrt/cos/sin from libdevice (compiled) or tl.* (interpreter)
        BLOCK: tl.constexpr):  # pixels per program
    e = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < hw
    # Global pixel index p = row * width + col, in int64 (a global 1 km grid has ~6.5e8 pixels).
    p = (row0 + offs // w).to(tl.int64) * width + (col0 + offs % w)
    n = p >> 1  # Philox block: two normals per block
    lane = p & 1
    c0 = (n & 0xFFFFFFFF).to(tl.uint32)
    c1 = (n >> 32).to(tl.uint32)
    c2 = tl.zeros([BLOCK], tl.uint32) + tl.load(member_ptr + e).to(tl.uint32)
    c3 = tl.zeros([BLOCK], tl.uint32) + c3.to(tl.uint32)
    key0 = k0.to(tl.uint32)
    key1 = k1.to(tl.uint32)
    for _ in tl.static_range(10):  # Philox4x32-10: 10 rounds, key bumped after each (unused after the last)
        hi0 = tl.umulhi(c0, 0xD2511F53)
        lo0 = c0 * 0xD2511F53
        hi1 = tl.umulhi(c2, 0xCD9E8D57)
        lo1 = c2 * 0xCD9E8D57
        c0, c1, c2, c3 = hi1 ^ c1 ^ key0, lo1, hi0 ^ c3 ^ key1, lo0
        key0 = key0 + 0x9E3779B9
        key1 = key1 + 0xBB67AE85
    # 52-bit uniforms in (0, 1): u = (2a + 1) 2^-53, exact in float64.
    a = (c0.to(tl.uint64) << 20) | (c1 >> 12).to(tl.uint64)
    b = (c2.to(tl.uint64) << 20) | (c3 >> 12).to(tl.uint64)
    u1 = (a * 2 + 1).to(tl.float64) * 1.1102230246251565e-16
    u2 = (b * 2 + 1).to(tl.float64) * 1.1102230246251565e-16
    theta = u2 * 6.283185307179586  # the float64 nearest 2 pi, as in precipfast/noise.py
    if LIBDEVICE:
        r = libdevice.sqrt(libdevice.log(u1) * -2.0)
        trig = tl.where(lane == 0, libdevice.cos(theta),
                        libdevice.sin(theta))
    else:
        r = tl.sqrt(tl.log(u1) * -2.0)
        trig = tl.where(lane == 0, tl.cos(theta), tl.sin(theta))
    eps = (r * trig).to(tl.float32)  # Box-Muller in float64, rounded once to float32
    ptrs = x_ptr + e.to(tl.int64) * hw + offs
    if ACCUMULATE:
        tl.store(ptrs, tl.load(ptrs, mask=mask) + scale * eps, mask=mask)
    else:
        tl.store(ptrs, eps * scale, mask=mask)


def member_noise(x: torch.Tensor, win: NoiseWindow, step: int, scale: float, accumulate: bool,
                 member_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Kernel launcher, in place on x (E, 1, H, W) float32 contiguous; returns x. `member_ids` (E,) int64
    on x's device may be passed to avoid copying the ids to the device at every call."""
    if x.dtype != torch.float32 or not x.is_contiguous() or x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"member_noise needs a contiguous float32 (E, 1, H, W) tensor, got {x.dtype} "
                         f"{tuple(x.shape)}{'' if x.is_contiguous() else ' (not contiguous)'}")
    e, _, h, w = x.shape
    if e != len(win.members):
        raise ValueError(f"x holds {e} members but the noise window names {len(win.members)}")
    if not 0 <= step < 2 ** 16:
        raise ValueError(f"step must be in [0, 65536), got {step}")
    if member_ids is None:
        member_ids = torch.tensor(win.members, dtype=torch.int64, device=x.device)
    if x.numel() == 0:
        return x
    grid = (triton.cdiv(h * w, BLOCK), e)
    _member_noise_kernel[grid](x, member_ids, h * w, w, win.origin.row0, win.origin.col0, win.origin.width,
                               win.seed & 0xFFFFFFFF, win.seed >> 32,
                               (pf_noise.STAGE_IDS[win.stage] << 16) | step, float(scale),
                               ACCUMULATE=accumulate, LIBDEVICE=not interpreting(), BLOCK=BLOCK, **LAUNCH)
    return x
