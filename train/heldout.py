"""The held-out verification suite of the shipped model (MODEL_CARD.md): whole days and sources never
trained on, scored against the strongest simple baselines, from the training checkpoints.

    python -m precipfast.train.heldout --ckpt checkpoints/v2 --out out/heldout [--steps 4,6,8,12,18]

Cases: the wettest NaN-free 200 km windows of frames of qpe/20160922 (a whole held-out day; hours from
03Z, away from the last training hour), mrms/conus (2019-06-10 half-hour means, another year and
product), fmi/fmi_20170509 (Finnish spring showers) and bom/bom_2_20180616 (Melbourne winter showers),
all as half-hour (QPE: hourly) mean rates. Per case:
- downscaling alone: the 1 km ensemble from the clean mean-pooled field; fair CRPS (Ferro 2014) against
  the MAE of the better bilinear baseline (bilinear of the mean-pooled field, the model's own input, or
  of the max-pooled field), spread/skill (Fortin et al. 2014) and the 2-20 km power ratio;
- two stages on satellite-like input (train/degrade.py on the whole coarse frame, fixed seed): the
  corrected coarse field's MAE against the input's, then the 1 km ensemble's fair CRPS against the MAE
  of bilinear of the input, and the members' 99.99th percentile and maximum against the truth's maximum.
Correction designs compared: none, quantile mapping (train/qmap.py) and the shipped regression stage.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch

from precipfast.config import DegradationConfig
from precipfast.edm import karras_sigmas, sample
from precipfast.grid import coarsen, upsample
from precipfast.metrics import crps_ensemble, nanmean, psd_band_ratio, psd_radial, spread_skill
from precipfast.train.degrade import degrade
from precipfast.train.sources import load_source
from precipfast.transform import forward, inverse

CASES = {"qpe/20160922": (3, 8, 13, 18, 23), "mrms/conus": (0, 1), "fmi/fmi_20170509": (1, 4),
         "bom/bom_2_20180616": (2, 8)}
WINDOWS = {"qpe/20160922": 3, "mrms/conus": 3, "fmi/fmi_20170509": 2, "bom/bom_2_20180616": 1}
SIZE = 200          # window edge, 1 km pixels (20 coarse pixels)
CONTEXT = 8         # coarse pixels of context around a window for the correction stage
BAND_KM = (2.0, 20.0)


def wettest_windows(frame: np.ndarray, size: int, k: int, stride: int = 20) -> list[tuple[int, int]]:
    """Origins of the k wettest (mean rate) NaN-free size x size windows on a stride grid, not overlapping."""
    nan = np.isnan(frame)
    val = np.where(nan, 0, frame)
    ii = np.pad(np.cumsum(np.cumsum(val, 0), 1), ((1, 0), (1, 0)))
    jn = np.pad(np.cumsum(np.cumsum(nan, 0, dtype=np.int64), 1), ((1, 0), (1, 0)))
    ys, xs = np.arange(0, frame.shape[0] - size + 1, stride), np.arange(0, frame.shape[1] - size + 1, stride)
    box = lambda a: a[np.ix_(ys + size, xs + size)] - a[np.ix_(ys, xs + size)] - a[np.ix_(ys + size, xs)] + a[np.ix_(ys, xs)]  # noqa
    score = np.where(box(jn) == 0, box(ii), -np.inf)
    picked = []
    for idx in np.argsort(score, axis=None)[::-1]:
        if not np.isfinite(score.flat[idx]) or len(picked) == k:
            break
        y, x = ys[idx // len(xs)], xs[idx % len(xs)]
        if all(abs(y - a) >= size or abs(x - b) >= size for a, b in picked):
            picked.append((int(y), int(x)))
    return picked


@torch.no_grad()
def ensemble(den, cond_t: torch.Tensor, members: int, steps: int, sampler: dict, seed: int) -> torch.Tensor:
    """(members, H, W) working-space residuals for one conditioning field (1, 1, H, W), members batched."""
    sig = karras_sigmas(steps, sampler["sigma_min"], sampler["sigma_max"], sampler["rho"], torch.float32)
    gen = torch.Generator().manual_seed(seed)
    cond = cond_t.expand(members, -1, -1, -1)
    noise = {}
    fn = lambda i: noise.setdefault(i, torch.randn(cond.shape, generator=gen))  # noqa: E731
    return sample(den, cond, fn, sig)[:, 0]


def score_downscaling(ens: torch.Tensor, truth: torch.Tensor, baselines: dict) -> dict:
    """Fair CRPS, spread/skill and 2-20 km power ratio of ens (E, H, W) vs truth, plus baseline MAEs."""
    wl, p_t = psd_radial(truth)
    _, p_e = psd_radial(ens)
    out = {"crps": nanmean(crps_ensemble(ens, truth, fair=True)), "spread_skill": spread_skill(ens, truth),
           "psd_ratio": psd_band_ratio(wl, p_e, p_t, BAND_KM), "mean_mae": nanmean((ens.mean(0) - truth).abs())}
    for name, b in baselines.items():
        out[f"{name}_mae"] = nanmean((b - truth).abs())
    return out


def run(ckpt: Path, data_dir, *, members: int = 8, steps_list=(4, 6, 8, 12, 18), default_steps: int = 8,
        seed: int = 0, degradation: DegradationConfig | None = None, qmap=None, cases=None) -> dict:
    from precipfast.train.checkpoint import load_checkpoint
    down, dcfg = load_checkpoint(ckpt / "downscaling")
    corr, ccfg = load_checkpoint(ckpt / "correction") if (ckpt / "correction").is_dir() else (None, None)
    tcfg, f = _transform(dcfg), int(dcfg["data"]["scale_factor"])
    deg = degradation or DegradationConfig(**{k: v for k, v in dcfg["data"]["degradation"].items()})
    rows = []
    for source, frames in (cases or CASES).items():
        field = load_source(data_dir, source)
        for t in frames:
            if t >= field.shape[0]:
                continue
            frame = field[t]
            h, w = frame.shape[0] // f * f, frame.shape[1] // f * f
            lr_frame = coarsen(np.nan_to_num(frame[:h, :w]), f, "mean")
            gen = torch.Generator().manual_seed(seed * 1_000_003 + t)
            sat_frame = degrade(torch.from_numpy(lr_frame), deg, gen).numpy()
            for (y, x) in wettest_windows(frame[:h, :w], SIZE, WINDOWS[source]):
                rows.append(_case(source, t, y, x, frame[:h, :w], lr_frame, sat_frame, down, dcfg, corr, ccfg,
                                  tcfg, f, members, steps_list, default_steps, seed, qmap))
    return {"rows": rows, "summary": summarise(rows, default_steps), "degradation": dataclasses.asdict(deg),
            "members": members, "default_steps": default_steps}


def _transform(cfg):
    from precipfast.config import TransformConfig
    return TransformConfig(**cfg["data"]["transform"])


def _case(source, t, y, x, frame, lr_frame, sat_frame, down, dcfg, corr, ccfg, tcfg, f, members, steps_list,
          default_steps, seed, qmap) -> dict:
    truth = torch.from_numpy(np.ascontiguousarray(frame[y: y + SIZE, x: x + SIZE]))
    n = SIZE // f
    ly, lx = y // f, x // f
    lr = torch.from_numpy(lr_frame[ly: ly + n, lx: lx + n].copy())
    lr_max = coarsen(truth, f, "max")
    bil = lambda c: upsample(c[None, None], f, "bilinear")[0, 0].clamp_min(0)  # noqa: E731
    base = {"bilinear_mean": bil(lr), "bilinear_max": bil(lr_max), "nearest_mean": upsample(lr[None, None], f, "nearest")[0, 0]}
    row = {"source": source, "frame": t, "row0": y, "col0": x, "truth_max": float(truth.max()),
           "truth_mean": float(truth.mean())}
    cond = upsample(forward(lr, tcfg)[None, None], f, "bilinear")
    for steps in steps_list:
        ens = inverse(cond[:, 0] + ensemble(down, cond, members, steps, dcfg["sampler"], seed), tcfg)
        row[f"down_{steps}"] = score_downscaling(ens, truth, base)
    # two stages on satellite-like input
    sat = torch.from_numpy(sat_frame[ly: ly + n, lx: lx + n].copy())
    row["sat_mae"] = nanmean((sat - lr).abs())
    row["sat_bilinear_mae"] = nanmean((bil(sat) - truth).abs())
    designs = {"none": sat}
    if qmap is not None:
        designs["qmap"] = torch.from_numpy(qmap(sat.numpy()))
    if corr is not None:
        y0, x0 = max(0, ly - CONTEXT), max(0, lx - CONTEXT)
        ctx = torch.from_numpy(sat_frame[y0: ly + n + CONTEXT, x0: lx + n + CONTEXT].copy())
        c = forward(ctx, tcfg)[None, None]
        with torch.no_grad():
            out = inverse(c[0, 0] + corr(torch.zeros_like(c), torch.ones(1), c)[0, 0], tcfg)
        designs["regression"] = out[ly - y0: ly - y0 + n, lx - x0: lx - x0 + n]
    for name, c_lr in designs.items():
        cnd = upsample(forward(c_lr, tcfg)[None, None], f, "bilinear")
        ens = inverse(cnd[:, 0] + ensemble(down, cnd, members, default_steps, dcfg["sampler"], seed + 1), tcfg)
        row[f"two_{name}"] = {"coarse_mae": nanmean((c_lr - lr).abs()),
                              "crps": nanmean(crps_ensemble(ens, truth, fair=True)),
                              "p9999": float(torch.quantile(ens.flatten().double()[:2_000_000], 0.9999)),
                              "max": float(ens.max()), "mean_ratio": float(ens.mean() / truth.mean().clamp_min(1e-6))}
    return row


def summarise(rows: list, default_steps: int) -> dict:
    """Medians over cases: the figures MODEL_CARD.md quotes."""
    if not rows:
        return {}
    med = lambda v: float(np.median([x for x in v if np.isfinite(x)])) if v else math.nan  # noqa: E731
    out = {}
    for key in [k for k in rows[0] if k.startswith("down_")]:
        r = [row[key] for row in rows]
        better = [min(a["bilinear_mean_mae"], a["bilinear_max_mae"]) for a in r]
        out[key] = {"crps_over_better_bilinear": float(np.sum([a["crps"] for a in r]) / np.sum(better)),
                    "median_crps_ratio": med([a["crps"] / b for a, b in zip(r, better)]),
                    "median_spread_skill": med([a["spread_skill"] for a in r]),
                    "median_psd_ratio": med([a["psd_ratio"] for a in r])}
    for key in [k for k in rows[0] if k.startswith("two_")]:
        r = [row[key] for row in rows]
        out[key] = {"coarse_mae_over_input": float(np.sum([a["coarse_mae"] for a in r]) /
                                                   np.sum([row["sat_mae"] for row in rows])),
                    "crps_over_bilinear_input": float(np.sum([a["crps"] for a in r]) /
                                                      np.sum([row["sat_bilinear_mae"] for row in rows])),
                    "worst_p9999_over_truth_max": max(a["p9999"] / max(row["truth_max"], 1e-6)
                                                      for a, row in zip(r, rows)),
                    "worst_max_over_truth_max": max(a["max"] / max(row["truth_max"], 1e-6) for a, row in zip(r, rows))}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default="checkpoints/v2")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", default="out/heldout")
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--steps", default="4,6,8,12,18")
    ap.add_argument("--default-steps", type=int, default=8)
    ap.add_argument("--perturb", action="store_true", help="also score perturbed satellite-error models")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from precipfast.train.qmap import fit_quantile_map
    qmap = fit_quantile_map(args.data)
    steps = tuple(int(s) for s in args.steps.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = run(Path(args.ckpt), args.data, members=args.members, steps_list=steps, default_steps=args.default_steps,
              qmap=qmap)
    (out / "heldout.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res["summary"], indent=1))
    if args.perturb:
        base = DegradationConfig()
        for label, change in PERTURBATIONS.items():
            r = run(Path(args.ckpt), args.data, members=args.members, steps_list=(args.default_steps,),
                    default_steps=args.default_steps, qmap=qmap, degradation=dataclasses.replace(base, **change))
            (out / f"heldout_{label}.json").write_text(json.dumps(r, indent=1) + "\n")
            print(label, json.dumps({k: v for k, v in r["summary"].items() if k.startswith("two_")}))


# Satellite-error models perturbed from the fit (train/DEGRADATION.md): stronger/weaker bias, larger
# displacement, more noise and misses.
PERTURBATIONS = {"bias_low": {"bias_a": 0.8}, "bias_high": {"bias_a": 1.5}, "shift_3px": {"shift_px": 3.0},
                 "noisy": {"noise_std": 0.35, "p_miss": 0.5}}


if __name__ == "__main__":
    main()
