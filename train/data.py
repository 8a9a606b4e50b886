"""Training pairs from real radar for both stages (MISSION.md: residual targets).

Sources: the seven MRMS regions (1 km, 2-min frames), the FMI composites (1 km) and the BoM Rainfields3
products (0.5 km, mean-pooled by 2 to 1 km) in shared/data (see its README). Each is loaded once, lazily,
and cached for the process. Pairs:
- downscaling: HR crop -> lr = coarsen(HR), cond = up(T(lr)), target eps_res = T(HR) - cond;
- correction: coarse crop of the pooled radar -> sat = T(degrade(coarse)), target eps_bias = T(coarse) - sat.
T is `precipfast.transform.forward`. Held-out regions and the last frames of every other source form
the validation split. Every random choice comes from the caller's torch.Generator.
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from precipfast.config import DataConfig
from precipfast.errors import InputFormatError
from precipfast.grid import coarsen, upsample
from precipfast.train.degrade import WET_MM_H, degrade
from precipfast.transform import forward

MRMS_FILE = "mrms_preciprate_20190610_0000-0110_regions.h5"
RADAR_FILE = "radar_1km_fmi_bom.h5"
STAGES = ("correction", "downscaling")
SPLITS = ("train", "val")
WET_PREFERENCE = 0.8    # probability that a draw must reach data_cfg.min_wet_fraction
MAX_TRIES = 24          # crops tried per sample before a drier one is accepted


def resolve_data_dir(data_dir) -> Path:
    """The data folder, checked: it must exist and hold both radar files."""
    root = Path(data_dir)
    if not root.is_dir():
        raise InputFormatError(f"training data directory '{data_dir}' does not exist; expected a folder such "
                               f"as ../shared/data with {MRMS_FILE} and {RADAR_FILE}")
    for name, what in ((MRMS_FILE, "MRMS groups region_0..region_6 with precip (T, 512, 512)"),
                       (RADAR_FILE, "FMI/BoM groups fmi_*/bom_* with precip (T, H, W)")):
        if not (root / name).is_file():
            raise InputFormatError(f"training data file '{root / name}' is missing; expected {what}")
    return root


def available_sources(data_dir) -> tuple[str, ...]:
    """Names of every radar source: 'mrms/region_3', 'fmi/fmi_20160928', 'bom/bom_66_20201031', ..."""
    return _available(str(resolve_data_dir(data_dir).resolve()))


@functools.lru_cache(maxsize=8)
def _available(root: str) -> tuple[str, ...]:
    names = []
    with h5py.File(Path(root) / MRMS_FILE, "r") as f:
        names += [f"mrms/{g}" for g in sorted(f) if g.startswith("region_")]
    with h5py.File(Path(root) / RADAR_FILE, "r") as f:
        names += [f"{g.split('_')[0]}/{g}" for g in sorted(f) if g.split("_")[0] in ("fmi", "bom")]
    return tuple(names)


def load_source(data_dir, name: str) -> np.ndarray:
    """(T, H, W) float32 rain rates (mm/h) at 1 km for one source, NaN outside coverage; read-only,
    loaded once per process."""
    root = resolve_data_dir(data_dir).resolve()
    _check_names(root, [name], "source")
    return _load(str(root), name)


@functools.lru_cache(maxsize=None)
def _load(root: str, name: str) -> np.ndarray:
    kind, group = name.split("/")
    path = Path(root) / (MRMS_FILE if kind == "mrms" else RADAR_FILE)
    with h5py.File(path, "r") as f:
        if f"{group}/precip" not in f:
            raise InputFormatError(f"'{path}' has no dataset {group}/precip; expected (T, H, W) mm/h")
        p = f[f"{group}/precip"][...].astype(np.float32, copy=False)
    if p.ndim != 3:
        raise InputFormatError(f"'{path}' {group}/precip has shape {p.shape}; expected (T, H, W)")
    if kind == "bom":  # 0.5 km -> 1 km; a block with any NaN is NaN
        p = coarsen(p[:, : p.shape[1] // 2 * 2, : p.shape[2] // 2 * 2], 2, "mean")
    np.maximum(p, 0, out=p, where=np.isfinite(p))  # a few -0.3/-0.6 mm/h in BoM bias correction -> 0
    p.setflags(write=False)
    return p


@functools.lru_cache(maxsize=None)
def _load_coarse(root: str, name: str, factor: int, pooling: str) -> np.ndarray:
    lr = coarse_frames(_load(root, name), factor, pooling)
    lr.setflags(write=False)
    return lr


def split_frames(n_frames: int, held_out: bool, split: str, val_time_fraction: float) -> range:
    """Frame indices of a source in a split: a held-out source is all validation; otherwise the last
    round(n_frames * val_time_fraction) frames (at least one when the fraction is > 0) are validation."""
    n_val = n_frames if held_out else (max(1, round(n_frames * val_time_fraction)) if val_time_fraction > 0 else 0)
    return range(n_frames - n_val, n_frames) if split == "val" else range(0, n_frames - n_val)


def coarse_frames(frames: np.ndarray, factor: int, pooling: str) -> np.ndarray:
    """Pool (T, H, W) by `factor` (cropping H, W to multiples); a block with any NaN becomes NaN."""
    h, w = frames.shape[-2] // factor * factor, frames.shape[-1] // factor * factor
    hr = frames[..., :h, :w]
    lr = coarsen(hr, factor, pooling)
    lr[coarsen(np.isnan(hr).astype(np.float32), factor, "max") > 0] = np.nan
    return lr


@dataclass
class _Source:
    name: str
    field: np.ndarray    # (T, H, W) mm/h: 1 km frames (downscaling) or margin-padded coarse frames (correction)
    origins: np.ndarray  # flat indices of crop origins whose patch holds no NaN in any frame
    n_cols: int          # origins per row: origin = divmod(index, n_cols)


class PairDataset:
    """Random (augmented) training pairs for one stage and split; see the module docstring.

    batch(batch_size, generator) -> dict of float32 tensors (B, 1, P, P):
      downscaling: hr, lr_mm_h (B, 1, P/s, P/s), cond, target, base, hr_mm_h
      correction:  truth, sat, cond, target, base, truth_mm_h, sat_mm_h
    with base + target == hr (or truth) exactly and cond == base."""

    def __init__(self, data_cfg: DataConfig, stage: str, split: str, data_dir="../shared/data", sources=None):
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.cfg, self.stage, self.split = data_cfg, stage, split
        root = resolve_data_dir(data_dir).resolve()
        held = set(_check_names(root, data_cfg.val_regions, "val_regions"))
        names = _check_names(root, available_sources(root) if sources is None else sources, "sources")
        deg = data_cfg.degradation
        self.margin = (math.ceil(3 * deg.shift_px) + math.ceil(3 * deg.blur_px) + 1
                       if stage == "correction" and deg.enabled else 0)
        self.patch = data_cfg.patch_lr if stage == "correction" else data_cfg.patch_hr
        self.sources, self.skipped = [], []
        self.frames: dict[str, range] = {}   # frame indices of each used source in this split
        for name in names:
            full = (_load(str(root), name) if stage == "downscaling" else
                    _load_coarse(str(root), name, data_cfg.scale_factor, data_cfg.pooling))
            frames = split_frames(full.shape[0], name in held, split, data_cfg.val_time_fraction)
            if len(frames) == 0:
                continue
            src = self._prepare(name, full[frames.start:frames.stop])
            if src is None:
                self.skipped.append(name)
            else:
                self.sources.append(src)
                self.frames[name] = frames
        if self.skipped:
            warnings.warn(f"{stage}/{split}: no NaN-free {self.patch}x{self.patch} crop in {self.skipped}; "
                          "those sources are left out", stacklevel=2)
        if not self.sources:
            raise ValueError(f"the {stage}/{split} split is empty: sources {names}, val_regions "
                             f"{sorted(held)}, val_time_fraction {data_cfg.val_time_fraction}")
        sizes = np.array([s.field.shape[0] * s.origins.size for s in self.sources], dtype=np.float64)
        self._cum_weight = np.cumsum(sizes / sizes.sum())

    @property
    def source_names(self) -> list[str]:
        return [s.name for s in self.sources]

    def _prepare(self, name: str, frames: np.ndarray) -> _Source | None:
        p, m = self.patch, self.margin
        nan = np.isnan(frames).any(axis=0)
        h, w = nan.shape
        if h < p or w < p:
            return None
        ii = np.pad(np.cumsum(np.cumsum(nan, 0, dtype=np.int64), 1), ((1, 0), (1, 0)))
        bad = ii[p:, p:] - ii[:-p, p:] - ii[p:, :-p] + ii[:-p, :-p]  # NaN count per p x p window
        origins = np.flatnonzero(bad == 0)
        if origins.size == 0:
            return None
        if m:  # context for the degradation's shift and blur: edge values repeated beyond the frame
            frames = np.pad(frames, ((0, 0), (m, m), (m, m)), mode="edge")
        return _Source(name, frames, origins, w - p + 1)

    def _draw(self, generator: torch.Generator) -> np.ndarray:
        """One crop window (P + 2 * margin square), following the wet preference and augmentation."""
        u = torch.rand(3 * MAX_TRIES + 3, generator=generator, dtype=torch.float64).numpy()
        want_wet, p, m = u[0] < WET_PREFERENCE, self.patch, self.margin
        for t in range(MAX_TRIES):
            a, b, c = u[3 + 3 * t: 6 + 3 * t]
            src = self.sources[min(int(np.searchsorted(self._cum_weight, a, side="right")), len(self.sources) - 1)]
            frame = src.field[int(b * src.field.shape[0])]
            y, x = divmod(int(src.origins[int(c * src.origins.size)]), src.n_cols)
            win = frame[y: y + p + 2 * m, x: x + p + 2 * m]
            if not want_wet or (win[m: m + p, m: m + p] >= WET_MM_H).mean() >= self.cfg.min_wet_fraction:
                break
        if self.split == "train":  # 8 dihedral orientations
            win = np.rot90(win, int(u[1] * 4))
            win = win[:, ::-1] if u[2] < 0.5 else win
        return win

    def batch(self, batch_size: int, generator: torch.Generator) -> dict:
        """A batch of `batch_size` pairs; deterministic given the generator state."""
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        win = torch.from_numpy(np.stack([self._draw(generator) for _ in range(batch_size)]))[:, None]
        tcfg, s, m, p = self.cfg.transform, self.cfg.scale_factor, self.margin, self.patch
        if self.stage == "downscaling":
            lr = coarsen(win, s, self.cfg.pooling)
            cond = upsample(forward(lr, tcfg), s, "bilinear")
            target = forward(win, tcfg) - cond
            return {"hr": cond + target, "lr_mm_h": lr, "cond": cond, "target": target, "base": cond,
                    "hr_mm_h": win}
        sat_mm = degrade(win, self.cfg.degradation, generator)[..., m: m + p, m: m + p]
        truth_mm = win[..., m: m + p, m: m + p].contiguous()
        sat = forward(sat_mm, tcfg).contiguous()
        target = forward(truth_mm, tcfg) - sat
        return {"truth": sat + target, "sat": sat, "cond": sat, "target": target, "base": sat,
                "truth_mm_h": truth_mm, "sat_mm_h": sat_mm.contiguous()}


def residual_std(dataset: PairDataset, n: int = 256, generator: torch.Generator | None = None) -> float:
    """Std of the stage's residual targets over n random pairs: EDM's sigma_data for that stage."""
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    targets, left = [], n
    while left > 0:
        targets.append(dataset.batch(min(64, left), gen)["target"].double())
        left -= targets[-1].shape[0]
    return float(torch.cat(targets).std())


def _check_names(root: Path, names, what: str) -> list[str]:
    if isinstance(names, str):
        names = [names]
    known = available_sources(root)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; available sources: {list(known)}")
    return list(names)

