"""Quick-look PNG of a run: input, corrected coarse field, a few members, ensemble mean, and the
probability of exceeding a threshold. Rain colours on a log scale (0.1-100 mm/h), dry = white."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from precipfast.verify.report import save_figure


def quicklook(path, lr: np.ndarray, corrected_lr: np.ndarray, members: np.ndarray, mean: np.ndarray,
              exceed: np.ndarray, threshold_mm_h: float, extent_lr=None, extent=None, title: str = "") -> Path:
    """lr (h, w); corrected_lr (E, h, w); members (E, H, W); mean (H, W); exceed (H, W) in [0, 1]."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    cmap = plt.get_cmap("turbo").with_extremes(under="white", bad="lightgrey")   # dry: white, no data: grey
    norm = LogNorm(vmin=0.1, vmax=100)
    n_mem = min(3, members.shape[0])
    panels = [("input (satellite, 10 km)", lr, extent_lr), ("corrected, member 0 (10 km)", corrected_lr[0], extent_lr)]
    panels += [(f"member {k} (1 km)", members[k], extent) for k in range(n_mem)]
    panels += [("ensemble mean (1 km)", mean, extent)]
    fig, axes = plt.subplots(2, 4, figsize=(17, 8.5), constrained_layout=True)
    axes = axes.ravel()
    for ax, (name, field, ext) in zip(axes, panels):
        im = ax.imshow(np.where(field < 0.1, 0.05, field), cmap=cmap, norm=norm, extent=ext,
                       interpolation="nearest")
        ax.set_title(name, fontsize=10)
    fig.colorbar(im, ax=axes[:len(panels)].tolist(), shrink=0.6, label="rain rate (mm/h)")
    ax = axes[len(panels)]
    pim = ax.imshow(exceed, cmap="Blues", vmin=0, vmax=1, extent=extent, interpolation="nearest")
    ax.set_title(f"P(rain > {threshold_mm_h:g} mm/h)", fontsize=10)
    fig.colorbar(pim, ax=ax, shrink=0.8)
    for ax in axes[len(panels) + 1:]:
        ax.axis("off")
    return save_figure(fig, path, title)
