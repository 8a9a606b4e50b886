"""Quantile mapping of satellite-like coarse rain onto radar climatology: the simplest correction design
that cannot invent intensities (a monotone map; as in arXiv 2504.00307, which uses it where diffusion adds
nothing). Compared with the regression stage in experiments/heldout.py and MODEL_CARD.md.

Fitted on the training sources only: their coarse frames are degraded with the satellite-error model
(fixed seed) and the empirical quantiles of the degraded and the clean rates are matched,
x -> F_clean^-1(F_sat(x)) (Panofsky & Brier 1968; Piani et al. 2010 for precipitation). Dry stays dry;
above the last fitted quantile the map keeps the ratio of the top pair.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from precipfast.config import DataConfig
from precipfast.train.degrade import degrade
from precipfast.train.sources import load_coarse, resolve_data_dir

LEVELS = np.linspace(0.0, 1.0, 2001)


def fit_quantile_map(data_dir, data_cfg: DataConfig | None = None, seed: int = 0,
                     max_pixels: int = 2_000_000) -> Callable[[np.ndarray], np.ndarray]:
    """A function mapping coarse satellite-like rates (mm/h, any shape) to radar-like rates."""
    cfg = data_cfg or DataConfig()
    root = str(resolve_data_dir(data_dir).resolve())
    gen = torch.Generator().manual_seed(seed)
    sat, clean = [], []
    for name in cfg.train_sources:
        lr = load_coarse(root, name, cfg.scale_factor, cfg.pooling, cfg.period_min)
        for frame in lr:
            d = degrade(torch.from_numpy(np.nan_to_num(frame)), cfg.degradation, gen).numpy()
            ok = np.isfinite(frame)
            sat.append(d[ok])
            clean.append(frame[ok])
    sat_v, clean_v = np.concatenate(sat), np.concatenate(clean)
    rng = np.random.default_rng(seed)
    if sat_v.size > max_pixels:
        sat_v, clean_v = rng.choice(sat_v, max_pixels), rng.choice(clean_v, max_pixels)
    return quantile_map(sat_v, clean_v)


def quantile_map(source: np.ndarray, target: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Empirical quantile map from the distribution of `source` values to that of `target` (both mm/h)."""
    qs, qt = np.quantile(source, LEVELS), np.quantile(target, LEVELS)
    qs, keep = np.unique(qs, return_index=True)   # ties (zeros) collapse to one knot
    qt = np.maximum.accumulate(qt[keep])
    top_ratio = qt[-1] / qs[-1] if qs[-1] > 0 else 1.0

    def apply(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        y = np.interp(x, qs, qt).astype(np.float32)
        y = np.where(x > qs[-1], x * top_ratio, y)
        return np.where(x <= 0, 0.0, y).astype(np.float32)

    return apply
