"""The held-out verification suite of the shipped model (MODEL_CARD.md): whole days and sources never
trained on, scored against the strongest simple baselines, from the training checkpoints.

    python -m experiments.heldout --ckpt checkpoints/v2 --out out/heldout [--steps 4,6,8,12,18]
        [--corrections correction,correction_edm] [--perturb bias_low|bias_high|shift_3px|noisy] [--windows 1]

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
Correction designs compared: none, quantile mapping (experiments/qmap.py) and every correction checkpoint
(regression, diffusion, CorrDiff's regression + diffusion, CRPS-trained generators).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from experiments.qmap import fit_quantile_map
from precipfast.config import DegradationConfig, TransformConfig
from precipfast.edm import karras_sigmas, sample
from precipfast.grid import coarsen, upsample
from precipfast.train.checkpoint import load_checkpoint, read_config
from precipfast.train.degrade import degrade
from precipfast.train.sources import load_source
from precipfast.transform import forward, inverse
from precipfast.verify.baselines import bilinear, nearest
from precipfast.verify.scores import (
    fair_crps,
    mae,
    nanmean,
    peak_ratio,
    psd_band_ratio,
    psd_radial,
    ratio_of_sums,
    spread_skill,
)

CASES = {"qpe/20160922": (3, 9, 15, 21), "mrms/conus": (0, 1), "fmi/fmi_20170509": (1, 4),
         "bom/bom_2_20180616": (2, 8)}
WINDOWS = {"qpe/20160922": 2, "mrms/conus": 2, "fmi/fmi_20170509": 2, "bom/bom_2_20180616": 1}
SIZE = 200          # window edge, 1 km pixels (20 coarse pixels)
CONTEXT = 8         # coarse pixels of context around a window for the correction stage (as `precipfast
                    # sample --bbox` reads, runtime/files/reader.py CONTEXT_PX)
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
    """(members, H, W) working-space residuals for a conditioning field (1 or members, 1, H, W), members
    batched (one conditioning field per member when the correction stage is an ensemble)."""
    sig = karras_sigmas(steps, sampler["sigma_min"], sampler["sigma_max"], sampler["rho"], torch.float32)
    gen = torch.Generator().manual_seed(seed)
    cond = cond_t.expand(members, -1, -1, -1)
    noise = {}
    fn = lambda i: noise.setdefault(i, torch.randn(cond.shape, generator=gen))  # noqa: E731
    return sample(den, cond, fn, sig, noise_clip=float(sampler.get("noise_clip", math.inf)))[:, 0]


def score_downscaling(ens: torch.Tensor, truth: torch.Tensor, baselines: dict) -> dict:
    """Fair CRPS, spread/skill and 2-20 km power ratio of ens (E, H, W) vs truth, plus baseline MAEs."""
    wl, p_t = psd_radial(truth)
    _, p_e = psd_radial(ens)
    out = {"fair_crps": nanmean(fair_crps(ens, truth)), "spread_skill": spread_skill(ens, truth),
           "psd_ratio": psd_band_ratio(wl, p_e, p_t, BAND_KM), "mean_mae": mae(ens.mean(0), truth)}
    for name, b in baselines.items():
        out[f"{name}_mae"] = mae(b, truth)
    return out


def run(ckpt: Path, data_dir, *, members: int = 8, steps_list=(4, 6, 8, 12, 18), default_steps: int = 8,
        seed: int = 0, degradation: DegradationConfig | None = None, qmap=None, cases=None,
        corrections: tuple[str, ...] | None = None, max_windows: int | None = None,
        schedule: dict | None = None, context: int = CONTEXT) -> dict:
    """schedule: sampler settings of the downscaling stage that replace its checkpoint's (sigma_max, rho);
    context: coarse pixels of satellite-like field around a window that the correction stage sees."""
    down, dcfg = load_checkpoint(ckpt / "downscaling")
    dcfg["sampler"] = {**dcfg["sampler"], **(schedule or {})}
    corrections = correction_designs(ckpt, corrections)
    tcfg, f = _transform(dcfg), int(dcfg["data"]["scale_factor"])
    deg = degradation or DegradationConfig(**{k: v for k, v in dcfg["data"]["degradation"].items()})
    rows = []
    for source, t, y, x, frame, lr_frame, sat_frame in iter_cases(data_dir, f, deg, cases, max_windows, seed):
        print(f"heldout: {source} frame {t} window ({y}, {x}), case {len(rows) + 1}", file=sys.stderr, flush=True)
        rows.append(_case(source, t, y, x, frame, lr_frame, sat_frame, down, dcfg, corrections,
                          tcfg, f, members, steps_list, default_steps, seed, qmap, context))
    return {"rows": rows, "summary": summarise(rows, default_steps), "degradation": dataclasses.asdict(deg),
            "members": members, "default_steps": default_steps, "context": context}


def iter_cases(data_dir, f: int, deg: DegradationConfig, cases=None, max_windows: int | None = None, seed: int = 0):
    """(source, frame index, window row, window col, frame, mean-pooled frame, satellite-like frame) of every
    held-out case: the frame cropped to whole coarse pixels, degraded whole with a seed fixed per frame,
    and its wettest SIZE x SIZE windows (at most max_windows a frame). experiments/heldout_runtime.py too."""
    for source, frames in (cases or CASES).items():
        field = load_source(data_dir, source)
        for t in frames:
            if t >= field.shape[0]:
                continue
            h, w = field.shape[1] // f * f, field.shape[2] // f * f
            frame = field[t][:h, :w]
            lr_frame = coarsen(np.nan_to_num(frame), f, "mean")
            sat_frame = degrade(torch.from_numpy(lr_frame), deg, frame_generator(seed, t)).numpy()
            k = WINDOWS[source] if max_windows is None else min(max_windows, WINDOWS[source])
            for (y, x) in wettest_windows(frame, SIZE, k):
                yield source, t, y, x, frame, lr_frame, sat_frame


def fitted_error_model(ckpt) -> tuple[DegradationConfig, int]:
    """(the fitted satellite-error model, the scale factor) recorded in the downscaling checkpoint's config."""
    data = read_config(Path(ckpt) / "downscaling")["data"]
    return DegradationConfig(**data["degradation"]), int(data["scale_factor"])


def frame_generator(seed: int, t: int) -> torch.Generator:
    """The generator `iter_cases` degrades frame t of a source with (experiments/oracle.py draws its shift again)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + t)


def correction_designs(ckpt: Path, names: tuple[str, ...] | None = None) -> dict:
    """{design name: (denoiser, config)} of every correction checkpoint under ckpt (correction,
    correction_*): "regression" for a regression mean, "diffusion" for an EDM ensemble of corrections,
    "regression+diffusion" for CorrDiff's regression mean plus diffusion on its remainder, "crps" for a
    CRPS-trained generator (one evaluation a member), named by its directory (correction_crps -> crps)."""
    out = {}
    for d in sorted(ckpt.glob("correction*")) if names is None else [ckpt / n for n in names]:
        if (d / "config.json").is_file():
            den, cfg = load_checkpoint(d)
            kind = cfg["edm"].get("kind", "edm")
            name = {"regression": "regression", "edm": "diffusion", "mean+edm": "regression+diffusion",
                    "crps": d.name.removeprefix("correction_")}[kind]
            out[name if name not in out else d.name] = (den, cfg)
        elif names is not None:
            raise FileNotFoundError(f"no correction checkpoint in {d}")
    return out


def correct(den, cfg: dict, ctx: torch.Tensor, tcfg, members: int, seed: int) -> torch.Tensor:
    """Corrected coarse fields (members, H, W) in mm/h of a satellite-like context window (H, W): the
    regression mean repeated, or one diffusion sample per member (the runtime's per-member stage 1)."""
    c = forward(ctx, tcfg)[None, None]
    with torch.no_grad():
        if cfg["edm"].get("kind") == "regression":
            res = den(torch.zeros_like(c), torch.ones(1), c)[:, 0].expand(members, -1, -1)
        else:
            res = ensemble(den, c, members, int(cfg["sampler"]["num_steps"]), cfg["sampler"], seed)
    return inverse(c[0] + res, tcfg)


def _transform(cfg):
    return TransformConfig(**cfg["data"]["transform"])


def _case(source, t, y, x, frame, lr_frame, sat_frame, down, dcfg, corrections, tcfg, f, members, steps_list,
          default_steps, seed, qmap, context: int = CONTEXT) -> dict:
    truth = torch.from_numpy(np.ascontiguousarray(frame[y: y + SIZE, x: x + SIZE]))
    n = SIZE // f
    ly, lx = y // f, x // f
    lr = torch.from_numpy(lr_frame[ly: ly + n, lx: lx + n].copy())
    base = {"bilinear_mean": bilinear(lr, f), "bilinear_max": bilinear(coarsen(truth, f, "max"), f),
            "nearest_mean": nearest(lr, f)}
    row = {"source": source, "frame": t, "row0": y, "col0": x, "truth_max": float(truth.max()),
           "truth_mean": float(truth.mean())}
    cond = upsample(forward(lr, tcfg)[None, None], f, "bilinear")
    for steps in steps_list:
        ens = inverse(cond[:, 0] + ensemble(down, cond, members, steps, dcfg["sampler"], seed), tcfg)
        row[f"down_{steps}"] = score_downscaling(ens, truth, base)
    # two stages on satellite-like input
    sat = torch.from_numpy(sat_frame[ly: ly + n, lx: lx + n].copy())
    row["sat_mae"] = mae(sat, lr)
    row["sat_bilinear_mae"] = mae(bilinear(sat, f), truth)
    designs = {"none": sat[None]}
    if qmap is not None:
        designs["qmap"] = torch.from_numpy(qmap(sat.numpy()))[None]
    y0, x0 = max(0, ly - context), max(0, lx - context)
    ctx = torch.from_numpy(sat_frame[y0: ly + n + context, x0: lx + n + context].copy())
    for name, (den, cfg) in corrections.items():
        designs[name] = correct(den, cfg, ctx, tcfg, members, seed + 2)[:, ly - y0: ly - y0 + n, lx - x0: lx - x0 + n]
    for name, c_lr in designs.items():
        cnd = upsample(forward(c_lr, tcfg)[:, None], f, "bilinear")
        ens = inverse(cnd[:, 0] + ensemble(down, cnd, members, default_steps, dcfg["sampler"], seed + 1), tcfg)
        row[f"two_{name}"] = {"coarse_mae": mae(c_lr.mean(0), lr),
                              # the members' median: the point estimate an absolute error rewards (the mean
                              # smears a displaced shower over dry pixels)
                              "coarse_median_mae": mae(c_lr.quantile(0.5, dim=0), lr),
                              # one member ("none", "qmap"): its MAE, the CRPS of a point forecast
                              "coarse_fair_crps": nanmean(fair_crps(c_lr, lr)),
                              "fair_crps": nanmean(fair_crps(ens, truth)),
                              "p9999": float(torch.quantile(ens.flatten().double()[:2_000_000], 0.9999)),
                              "max": float(ens.max()), "mean_ratio": float(ens.mean() / truth.mean().clamp_min(1e-6))}
    return row


def summarise(rows: list, default_steps: int) -> dict:
    """Medians over cases: the figures MODEL_CARD.md and docs/experiments.md quote."""
    if not rows:
        return {}
    med = lambda v: float(np.median([x for x in v if np.isfinite(x)])) if v else math.nan  # noqa: E731
    out = {}
    for key in [k for k in rows[0] if k.startswith("down_")]:
        r = [row[key] for row in rows]
        better = [min(a["bilinear_mean_mae"], a["bilinear_max_mae"]) for a in r]
        out[key] = {"fair_crps_over_better_bilinear": ratio_of_sums([a["fair_crps"] for a in r], better),
                    "median_fair_crps_ratio": med([a["fair_crps"] / b for a, b in zip(r, better)]),
                    "median_spread_skill": med([a["spread_skill"] for a in r]),
                    "median_psd_ratio": med([a["psd_ratio"] for a in r])}
    sat_mae = [row["sat_mae"] for row in rows]
    for key in [k for k in rows[0] if k.startswith("two_")]:
        r = [row[key] for row in rows]
        out[key] = {"coarse_mae_over_input": ratio_of_sums([a["coarse_mae"] for a in r], sat_mae),
                    "coarse_median_mae_over_input": ratio_of_sums([a["coarse_median_mae"] for a in r], sat_mae),
                    "coarse_fair_crps_over_input": ratio_of_sums([a["coarse_fair_crps"] for a in r], sat_mae),
                    "fair_crps_over_bilinear_input": ratio_of_sums([a["fair_crps"] for a in r],
                                                                   [row["sat_bilinear_mae"] for row in rows]),
                    "worst_p9999_over_truth_max": max(peak_ratio(a["p9999"], row["truth_max"])
                                                      for a, row in zip(r, rows)),
                    "worst_max_over_truth_max": max(peak_ratio(a["max"], row["truth_max"]) for a, row in zip(r, rows))}
    return out


def markdown(res: dict) -> str:
    """docs/experiments.md tables: the steps frontier, then per source at the default steps (sums of fair CRPS over
    sums of baseline MAE across the source's cases; medians for spread/skill and power)."""
    d = res["default_steps"]
    lines = ["| steps | fair CRPS / better bilinear MAE | median spread/skill | median 2-20 km power ratio |",
             "|---|---|---|---|"]
    for key, v in res["summary"].items():
        if key.startswith("down_"):
            lines.append(f"| {key[5:]} | {v['fair_crps_over_better_bilinear']:.3f} | {v['median_spread_skill']:.2f} | "
                         f"{v['median_psd_ratio']:.2f} |")
    lines += ["", "| source | cases | downscaling fair CRPS / better bilinear | spread/skill | power 2-20 km | "
              + " | ".join(f"{k[4:]}: coarse MAE / input, fair CRPS / bilinear(input), max p99.99 / truth max"
                           for k in res["rows"][0] if k.startswith("two_")) + " |",
              "|---|---|---|---|---|" + "---|" * sum(k.startswith("two_") for k in res["rows"][0])]
    for source in dict.fromkeys(r["source"] for r in res["rows"]):
        rows = [r for r in res["rows"] if r["source"] == source]
        one = summarise(rows, d)
        down = one[f"down_{d}"]
        cells = [f"{one[k]['coarse_mae_over_input']:.2f}, {one[k]['fair_crps_over_bilinear_input']:.2f}, "
                 f"{one[k]['worst_p9999_over_truth_max']:.2f}" for k in one if k.startswith("two_")]
        lines.append(f"| {source} | {len(rows)} | {down['fair_crps_over_better_bilinear']:.3f} | "
                     f"{down['median_spread_skill']:.2f} | {down['median_psd_ratio']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def case_table(res: dict, design: str) -> str:
    """One line per case at the default steps: the downscaling alone against the better bilinear, and the
    two-stage path with correction `design` (a two_* key without the prefix) on satellite-like input."""
    d = res["default_steps"]
    lines = [f"| source | frame | window (row, col) | truth max mm/h | downscaling fair CRPS / better bilinear | "
             f"spread/skill | power 2-20 km | {design}: coarse MAE / input | coarse fair CRPS / input | "
             "1 km fair CRPS / bilinear(input) | p99.99 / truth max | max / truth max |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        down, two, tmax = r[f"down_{d}"], r[f"two_{design}"], r["truth_max"]
        better = min(down["bilinear_mean_mae"], down["bilinear_max_mae"])
        lines.append(f"| {r['source']} | {r['frame']} | {r['row0']}, {r['col0']} | {r['truth_max']:.1f} | "
                     f"{down['fair_crps'] / better:.3f} | {down['spread_skill']:.2f} | {down['psd_ratio']:.2f} | "
                     f"{two['coarse_mae'] / r['sat_mae']:.2f} | {two['coarse_fair_crps'] / r['sat_mae']:.2f} | "
                     f"{two['fair_crps'] / r['sat_bilinear_mae']:.3f} | {peak_ratio(two['p9999'], tmax):.2f} | "
                     f"{peak_ratio(two['max'], tmax):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default="checkpoints/v2")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", default="out/heldout")
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--steps", default="4,6,8,12,18")
    ap.add_argument("--default-steps", type=int, default=8)
    ap.add_argument("--windows", type=int, default=None,
                    help="at most this many windows per frame (default: heldout.WINDOWS, 18 cases in all)")
    ap.add_argument("--corrections", default=None,
                    help="comma-separated correction checkpoint dirs under --ckpt (default: every correction*)")
    ap.add_argument("--sigma-max", type=float, default=None, help="the downscaling sampler's (default: its checkpoint's)")
    ap.add_argument("--rho", type=float, default=None, help="the downscaling sampler's schedule curvature")
    ap.add_argument("--noise-clip", type=float, default=None,
                    help="the downscaling sampler's starting-noise clip in standard deviations (SamplerConfig.noise_clip)")
    ap.add_argument("--perturb", choices=sorted(PERTURBATIONS), default=None,
                    help="score the two-stage path under a perturbed satellite-error model instead")
    ap.add_argument("--context", type=int, default=CONTEXT,
                    help=f"coarse pixels of satellite-like field around each window given to the correction stage "
                         f"(default {CONTEXT}; 0: the window alone, as `precipfast sample` on a cropped input)")
    args = ap.parse_args(argv)
    if args.context < 0:
        ap.error(f"--context must be >= 0 coarse pixels, got {args.context}")
    torch.set_num_threads(1)
    qmap = fit_quantile_map(args.data)
    steps = tuple(int(s) for s in args.steps.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deg, label = None, "heldout"
    if args.perturb:
        fitted = DegradationConfig(**read_config(Path(args.ckpt) / "downscaling")["data"]["degradation"])
        deg, label, steps = dataclasses.replace(fitted, **PERTURBATIONS[args.perturb]), f"heldout_{args.perturb}", \
            (args.default_steps,)
    res = run(Path(args.ckpt), args.data, members=args.members, steps_list=steps, default_steps=args.default_steps,
              qmap=qmap, degradation=deg,
              corrections=tuple(args.corrections.split(",")) if args.corrections else None,
              max_windows=args.windows, context=args.context,
              schedule={k: v for k, v in (("sigma_max", args.sigma_max), ("rho", args.rho),
                                          ("noise_clip", args.noise_clip)) if v is not None})
    (out / f"{label}.json").write_text(json.dumps(res, indent=1) + "\n")
    cases = "".join(f"\n\n{case_table(res, k[4:])}" for k in res["rows"][0] if k.startswith("two_")
                    and k not in ("two_none", "two_qmap")) if res["rows"] else ""
    (out / f"{label}.md").write_text(markdown(res) + cases + "\n")
    print(markdown(res))


# Satellite-error models perturbed from the fit (docs/degradation.md): stronger/weaker bias, larger
# displacement, more noise and misses; "fitted" is the fit itself, the reference of a perturbed run made
# with the same --windows/--members.
PERTURBATIONS = {"fitted": {}, "bias_low": {"bias_a": 0.8}, "bias_high": {"bias_a": 1.5}, "shift_3px": {"shift_px": 3.0},
                 "noisy": {"noise_std": 0.35, "p_miss": 0.5}}


if __name__ == "__main__":
    main()
