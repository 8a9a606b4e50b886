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

from precipfast.config import STAGES, WET_MM_H, AmplitudeConfig, SamplerConfig
from precipfast.errors import InputFormatError, SamplingError
from precipfast.grid import upsample
from precipfast.kernels.heun_residual import get_step_impl, step_impl_name
from precipfast.noise import Origin, time_seed
from precipfast.options import SampleOptions
from precipfast.runtime.engines.backends import BackendOptions, get_backend, resolve_auto
from precipfast.runtime.engines.bundle import default_bundle_path, open_bundle
from precipfast.runtime.engines.device import resolve_device
from precipfast.runtime.files.rates import rate_problem
from precipfast.runtime.files.reader import expected_pixel_check
from precipfast.runtime.sampling import amplitude, guard, memory
from precipfast.runtime.sampling.dry import INSIDE_MM_H, dry_under, fill_holes, inside_rain, within_reach
from precipfast.runtime.sampling.ensemble import Tiling, evaluations, images, sample_ensemble
from precipfast.transform import forward, inverse


@dataclass
class StageRun:
    """One stage ready to sample: its backend, sampler defaults and tiling."""
    name: str
    backend: Callable
    sampler: SamplerConfig
    tiling: Tiling
    cond_names: tuple[str, ...]
    rain_reach: int | None = None    # coarse px: beyond them from input rain the stage's output is dry (dry.py)
    amplitude: AmplitudeConfig | None = None   # the correction keeps the input's rain (amplitude.py)
    rain_inside: int | None = None   # coarse px: inside rain this wide the stage's members have no dry holes (dry.py)


class Pipeline:
    """`Pipeline.from_bundle(model=None, backend="auto", device="auto", **settings)`, then
    `pipe.sample(field, members=30, steps=None, seed=0)`: the same route as `precipfast sample`."""

    def __init__(self, bundle, stages: dict[str, StageRun], device: torch.device, backend_name: str,
                 options: SampleOptions, budget_bytes: int, step_name: str):
        self.bundle, self.stages, self.device, self.backend_name = bundle, stages, device, backend_name
        self.step_name = step_name  # the sampler's step implementation (kernels/heun_residual.py)
        # the physical guard's ratio: the stages' trained residual bounds (runtime/sampling/guard.py)
        self.guard_ratio = guard.ratio_bound([bundle.edm(s).denoised_max for s in stages])
        self.options, self.budget_bytes = options, budget_bytes
        m = bundle.manifest
        self.transform = bundle.transform
        self.scale_factor = int(m["scale_factor"])
        self.upsample_mode = m.get("upsample", "bilinear")
        self.lr_pixel_deg, self.hr_pixel_deg = float(m["lr_pixel_deg"]), float(m["hr_pixel_deg"])

    @classmethod
    def from_bundle(cls, model=None, backend: str = "auto", device: str = "auto", **settings) -> "Pipeline":
        """settings: any SampleOptions field (tile, overlap, max_batch, memory_gb, stages, ...)."""
        return cls.from_options(SampleOptions(model=None if model is None else str(model), backend=backend,
                                              device=str(device), **settings))

    @classmethod
    def from_options(cls, opts: SampleOptions) -> "Pipeline":
        """Open and check the bundle, resolve the device and backend once, and size the micro-batches."""

        bundle = open_bundle(opts.model if opts.model is not None else default_bundle_path())
        dev = resolve_device(opts.device)
        name = resolve_auto(dev) if opts.backend == "auto" else opts.backend
        wanted = opts.stages or tuple(s for s in STAGES if s in bundle.stage_names)
        budget = memory.budget_bytes(opts.memory_gb, dev)
        runs = {}
        for s in wanted:  # a stage the bundle lacks is refused by bundle.stage (via unet or get_backend)
            tile, overlap = bundle.tiling(s) or (opts.tile, opts.overlap)  # a stage tiled as it was trained
            mb = opts.max_batch or memory.auto_max_batch(bundle.unet(s), tile, budget, device_type=dev.type)
            options = BackendOptions(max_batch=mb, tile=tile, precision=opts.precision,
                                     torch_compile=opts.torch_compile, cuda_graphs=opts.cuda_graphs)
            backend = get_backend(name, bundle, s, dev, options=options)
            runs[s] = StageRun(s, backend, bundle.sampler(s), Tiling(tile, overlap, mb),
                               tuple(bundle.cond_names(s)), bundle.rain_reach(s), bundle.amplitude(s),
                               bundle.rain_inside(s))
        return cls(bundle, runs, dev, name, opts, budget, step_impl_name(dev))

    # ------------------------------------------------------------------ sampling
    def sample(self, field, members: int | None = None, steps: int | None = None, seed: int | None = None,
               aux=None, *, lat=None, lon=None, progress: Callable[[int, str], None] | None = None) -> dict:
        """field: an InputField (`precipfast.runtime.files.reader.read_input`, what `precipfast sample` reads), or
        an array (H, W) or (T, H, W) in mm/h (NaN = missing) with its north-up pixel centres lat (H,),
        lon (W,). With geolocation the noise is keyed by global pixel, so the members equal the CLI's for the
        same field and seed; an array without it is keyed as if its north-west pixel were the origin.
        members/steps/seed default to this pipeline's options. Returns numpy arrays: precip (T?, E, H*f,
        W*f), corrected_lr (T?, E, H, W), precip_mean and precip_std (T?, H*f, W*f); T only when the
        input had a time axis (an InputField always has one)."""
        opts = self.options.replace(**{k: v for k, v in (("members", members), ("steps", steps), ("seed", seed))
                                       if v is not None})
        lr, origin, aux, has_time = self.prepare(field, aux, lat, lon)
        outs = [{"precip": [], "corrected_lr": []} for _ in lr]
        for t, g in self.iter_groups(lr, origin, aux, opts, progress=progress, context=self.context_of(field)):
            for k in ("precip", "corrected_lr"):
                outs[t][k].append(g[k])
        res = {k: np.stack([np.concatenate(o[k]) for o in outs]) for k in ("precip", "corrected_lr")}
        if not has_time:
            res = {k: v[0] for k, v in res.items()}
        res["precip_mean"] = np.nanmean(res["precip"], axis=-3)
        res["precip_std"] = np.nanstd(res["precip"], axis=-3)
        return res

    def prepare(self, field, aux=None, lat=None, lon=None):
        """(precip (T, H, W) float32, Origin or None, aux, whether the input had a time axis), checked once:
        an InputField was checked by its reader, an array is checked here."""
        if hasattr(field, "precip") and hasattr(field, "pixel_deg"):
            expected_pixel_check(field, self.lr_pixel_deg)
            origin = Origin.from_coords(float(field.lat[0]), float(field.lon[0]), field.pixel_deg)
            return field.precip, origin, aux if aux is not None else (field.aux or None), True
        arr = np.asarray(field, dtype=np.float32)
        if arr.ndim not in (2, 3):
            raise InputFormatError(f"lr_precip must be (H, W) or (T, H, W), got shape {arr.shape}")
        problem = rate_problem(arr)
        if problem:
            raise InputFormatError(f"lr_precip {problem}")
        if (lat is None) != (lon is None):
            raise InputFormatError("pass both lat and lon (north-up pixel centres) or neither")
        origin = None
        if lat is not None:
            if (len(lat), len(lon)) != arr.shape[-2:]:
                raise InputFormatError(f"lat/lon have {len(lat)} x {len(lon)} values; lr_precip is {arr.shape}")
            origin = Origin.from_latlon(lat, lon)
        return (arr[None] if arr.ndim == 2 else arr), origin, aux, arr.ndim == 3

    def iter_groups(self, lr: np.ndarray, origin, aux, opts: SampleOptions, progress=None, on_time=None,
                    context=None):
        """Every (time index, member group) of a checked (T, H, W) field: time t is sampled with
        `noise.time_seed(opts.seed, t)`. The one route of `sample` and `precipfast sample`; on_time(t) is
        called before time t starts; context: `context_of(field)`."""
        for t in range(lr.shape[0]):
            if on_time:
                on_time(t)
            ctx = None if context is None else (context.precip[t], context.top, context.left)
            for g in self._member_groups(lr[t], list(range(opts.members)), opts.steps,
                                         time_seed(opts.seed, t), aux, origin, progress, ctx):
                yield t, g

    def context_of(self, field):
        """The input's pixels around its bbox crop (`io_h5.Context`) where the correction stage uses them:
        the stage samples the larger domain and keeps the crop, so the crop's edges see their real
        neighbours (coarse CRPS 3-4 % better on 200 km crops, docs/experiments.md). None for arrays, for inputs
        read without context, and for a correction stage with aux channels (they cover the crop only)."""
        ctx = getattr(field, "context", None)
        corr = self.stages.get("correction")
        return ctx if ctx is not None and corr is not None and len(corr.cond_names) == 1 else None

    def sample_field(self, lr: np.ndarray, members: int, steps: int | None, seed: int, aux=None, *,
                     origin: Origin | None = None, member_ids: Sequence[int] | None = None,
                     progress: Callable[[int, str], None] | None = None) -> dict:
        """One coarse field (H, W) with an exact seed (no time rule) -> {'precip': (E, H*f, W*f),
        'corrected_lr': (E, H, W)} as float32; member_ids picks members (default 0..members-1)."""
        opts = self.options.replace(members=members, steps=steps, seed=0)
        lr = np.asarray(lr, dtype=np.float32)
        problem = rate_problem(lr)
        if problem:
            raise InputFormatError(f"lr_precip {problem}")
        ids = list(member_ids) if member_ids is not None else list(range(opts.members))
        groups = list(self._member_groups(lr, ids, opts.steps, seed, aux, origin, progress))
        return {k: np.concatenate([g[k] for g in groups]) for k in ("precip", "corrected_lr")}

    def _member_groups(self, lr, ids, steps, seed, aux, origin, progress, context=None):
        """context: (the field with its neighbours (H + top + bottom, W + left + right), top, left) or None."""
        h, w = lr.shape
        f = self.scale_factor
        org = origin or Origin(0, 0, w)
        missing = torch.from_numpy(np.isnan(lr))
        x_sat = forward(torch.from_numpy(np.nan_to_num(lr, nan=0.0)), self.transform).to(self.device)
        x_sat = x_sat.view(1, 1, h, w)
        if context is not None:  # the correction's domain: the field with its neighbours, cropped after
            wide, top, left = context
            x_wide = forward(torch.from_numpy(np.nan_to_num(wide, nan=0.0)), self.transform).to(self.device)
            x_wide, inner = x_wide.view(1, 1, *wide.shape), (slice(top, top + h), slice(left, left + w))
            org_wide = org.with_width(w).shifted(-top, -left)
        else:
            x_wide, inner, org_wide = x_sat, (slice(None), slice(None)), org
        corr = self.stages.get("correction")
        down = self.stages.get("downscaling")
        step = get_step_impl(self.device, self.step_name)  # the implementation the groups were sized for
        size = memory.member_group_size(h * w * (f * f if down else 1), self.budget_bytes, self.step_name)
        # no rain beyond the correction's reach from input rain (dry.py): one mask for every group
        beyond = ~within_reach(x_wide, corr.rain_reach) if corr and corr.rain_reach is not None else None
        inside = (inside_rain(x_wide, corr.rain_inside, self._working(INSIDE_MM_H))
                  if corr and corr.rain_inside is not None else None)
        hole_below = self._working(WET_MM_H)
        wide_mm_h = inverse(x_wide, self.transform) if corr and corr.amplitude is not None else None
        for group in _groups(ids, size):
            if corr:
                cond = self._cond(corr, x_wide, aux, lr_grid=True)
                x_corr = sample_ensemble(corr.backend, cond, group, "correction", seed,
                                         _steps(corr.sampler, steps), corr.tiling, base=x_wide,
                                         origin=org_wide.with_width(w), step_impl=step,
                                         on_images=_tick(progress, "correction"))
                if beyond is not None:
                    x_corr = x_corr.masked_fill(beyond, 0.0)
                if inside is not None:   # no dry holes inside widespread rain: filled from the member (dry.py)
                    x_corr = fill_holes(x_corr, inside & (x_corr < hole_below), x_wide)
                if wide_mm_h is not None:   # on the whole domain, before the crop: windows see the neighbours
                    kept = amplitude.keep_rain(inverse(x_corr, self.transform), wide_mm_h, corr.amplitude)
                    x_corr = forward(kept, self.transform).to(x_corr.dtype)
                x_corr = x_corr[:, :, inner[0], inner[1]]
            else:
                x_corr = x_sat.expand(len(group), 1, h, w)
            corrected = _masked(_finite(inverse(x_corr, self.transform), corr, steps), missing)[:, 0].cpu().numpy()
            precip = corrected
            if down:
                dry_coarse = x_corr <= 0   # a dry pool holds only dry pixels (dry.py)
                x_up = upsample(x_corr, f, self.upsample_mode)
                cond = self._cond(down, x_up, aux, lr_grid=False)
                fo = org.scaled(f)
                del x_corr
                x_fin = sample_ensemble(down.backend, cond, group, "downscaling", seed,
                                        _steps(down.sampler, steps), down.tiling, base=x_up,
                                        origin=fo.with_width(w * f), step_impl=step,
                                        on_images=_tick(progress, "downscaling"))
                x_fin.masked_fill_(dry_under(dry_coarse, f), 0.0)
                del x_up, cond
                fine_missing = missing.repeat_interleave(f, 0).repeat_interleave(f, 1)
                precip = _masked(_finite(inverse(x_fin, self.transform), down, steps), fine_missing)[:, 0].cpu().numpy()
                del x_fin
            guard.check_members(precip, lr, f if down else 1, self.guard_ratio, reach=2 if corr and down else 1,
                                what=" + ".join(self.stages) + " ensemble")
            yield {"members": group, "precip": precip, "corrected_lr": corrected}

    def _working(self, mm_h: float) -> float:
        return float(forward(torch.tensor(mm_h, dtype=torch.float64), self.transform))

    def images_per_field(self, height: int, width: int, members: int, steps: int | None = None,
                         context=None) -> int:
        """(member, tile) images denoised to sample one coarse (height, width) field (with `context_of`'s
        neighbours for the correction stage): the unit of `progress`."""
        f, total = self.scale_factor, 0
        for name, run in self.stages.items():
            s = f if name == "downscaling" else 1
            h, w = (context.precip.shape[-2:] if context is not None and name == "correction"
                    else (height * s, width * s))
            total += images(h, w, members, _steps(run.sampler, steps), run.tiling)
        return total

    def evaluations_per_member(self, steps: int | None = None) -> int:
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
    """The stage's sampler with the user's --steps; a one-evaluation stage (num_steps 1 in its bundle: a
    regression mean or a CRPS generator, edm.Preconditioned) has no steps to choose and keeps its one."""
    if steps is None or cfg.num_steps == 1:
        return cfg
    from dataclasses import replace
    return replace(cfg, num_steps=int(steps))


def _groups(ids: list[int], size: int):
    for k in range(0, len(ids), size):
        yield ids[k:k + size]


def fine_coords(lat_lr: np.ndarray, lon_lr: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the fine pixels inside each coarse pixel (lat descending, lon ascending)."""
    def expand(c, sign):
        d = abs(float(c[1] - c[0])) if len(c) > 1 else 0.1
        k = (np.arange(factor) + 0.5) / factor - 0.5  # offsets in coarse pixels
        return (c[:, None] + sign * k[None, :] * d).reshape(-1)
    return expand(np.asarray(lat_lr, np.float64), -1.0), expand(np.asarray(lon_lr, np.float64), 1.0)
