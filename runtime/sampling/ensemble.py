"""Batched ensemble sampler: every member and every tile advance together through the EDM steps
(Karras et al. 2022, Algorithm 2), with tiles blended at each denoiser evaluation (MultiDiffusion,
Bar-Tal et al. 2023) so large domains have no seams.

Noise comes from `runtime.noise` (a pure function of seed, member, stage, step and global pixel) and
the element-wise step from the registry `kernels.heun_residual.get_step_impl` (Triton on CUDA, in
place on the CPU, the plain reference when PRECIPFAST_STEP=reference), so a member's field does not
depend on the batch size, the tiling, the backend or the step implementation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from precipfast.config import DEFAULT_OVERLAP, DEFAULT_TILE, SamplerConfig
from precipfast.edm import churn_gamma, clip_start, karras_sigmas
from precipfast.kernels.heun_residual import NoiseWindow, get_step_impl
from precipfast.noise import Origin
from precipfast.runtime.sampling.tiling import TileBlender, balanced_tile, crop, plan_tiles

Backend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Tiling:
    """How a stage's domain is cut: tiles of `tile` pixels overlapping by `overlap`, at most
    `max_batch` (member, tile) images per backend call."""
    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    max_batch: int = 8

    def __post_init__(self):
        if self.tile < 8 or not 0 <= self.overlap < self.tile:
            raise ValueError(f"tiling needs tile >= 8 and 0 <= overlap < tile, got {self.tile}, {self.overlap}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")


def denoise_domain(backend: Backend, x: torch.Tensor, sigma: float, cond: torch.Tensor, tiling: Tiling,
                   tiles: list, overlap=None, on_images: Callable[[int], None] | None = None) -> torch.Tensor:
    """D(x; sigma) over the whole domain: (tile, member) crops packed into micro-batches of at most
    `tiling.max_batch`, each tile blended in once all its members are denoised. `on_images(n)` is
    called after each backend call with the number of (member, tile) images it denoised.

    x (E, 1, H, W); cond (E or 1, Cc, H, W). Returns (E, 1, H, W)."""
    e = x.shape[0]
    single = len(tiles) == 1
    out = torch.empty_like(x) if single else None
    blender = None if single else TileBlender(tuple(x.shape), tiling.overlap if overlap is None else overlap, dtype=x.dtype, device=x.device)
    pending: dict[int, list] = {}  # tile index -> [denoised (E, 1, h, w), members filled]
    jobs = [(ti, m) for ti in range(len(tiles)) for m in range(e)]
    for k in range(0, len(jobs), tiling.max_batch):
        chunk = jobs[k:k + tiling.max_batch]
        # Tiles at the domain edge can be smaller: one backend call per tile shape in the chunk.
        for shape in dict.fromkeys(tiles[ti].shape for ti, _ in chunk):
            part = [(ti, m) for ti, m in chunk if tiles[ti].shape == shape]
            xb = torch.stack([crop(x[m], tiles[ti]) for ti, m in part])
            cb = torch.stack([crop(cond[m if cond.shape[0] > 1 else 0], tiles[ti]) for ti, m in part])
            sig = torch.full((len(part),), sigma, dtype=x.dtype, device=x.device)
            db = backend(xb, sig, cb)
            if on_images:
                on_images(len(part))
            for i, ti, m, n in member_runs(part):  # one copy per run, not per image (fewer launches)
                if single:
                    out[m:m + n] = db[i:i + n]
                    continue
                slot = pending.setdefault(ti, [torch.empty((e, *db.shape[1:]), dtype=x.dtype, device=x.device), 0])
                slot[0][m:m + n] = db[i:i + n]
                slot[1] += n
                if slot[1] == e:
                    blender.add(tiles[ti], slot[0])
                    del pending[ti]
    return out if single else blender.result()


def member_runs(part: list[tuple[int, int]]) -> list[list[int]]:
    """[first row, tile, first member, count] of each run of consecutive members of one tile in `part`,
    the (tile, member) list of one backend call: rows i..i+n-1 of its output are members m..m+n-1."""
    runs: list[list[int]] = []
    for i, (ti, m) in enumerate(part):
        if runs and runs[-1][1] == ti and runs[-1][2] + runs[-1][3] == m:
            runs[-1][3] += 1
        else:
            runs.append([i, ti, m, 1])
    return runs


def sample_ensemble(backend: Backend, cond: torch.Tensor, members: Sequence[int], stage: str, seed: int,
                    cfg: SamplerConfig, tiling: Tiling, base: torch.Tensor | None = None,
                    origin: Origin | None = None, step_impl=None,
                    on_images: Callable[[int], None] | None = None, transform=None) -> torch.Tensor:
    """Sample the residual for `members` at once (Karras et al. 2022, Algorithm 2); returns base + residual
    (or the residual alone), in mm/h clipped at 0 when `transform` (a TransformConfig) is given.

    cond (E or 1, Cc, H, W) working-space conditioning; base (E or 1, 1, H, W) added at the end;
    origin places the domain on the global grid that keys the noise (default: its own corner and width);
    step_impl: a step object of `kernels.heun_residual` (default: `get_step_impl(cond.device)`);
    on_images(n) reports progress in (member, tile) images denoised (see `images`)."""
    h, w = cond.shape[-2], cond.shape[-1]
    tiles, overlap = domain_tiles(h, w, tiling)
    ts = [float(t) for t in karras_sigmas(cfg.num_steps, cfg.sigma_min, cfg.sigma_max, cfg.rho)]
    step = step_impl if step_impl is not None else get_step_impl(cond.device)
    win = NoiseWindow(seed, tuple(members), stage, (origin or Origin()).with_width(w))

    def denoise(x, t):
        return denoise_domain(backend, x, t, cond, tiling, tiles, overlap, on_images)

    # State per member: x (x_hat after churn), D(x_hat), the Euler point and D(Euler point); the step
    # object updates them in place where it can (InplaceStep, TritonStep).
    x = step.init((len(members), 1, h, w), ts[0], win, dtype=cond.dtype, device=cond.device)  # line 1
    x = clip_start(x, ts[0], cfg.noise_clip)
    x_next = None
    for i, (t_cur, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        gamma = churn_gamma(t_cur, cfg.num_steps, cfg.s_churn, cfg.s_min, cfg.s_max)  # line 4
        x, t_hat = step.churn(x, t_cur, gamma, cfg.s_noise, win, i + 1)  # lines 5-6
        d_hat = denoise(x, t_hat)  # line 7
        if t_next == 0:  # the last step is Euler, fused with base + residual (and the inverse transform)
            return step.finish(x, d_hat, t_hat, base, transform)
        x_next = step.euler(x, d_hat, t_hat, t_next, out=x_next)  # line 8
        if cfg.solver == "heun":
            x = step.heun(x, d_hat, x_next, denoise(x_next, t_next), t_hat, t_next)  # lines 9-11
        else:
            x, x_next = x_next, x
        del d_hat  # freed before the next evaluation allocates its output
    raise AssertionError("karras_sigmas ends with 0, so the loop returns at its last step")


def domain_tiles(h: int, w: int, tiling: Tiling):
    """The tiles of an (h, w) domain and the per-axis overlap they are blended over."""
    tile = (balanced_tile(h, tiling.tile, tiling.overlap), balanced_tile(w, tiling.tile, tiling.overlap))
    # An axis covered by one tile has no overlap to blend; plan_tiles needs overlap < tile there.
    overlap = (min(tiling.overlap, tile[0] - 1), min(tiling.overlap, tile[1] - 1))
    return plan_tiles(h, w, tile, overlap), overlap


def images(h: int, w: int, members: int, cfg: SamplerConfig, tiling: Tiling) -> int:
    """(member, tile) images the backend denoises to sample `members` over an (h, w) domain."""
    return members * len(domain_tiles(h, w, tiling)[0]) * evaluations(cfg)


def evaluations(cfg: SamplerConfig) -> int:
    """Denoiser evaluations per sample: Heun uses 2 per step except the last (Euler to sigma = 0)."""
    return 2 * cfg.num_steps - 1 if cfg.solver == "heun" else cfg.num_steps
