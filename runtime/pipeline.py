"""The two-stage residual pipeline (MISSION.md; PrecipDiff, Dai & Ushijima-Mwesigwa 2025; CorrDiff,
Mardani et al. 2025):

    x_corr  = x_sat + F_corr(z; x_sat)                 at the coarse grid
    x_final = up(x_corr) + F_down(z; up(x_corr))       at the fine grid

in the bundle's transformed space, then inverse-transformed and clipped at 0 mm/h. Each member is
one independent sample of both stages. Missing input pixels (NaN) are conditioned as 0 mm/h and
come out as NaN over the fine pixels they cover.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from precipfast.config import DEFAULT_OVERLAP, DEFAULT_TILE, STAGES, SamplerConfig
from precipfast.errors import InputFormatError, SamplingError
from precipfast.grid import upsample
from precipfast.runtime.io_h5 import MAX_RATE_MM_H
from precipfast.runtime.ensemble import Tiling, auto_max_batch, default_budget_bytes, sample_ensemble
from precipfast.transform import forward, inverse

# Full-domain float32 fields per member at the peak of a stage: x_hat, both denoised estimates (blender
# numerators), the Euler point, the conditioning/base and the step's temporaries. Measured: the peak
# RSS of the shipped downscaling stage over 1500^2 px grows by 13.7 fields for the second member
# (/proc VmHWM, 1 vs 2 members, 3 steps).
STATE_FIELDS = 14


@dataclass(frozen=True)
class Origin:
    """Where a field sits on the global grid of its pixel size, so noise is keyed by global pixel."""
    row0: int = 0
    col0: int = 0
    width: int = 0  # global grid width in pixels (0 = the field's own width)

    @staticmethod
    def from_coords(lat_north: float, lon_west: float, pixel_deg: float) -> "Origin":
        """Global 0-based pixel of the north-west centre on a grid of pixel_deg from (90N, 180W)."""
        return Origin(int(round((90.0 - lat_north) / pixel_deg - 0.5)),
                      int(round((lon_west + 180.0) / pixel_deg - 0.5)), int(round(360.0 / pixel_deg)))

    def scaled(self, factor: int) -> "Origin":
        return Origin(self.row0 * factor, self.col0 * factor, self.width * factor)


@dataclass
class StageRun:
    """One stage ready to sample: its backend, sampler defaults and tiling."""
    name: str
    backend: Callable
    sampler: SamplerConfig
    tiling: Tiling
    cond_names: tuple[str, ...]


class Pipeline:
    """`Pipeline.from_bundle(path=None, backend="auto", device="auto")`, then `pipe.sample(...)`."""

    def __init__(self, bundle, stages: dict[str, StageRun], device: torch.device, backend_name: str,
                 budget_bytes: int | None = None):
        self.bundle, self.stages, self.device, self.backend_name = bundle, stages, device, backend_name
        self.budget_bytes = budget_bytes or default_budget_bytes(device)
        m = bundle.manifest
        self.transform = bundle.transform
        self.scale_factor = int(m["scale_factor"])
        self.upsample_mode = m.get("upsample", "bilinear")
        self.lr_pixel_deg, self.hr_pixel_deg = float(m["lr_pixel_deg"]), float(m["hr_pixel_deg"])

    @classmethod
    def from_bundle(cls, path=None, backend: str = "auto", device: str = "auto", *,
                    tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, max_batch: int | None = None,
                    memory_budget_gb: float | None = None,
                    stages: Sequence[str] | None = None) -> "Pipeline":
        from precipfast.export.bundle import default_bundle_path, open_bundle
        from precipfast.runtime.backends import BackendOptions, get_backend, resolve_auto
        bundle = open_bundle(path if path is not None else default_bundle_path())
        dev = _device(device)
        name = resolve_auto(dev.type) if backend == "auto" else backend
        wanted = tuple(stages) if stages else tuple(s for s in STAGES if s in bundle.stage_names)
        for s in wanted:
            if s not in bundle.stage_names:
                raise InputFormatError(f"stage {s!r} is not in bundle {bundle.path}; it has {bundle.stage_names}")
        budget = int(memory_budget_gb * 1024 ** 3) if memory_budget_gb else default_budget_bytes(dev)
        runs = {}
        for s in wanted:
            mb = max_batch or auto_max_batch(bundle.unet(s), tile, budget, device_type=dev.type)
            opts = BackendOptions(max_batch=mb, max_hw=tile)
            runs[s] = StageRun(s, get_backend(name, bundle, s, dev.type, options=opts), bundle.sampler(s),
                               Tiling(tile, overlap, mb), tuple(bundle.cond_names(s)))
        return cls(bundle, runs, dev, name, budget)

    # ------------------------------------------------------------------ sampling
    def sample(self, lr_precip, members: int = 30, steps: int | None = None, seed: int = 0, aux=None, *,
               origin: Origin | None = None, progress: Callable[[int, str], None] | None = None) -> dict:
        """lr_precip (H, W) or (T, H, W) mm/h (NaN = missing). Returns numpy arrays:
        precip (T?, E, H*f, W*f), corrected_lr (T?, E, H, W), precip_mean and precip_std (T?, H*f, W*f);
        the T axis only when the input had one. Time t uses seed + t * 2^32 (see README: noise)."""
        arr = np.asarray(lr_precip, dtype=np.float32)
        if arr.ndim not in (2, 3):
            raise InputFormatError(f"lr_precip must be (H, W) or (T, H, W), got shape {arr.shape}")
        fields = arr[None] if arr.ndim == 2 else arr
        outs = [self.sample_field(f, members, steps, seed + (t << 32), aux, origin=origin, progress=progress)
                for t, f in enumerate(fields)]
        res = {k: np.stack([o[k] for o in outs]) for k in outs[0]}
        if arr.ndim == 2:
            res = {k: v[0] for k, v in res.items()}
        res["precip_mean"] = np.nanmean(res["precip"], axis=-3)
        res["precip_std"] = np.nanstd(res["precip"], axis=-3)
        return res

    def sample_field(self, lr: np.ndarray, members: int, steps: int | None, seed: int, aux=None, *,
                     origin: Origin | None = None, member_ids: Sequence[int] | None = None,
                     progress: Callable[[int, str], None] | None = None) -> dict:
        """One coarse field (H, W) -> {'precip': (E, H*f, W*f), 'corrected_lr': (E, H, W)} as float32."""
        groups = list(self.iter_member_groups(lr, members, steps, seed, aux, origin=origin, member_ids=member_ids,
                                              progress=progress))
        return {k: np.concatenate([g[k] for g in groups]) for k in ("precip", "corrected_lr")}

    def iter_member_groups(self, lr: np.ndarray, members: int, steps: int | None, seed: int, aux=None, *,
                           origin: Origin | None = None, member_ids: Sequence[int] | None = None,
                           progress: Callable[[int, str], None] | None = None):
        """Sample one coarse field (H, W) in groups of members sized to the memory budget, yielding
        {'members': ids, 'precip': (g, H*f, W*f), 'corrected_lr': (g, H, W)} per group, so a caller that
        writes each group as it comes holds one group's fields, never the whole ensemble. The input is
        checked here, before the first group is asked for. progress(n, stage) is told of every n
        (member, tile) images denoised (`images_per_field` counts them)."""
        check_rates(lr)
        ids = list(member_ids) if member_ids is not None else list(range(members))
        if not ids:
            raise ValueError(f"members must be >= 1, got {members}")
        if steps is not None and steps < 2:
            raise ValueError(f"steps must be >= 2, got {steps}")
        return self._member_groups(lr, ids, steps, seed, aux, origin, progress)

    def _member_groups(self, lr, ids, steps, seed, aux, origin, progress):
        h, w = lr.shape
        f = self.scale_factor
        org = origin or Origin(0, 0, w)
        missing = torch.from_numpy(np.isnan(lr))
        x_sat = forward(torch.from_numpy(np.nan_to_num(lr, nan=0.0)), self.transform).to(self.device)
        x_sat = x_sat.view(1, 1, h, w)
        corr = self.stages.get("correction")
        down = self.stages.get("downscaling")
        for group in _groups(ids, self._group_size(h * w * (f * f if down else 1))):
            if corr:
                cond = self._cond(corr, x_sat, aux, lr_grid=True)
                x_corr = sample_ensemble(corr.backend, cond, group, "correction", seed,
                                         _steps(corr.sampler, steps), corr.tiling, base=x_sat,
                                         origin=(org.row0, org.col0, org.width or w),
                                         on_images=_tick(progress, "correction"))
            else:
                x_corr = x_sat.expand(len(group), 1, h, w)
            corrected = _masked(_finite(inverse(x_corr, self.transform), corr, steps), missing)[:, 0].cpu().numpy()
            precip = corrected
            if down:
                x_up = upsample(x_corr, f, self.upsample_mode)
                cond = self._cond(down, x_up, aux, lr_grid=False)
                fo = org.scaled(f)
                del x_corr
                x_fin = sample_ensemble(down.backend, cond, group, "downscaling", seed,
                                        _steps(down.sampler, steps), down.tiling, base=x_up,
                                        origin=(fo.row0, fo.col0, fo.width or w * f),
                                        on_images=_tick(progress, "downscaling"))
                del x_up, cond
                fine_missing = missing.repeat_interleave(f, 0).repeat_interleave(f, 1)
                precip = _masked(_finite(inverse(x_fin, self.transform), down, steps), fine_missing)[:, 0].cpu().numpy()
                del x_fin
            yield {"members": group, "precip": precip, "corrected_lr": corrected}

    def images_per_field(self, height: int, width: int, members: int, steps: int | None = None) -> int:
        """(member, tile) images denoised to sample one coarse (height, width) field: the unit of
        `progress`."""
        from precipfast.runtime.ensemble import images
        f, total = self.scale_factor, 0
        for name, run in self.stages.items():
            s = f if name == "downscaling" else 1
            total += images(height * s, width * s, members, _steps(run.sampler, steps), run.tiling)
        return total

    def evaluations_per_member(self, steps: int | None = None) -> int:
        from precipfast.runtime.ensemble import evaluations
        return sum(evaluations(_steps(r.sampler, steps)) for r in self.stages.values())

    # ------------------------------------------------------------------ helpers
    def _cond(self, run: StageRun, field: torch.Tensor, aux, lr_grid: bool) -> torch.Tensor:
        """Stage conditioning: the precipitation field, then aux channels in manifest order."""
        extra = []
        for name in run.cond_names[1:]:
            if not aux or name not in aux:
                raise InputFormatError(f"stage {run.name!r} needs aux channel {name!r}; the input has "
                                       f"{sorted(aux) if aux else 'none'}")
            a = torch.as_tensor(np.asarray(aux[name], dtype=np.float32), device=self.device)
            if a.shape != field.shape[-2:]:
                raise InputFormatError(f"aux {name!r} is {tuple(a.shape)}; stage {run.name!r} expects "
                                       f"{tuple(field.shape[-2:])} ({'coarse' if lr_grid else 'fine'} grid)")
            extra.append(a.expand(field.shape[0], 1, *a.shape))
        return torch.cat([field, *extra], dim=1) if extra else field

    def _group_size(self, pixels: int) -> int:
        """Members sampled together so the full-domain state fits the memory budget."""
        return max(1, int(self.budget_bytes // (STATE_FIELDS * 4 * pixels)))


def check_rates(lr: np.ndarray) -> None:
    """Refuse fields that are not rain rates: all missing, negative, or absurd (> 1000 mm/h)."""
    valid = lr[~np.isnan(lr)]
    if valid.size == 0:
        raise InputFormatError("input precipitation is all missing (NaN); expected at least one valid pixel")
    lo, hi = float(valid.min()), float(valid.max())
    if lo < 0:
        raise InputFormatError(f"input precipitation has negative rates (min {lo:g} mm/h); expected >= 0 mm/h")
    if hi > MAX_RATE_MM_H:
        raise InputFormatError(f"input precipitation has absurd rates (max {hi:g} mm/h); expected <= "
                               f"{MAX_RATE_MM_H:g} mm/h — is the unit mm/h?")


def _finite(rates: torch.Tensor, run: StageRun | None, steps: int | None) -> torch.Tensor:
    """Refuse a stage's output with non-finite rates rather than write them: with too few Heun steps
    from a large sigma_max the last steps cannot remove the initial noise and exp() overflows."""
    if run is None or bool(torch.isfinite(rates).all()):
        return rates
    bad = int((~torch.isfinite(rates)).sum())
    cfg = _steps(run.sampler, steps)
    raise SamplingError(f"the {run.name} stage diverged: {bad} of {rates.numel()} rates are inf or NaN with "
                        f"{cfg.num_steps} Heun steps from sigma_max {cfg.sigma_max:g}; expected finite rates: "
                        f"use more --steps (at least 8 with the shipped model)")


def _tick(progress, stage: str):
    return (lambda n: progress(n, stage)) if progress else None


def _masked(x: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    return x.masked_fill(missing.to(x.device).view(1, 1, *missing.shape), float("nan")) if missing.any() else x


def _steps(cfg: SamplerConfig, steps: int | None) -> SamplerConfig:
    if steps is None:
        return cfg
    from dataclasses import replace
    return replace(cfg, num_steps=int(steps))


def _groups(ids: list[int], size: int):
    for k in range(0, len(ids), size):
        yield ids[k:k + size]


def _device(name: str) -> torch.device:
    from precipfast.train.loop import resolve_device
    return resolve_device(name)


def fine_coords(lat_lr: np.ndarray, lon_lr: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the fine pixels inside each coarse pixel (lat descending, lon ascending)."""
    def expand(c, sign):
        d = abs(float(c[1] - c[0])) if len(c) > 1 else 0.1
        k = (np.arange(factor) + 0.5) / factor - 0.5  # offsets in coarse pixels
        return (c[:, None] + sign * k[None, :] * d).reshape(-1)
    return expand(np.asarray(lat_lr, np.float64), -1.0), expand(np.asarray(lon_lr, np.float64), 1.0)
