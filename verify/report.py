"""Reports of a verification (verify/evaluate.py): the terminal table and the PNG of `precipfast evaluate
ENSEMBLE --truth TRUTH`. Both read only the result dict, so a result loaded back from --json tables too
(the plot also needs the maps, which only the in-memory result carries)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

COLUMNS = {"ensemble": "ensemble", "bilinear": "bilinear", "nearest": "nearest",
           "bilinear_truth_meanpool": "pooled truth"}
# (key, label, ratio): ratios can span decades (a spectrum 1e-4 of the truth's) and get 3 significant digits;
# the rest are rates and scores with 3 decimals, so a bias of 1e-10 mm/h reads 0.000
ROWS = (("fair_crps", "fair CRPS (points: MAE) mm/h", False), ("mae", "MAE of mean mm/h", False),
        ("rmse", "RMSE of mean mm/h", False), ("bias", "bias mm/h", False),
        ("bias_ratio", "bias ratio (of means)", True), ("corr", "correlation", False),
        ("spread_skill", "spread/skill (1 = calibrated)", True),
        ("psd_ratio_2_50km", "PSD ratio 2-50 km (1 = truth)", True), ("psd_ratio_2_20km", "PSD ratio 2-20 km", True))


def _fmt(v, ratio: bool = True) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    a = abs(v)
    if not ratio:
        return f"{v:.3f}" if a < 1e5 else f"{v:.3g}"
    return f"{v:.3g}" if a >= 100 or (0 < a < 0.01) else f"{v:.3f}"


def format_table(result: dict) -> str:
    """Rows = scores, columns = the ensemble and each baseline; header with files and sample sizes, footer
    with the rank histogram and any notes. '-' = not defined for that column."""
    scores = result["scores"]
    cols = [c for c in COLUMNS if c in scores]
    label_w = 34
    width = max(11, *(len(COLUMNS[c]) + 2 for c in cols))
    times = result.get("times", [])
    lines = [f"ensemble {result['ensemble']} ({result['members']} members) vs truth {result['truth']}",
             f"{len(times)} time(s), {result['n_pixels']:,} pixels scored ({100 * result['valid_fraction']:.1f} % "
             f"of the grid {result['grid']['shape'][0]}x{result['grid']['shape'][1]}), truth mean "
             f"{_fmt(result['truth_mean_mm_h'])} mm/h",
             "", f"{'score':<{label_w}}" + "".join(f"{COLUMNS[c]:>{width}}" for c in cols),
             "-" * (label_w + width * len(cols))]
    for key, label, ratio in ROWS:
        lines.append(f"{label:<{label_w}}" + "".join(f"{_fmt(scores[c].get(key), ratio):>{width}}" for c in cols))
    for thr in result["thresholds_mm_h"]:
        for km in result["scales_km"]:
            cells = [scores[c].get("fss", {}).get(f"{thr:g}mm_h", {}).get(f"{km:g}km") for c in cols]
            lines.append(f"{f'FSS >= {thr:g} mm/h, {km:g} km':<{label_w}}"
                         + "".join(f"{_fmt(v, ratio=False):>{width}}" for v in cells))
    rh = result["rank_histogram"]
    lines += ["", f"rank histogram ({len(rh['counts'])} bins): {' '.join(str(c) for c in rh['counts'])}",
              f"  flatness: reliability index {_fmt(rh['reliability_index'])} (0 = flat), "
              f"delta {_fmt(rh['delta'])} (1 = flat for independent pixels)"]
    lines += ["columns: bilinear/nearest = upsampled coarse input; pooled truth = bilinear of the truth "
              "mean-pooled to the coarse grid"] if "bilinear_truth_meanpool" in cols else []
    lines += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)


def plot_verification(result: dict, out_png) -> Path:
    """PNG: rank histogram, power spectra (truth, mean member spectrum, baselines), FSS against scale per
    threshold, and a map row (truth, one member, ensemble mean, a baseline) of the first time."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    from matplotlib.colors import LogNorm


    fig = plt.figure(figsize=(18, 10), constrained_layout=True)
    gs = fig.add_gridspec(2, 12)
    ax = fig.add_subplot(gs[0, 0:4])
    counts = np.asarray(result["rank_histogram"]["counts"], np.float64)
    ax.bar(np.arange(counts.size), counts / max(counts.sum(), 1), color="C0", width=0.9)
    ax.axhline(1 / counts.size, color="k", ls="--", lw=1, label="flat")
    ax.set_xlabel("rank of the truth among the members")
    ax.set_ylabel("frequency")
    ax.set_title(f"rank histogram (reliability index {_fmt(result['rank_histogram']['reliability_index'])})",
                 fontsize=10)
    ax.legend(fontsize=8)

    ax = fig.add_subplot(gs[0, 4:8])
    psd = result.get("psd", {})
    wl = np.asarray(psd.get("wavelength_km", []), np.float64)
    if wl.size:
        styles = {"truth": ("k-", "truth"), "ensemble": ("C3-", "members (mean spectrum)"),
                  "bilinear": ("C0--", "bilinear"), "nearest": ("C2:", "nearest"),
                  "bilinear_truth_meanpool": ("C1-.", "bilinear of pooled truth")}
        for key, (style, label) in styles.items():
            if psd.get(key) is not None:
                ax.loglog(wl, np.maximum(np.asarray(psd[key]), 1e-12), style, label=label)
        ax.axvspan(2, 20, color="0.85", zorder=0, label="2-20 km")
        ax.axvspan(20, 50, color="0.93", zorder=0, label="20-50 km")
        ax.invert_xaxis()
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ticks = [t for t in (2, 5, 10, 20, 50, 100, 200, 500, 1000) if wl.min() <= t <= wl.max()]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no NaN-free window for spectra", ha="center", transform=ax.transAxes)
    ax.set_xlabel("wavelength (km)")
    ax.set_ylabel("power (mm/h)$^2$")
    ax.set_title("radially averaged power spectrum", fontsize=10)

    ax = fig.add_subplot(gs[0, 8:12])
    scales = result["scales_km"]
    lines = {"ensemble": "-o", "bilinear": "--", "nearest": ":", "bilinear_truth_meanpool": "-."}
    for i, thr in enumerate(result["thresholds_mm_h"]):
        for name, style in lines.items():
            fss = result["scores"].get(name, {}).get("fss", {}).get(f"{thr:g}mm_h")
            if fss:
                y = [np.nan if fss[f"{km:g}km"] is None else fss[f"{km:g}km"] for km in scales]
                ax.plot(scales, y, style, color=f"C{i}", ms=4,
                        label=f"{thr:g} mm/h" if name == "ensemble" else None)
    for name, style in lines.items():
        if name in result["scores"]:
            ax.plot([], [], style, color="0.3", label=name.replace("_", " "))
    ax.set_xlabel("neighbourhood (km)")
    ax.set_ylabel("fractions skill score")
    ax.set_ylim(0, 1.02)
    ax.set_title("FSS (Roberts & Lean 2008): colour = threshold, line = forecast", fontsize=10)
    ax.legend(fontsize=7, ncol=2)

    maps = result.get("maps")
    if maps:
        cmap = plt.get_cmap("turbo").with_extremes(under="white", bad="lightgrey")
        norm = LogNorm(vmin=0.1, vmax=100)
        panels = (("truth", "truth"), ("member", "member 0"), ("ensemble_mean", "ensemble mean"),
                  ("baseline", maps["baseline_name"].replace("_", " ")))
        s = maps.get("stride", 1)
        for j, (key, title) in enumerate(panels):
            ax = fig.add_subplot(gs[1, 3 * j:3 * j + 3])
            fl = np.asarray(maps[key], np.float64)
            h, w = fl.shape
            im = ax.imshow(np.where(fl < 0.1, 0.05, fl), cmap=cmap, norm=norm, interpolation="nearest",
                           extent=(0, w * s, h * s, 0))
            ax.set_title(title + (f" (every {s}th pixel)" if s > 1 else ""), fontsize=10)
            ax.set_xlabel("pixels")
        fig.colorbar(im, ax=ax, shrink=0.8, label="rain rate (mm/h)")
    t0 = (result.get("times_iso") or result.get("times") or [""])[0]
    return save_figure(fig, Path(out_png), f"{Path(result['ensemble']).name} vs {Path(result['truth']).name}"
                       f" ({result['members']} members; maps: time {t0})")


def save_figure(fig, path, title: str = "") -> Path:
    """Title, write as PNG, close (matplotlib keeps every open figure alive)."""
    import matplotlib.pyplot as plt
    if title:
        fig.suptitle(title)
    out = Path(path)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
