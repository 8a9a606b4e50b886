"""Batched ensemble sampler: every member and every tile advance together through the EDM steps
(Karras et al. 2022, Algorithm 2), with tiles blended at each denoiser evaluation (MultiDiffusion,
Bar-Tal et al. 2023) so large domains have no seams.

Noise comes from `runtime.noise` (a pure function of seed, member, stage, step and global pixel) and
the element-wise step from `kernels.heun_residual.STEP_IMPLS`, so a member's field does not depend on
the batch size, the tiling or the backend.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from precipfast.config import DEFAULT_OVERLAP, DEFAULT_TILE, SamplerConfig
from precipfast.edm import churn, churn_gamma, karras_sigmas
from precipfast.kernels.heun_residual import ReferenceStep
from precipfast.runtime import noise as pf_noise
from precipfast.runtime.tiling import TileBlender, balanced_tile, crop, plan_tiles

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
            for (ti, m), d in zip(part, db):
                if single:
                    out[m] = d
                    continue
                slot = pending.setdefault(ti, [torch.empty((e, *d.shape), dtype=x.dtype, device=x.device), 0])
                slot[0][m] = d
                slot[1] += 1
                if slot[1] == e:
                    blender.add(tiles[ti], slot[0])
                    del pending[ti]
    return out if single else blender.result()


def sample_ensemble(backend: Backend, cond: torch.Tensor, members: Sequence[int], stage: str, seed: int,
                    cfg: SamplerConfig, tiling: Tiling, base: torch.Tensor | None = None,
                    origin: tuple[int, int, int] | None = None, step_impl=ReferenceStep,
                    on_images: Callable[[int], None] | None = None) -> torch.Tensor:
    """Sample the residual for `members` at once; returns base + residual (or the residual alone).

    cond (E or 1, Cc, H, W) working-space conditioning; base (E or 1, 1, H, W) added at the end;
    origin (row0, col0, global_width) places the domain on the global grid that keys the noise;
    on_images(n) reports progress in (member, tile) images denoised (see `images`)."""
    h, w = cond.shape[-2], cond.shape[-1]
    r0, c0, gw = origin or (0, 0, w)
    tiles, overlap = domain_tiles(h, w, tiling)
    ts = [float(t) for t in karras_sigmas(cfg.num_steps, cfg.sigma_min, cfg.sigma_max, cfg.rho)]
    eps = lambda step: pf_noise.normal_members(  # noqa: E731
        seed, members, stage, step, r0, r0 + h, c0, c0 + w, gw).to(cond)

    def denoise(x, t):
        return denoise_domain(backend, x, t, cond, tiling, tiles, overlap, on_images)

    x = eps(0) * ts[0]
    for i, (t_cur, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        gamma = churn_gamma(t_cur, cfg.num_steps, cfg.s_churn, cfg.s_min, cfg.s_max)
        x_hat, t_hat = churn(x, t_cur, gamma, cfg.s_noise, eps(i + 1) if gamma > 0 else None)
        d_hat = denoise(x_hat, t_hat)
        # The last step (t_next = 0) is Euler and adds the stage's base field: base + residual.
        x = step_impl.euler(x_hat, d_hat, t_hat, t_next, base if t_next == 0 else None)
        if t_next > 0 and cfg.solver == "heun":
            x = step_impl.heun(x_hat, d_hat, x, denoise(x, t_next), t_hat, t_next, None)
    return x


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
