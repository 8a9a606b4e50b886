"""Training pairs from real radar for both stages (MISSION.md: residual targets).

Sources come from the catalogue in train/sources.py as 1 km mean rates over the input's period. Pairs:
- downscaling: 1 km crop -> lr = coarsen(HR, mean), cond = up(T(lr)), target eps_res = T(HR) - cond;
- correction: coarse crop of the pooled radar -> sat = T(degrade(coarse)), target eps_bias = T(coarse) - sat.
T is `precipfast.transform.forward`. Training and validation use different sources (whole days or whole
places: `DataConfig.train_sources` / `val_sources`), never neighbouring frames of one source. Every random
choice comes from the caller's torch.Generator.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from precipfast.config import STAGES, WET_MM_H, WIDE_ERROR_PRIOR, DataConfig
from precipfast.grid import coarsen, upsample
from precipfast.train.degrade import degrade, draw_error_model, margin_px
from precipfast.train.sources import (
    QPE_SCALE,
    available_sources,
    check_names,
    load_coarse,
    load_packed,
    load_source,
    resolve_data_dir,
    unpack,
)
from precipfast.transform import forward

__all__ = ["PairDataset", "available_sources", "load_source", "resolve_data_dir"]

SPLITS = ("train", "val")
WET_PREFERENCE = 0.8    # probability that a draw comes from the windows reaching data_cfg.min_wet_fraction
# Share of draws per kind of source (split evenly between the sources of a kind that are present): the
# CONUS QPE days hold most of the weather variety; FMI and BoM add other radars, climates and rain types.
KIND_WEIGHTS = {"qpe": 0.6, "mrms": 0.2, "fmi": 0.2, "bom": 0.2}
LARGE_PX = 4_000_000    # above this many pixels a frame's crop origins are indexed on a stride-4 grid


@dataclass
class _Source:
    name: str
    field: np.ndarray          # (T, H, W): float32 mm/h, uint16 QPE counts, or margin-padded coarse frames
    packed: bool               # field holds QPE counts (unpack each window)
    origins: np.ndarray        # (N, 2) crop origins (row, col) whose patch holds no NaN in any frame
    wet: list                  # per frame: (n, 2) origins whose patch reaches the wet fraction
    weight: float = 0.0


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
        if sources is None:
            sources = data_cfg.train_sources if split == "train" else data_cfg.val_sources
        names = check_names(root, sources, f"{split} sources")
        if split == "train":
            leak = sorted(set(names) & set(data_cfg.val_sources))
            if leak:
                raise ValueError(f"sources {leak} are both training and validation sources; hold out whole days "
                                 "or places")
        deg = data_cfg.degradation
        self.prior = WIDE_ERROR_PRIOR if data_cfg.error_prior == "wide" else None
        self.margin = margin_px(deg, self.prior) if stage == "correction" and deg.enabled else 0
        self.patch = data_cfg.patch_lr if stage == "correction" else data_cfg.patch_hr
        self.sources, self.skipped = [], []
        for name in names:
            src = self._prepare(str(root), name)
            (self.sources if src is not None else self.skipped).append(src if src is not None else name)
        if self.skipped:
            warnings.warn(f"{stage}/{split}: no NaN-free {self.patch}x{self.patch} crop in {self.skipped}; "
                          "those sources are left out", stacklevel=2)
        if not self.sources:
            raise ValueError(f"the {stage}/{split} split is empty: sources {names}")
        kinds = [s.name.split("/")[0] for s in self.sources]
        for s, k in zip(self.sources, kinds):
            s.weight = KIND_WEIGHTS.get(k, 0.2) / kinds.count(k)
        w = np.array([s.weight for s in self.sources])
        self._cum_weight = np.cumsum(w / w.sum())

    @property
    def source_names(self) -> list[str]:
        return [s.name for s in self.sources]

    def _prepare(self, root: str, name: str) -> _Source | None:
        cfg, p, m = self.cfg, self.patch, self.margin
        packed = self.stage == "downscaling" and name.startswith("qpe/")
        if self.stage == "downscaling":
            field = load_packed(root, name) if packed else load_source(root, name, cfg.period_min)
        else:
            field = load_coarse(root, name, cfg.scale_factor, cfg.pooling, cfg.period_min)
        t, h, w = field.shape
        if h < p or w < p:
            return None
        stride = 4 if h * w > LARGE_PX else 1
        nan = np.zeros((h, w), dtype=bool)
        for frame in field:
            nan |= (frame == np.uint16(65535)) if packed else np.isnan(frame)
        ok = _window_counts(nan, p, stride) == 0
        if not ok.any():
            return None
        origins = np.argwhere(ok).astype(np.int32) * stride
        wet_min = math.ceil(cfg.min_wet_fraction * p * p)
        wet = []
        for frame in field:
            wet_px = (frame >= np.uint16(round(WET_MM_H / QPE_SCALE))) if packed else (frame >= WET_MM_H)
            hits = ok & (_window_counts(wet_px & ~nan, p, stride) >= wet_min)
            wet.append(np.argwhere(hits).astype(np.int32) * stride)
        if m:  # context for the degradation's shift and blur: edge values repeated beyond the frame
            field = np.pad(field, ((0, 0), (m, m), (m, m)), mode="edge")
        return _Source(name, field, packed, origins, wet)

    def _draw(self, generator: torch.Generator) -> np.ndarray:
        """One crop window (P + 2 * margin square), following the wet preference and augmentation."""
        u = torch.rand(6, generator=generator, dtype=torch.float64).numpy()
        p, m = self.patch, self.margin
        src = self.sources[min(int(np.searchsorted(self._cum_weight, u[0], side="right")), len(self.sources) - 1)]
        wet_frames = [i for i, o in enumerate(src.wet) if len(o)]
        if u[1] < WET_PREFERENCE and wet_frames:
            t = wet_frames[int(u[2] * len(wet_frames))]
            y, x = src.wet[t][int(u[3] * len(src.wet[t]))]
        else:
            t = int(u[2] * src.field.shape[0])
            y, x = src.origins[int(u[3] * len(src.origins))]
        win = src.field[t, y: y + p + 2 * m, x: x + p + 2 * m]
        win = unpack(win) if src.packed else win
        if self.split == "train":  # 8 dihedral orientations
            win = np.rot90(win, int(u[4] * 4))
            win = win[:, ::-1] if u[5] < 0.5 else win
        return np.ascontiguousarray(win, dtype=np.float32)

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
        if self.prior is None:
            sat_mm = degrade(win, self.cfg.degradation, generator)
        else:  # each crop its own error model (DataConfig.error_prior)
            sat_mm = torch.cat([degrade(w[None], draw_error_model(self.cfg.degradation, generator, self.prior),
                                        generator) for w in win])
        sat_mm = sat_mm[..., m: m + p, m: m + p]
        truth_mm = win[..., m: m + p, m: m + p].contiguous()
        sat = forward(sat_mm, tcfg).contiguous()
        target = forward(truth_mm, tcfg) - sat
        return {"truth": sat + target, "sat": sat, "cond": sat, "target": target, "base": sat,
                "truth_mm_h": truth_mm, "sat_mm_h": sat_mm.contiguous()}


def _window_counts(mask: np.ndarray, p: int, stride: int) -> np.ndarray:
    """Number of True pixels in every p x p window whose origin lies on the stride grid (integral image)."""
    ii = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int32)
    np.cumsum(np.cumsum(mask, 0, dtype=np.int32), 1, dtype=np.int32, out=ii[1:, 1:])
    ys = np.arange(0, mask.shape[0] - p + 1, stride)
    xs = np.arange(0, mask.shape[1] - p + 1, stride)
    a, b = ii[np.ix_(ys, xs)], ii[np.ix_(ys + p, xs + p)]
    return b - ii[np.ix_(ys, xs + p)] - ii[np.ix_(ys + p, xs)] + a
