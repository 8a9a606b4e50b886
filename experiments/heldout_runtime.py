"""The held-out two-stage cases through the runtime's own route (`Pipeline.sample` on an InputField, as
`precipfast sample --bbox` runs them), for the shipped bundle and for it run the way 0.3.1 was: the
correction stage in one tile and without the file's pixels around the crop (docs/experiments.md, "The
runtime's route").

    python -m experiments.heldout_runtime --out out/heldout_runtime [--members 8] [--seeds 0,1]
        [--error-seeds 0,1,2,3,4,5,6,7] [--routes shipped] [--model B] [--panel fit,under,clean]

The cases, their satellite-like input (train/degrade.py on the whole coarse frame, the fitted model,
fixed seed) and the scores are experiments/heldout.py's: the 1 km ensemble's fair CRPS over the MAE of bilinear
of the input and over that of bilinear of the clean mean-pooled radar (the strongest simple baseline),
the corrected coarse field's fair CRPS over the input's MAE, and the members' 99.99th
percentile and maximum over the truth's maximum; beside them the shift oracle's fair CRPS (experiments/oracle.py), the
floor no model of the satellite-like input can expect to beat. experiments/heldout.py samples the checkpoints with its own
loop; this samples the bundle with the runtime's noise, tiling and guard.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from experiments.heldout import SIZE, fitted_error_model, iter_cases
from experiments.panel import PANEL, panel_model
from experiments.shift_oracle import case_scores, frame_shift
from precipfast.config import DegradationConfig
from precipfast.noise import Origin
from precipfast.runtime.engines.bundle import default_bundle_path, open_bundle
from precipfast.runtime.files.reader import CONTEXT_PX, Context, InputField
from precipfast.runtime.sampling.dry import within_reach
from precipfast.runtime.sampling.pipeline import Pipeline
from precipfast.verify.baselines import bilinear
from precipfast.verify.scores import fair_crps, mae, peak_ratio, rank_histogram, ratio_of_sums

ROUTES = ("shipped", "one_tile_no_context", "no_correction")
# shipped: the bundle as `precipfast sample --bbox` runs it; one_tile_no_context: 0.3.1's route (the correction in
# one tile, without the frame's pixels around the crop); no_correction: the downscaling stage on the input alone


def case_field(sat_frame: np.ndarray, ly: int, lx: int, n: int, context: int) -> InputField:
    """The n x n coarse window at (ly, lx) of a satellite-like frame as the reader gives a --bbox crop:
    with up to `context` pixels of the frame around it. Pixel centres on the 0.1 deg grid from (60N, 130W)
    key the noise (any fixed placement would do)."""
    top, left = min(context, ly), min(context, lx)
    bottom, right = min(context, sat_frame.shape[0] - ly - n), min(context, sat_frame.shape[1] - lx - n)
    wide = np.ascontiguousarray(sat_frame[ly - top:ly + n + bottom, lx - left:lx + n + right])[None]
    ctx = Context(wide, top, bottom, left, right) if context else None
    return InputField(precip=np.ascontiguousarray(sat_frame[ly:ly + n, lx:lx + n])[None],
                      lat=60.0 - 0.1 * (ly + np.arange(n)) - 0.05, lon=-130.0 + 0.1 * (lx + np.arange(n)) + 0.05,
                      times=None, aux={}, source_format="heldout", variable="sat", pixel_deg=0.1, sha256="",
                      context=ctx)


def one_tile_bundle(bundle: Path, into: Path) -> Path:
    """A copy of `bundle` whose correction stage has no tile of its own (so one tile up to --tile)."""
    out = into / "one_tile"
    shutil.copytree(bundle, out)
    m = json.loads((out / "manifest.json").read_text())
    m["stages"]["correction"].pop("tile", None)
    (out / "manifest.json").write_text(json.dumps(m, indent=2))
    return out


FAR_PX = 2   # coarse px (20 km): rain farther than this from any input rain counts as far (issue 33)


def score_coarse(corr: torch.Tensor, lr_t: torch.Tensor) -> dict:
    """The corrected coarse members (E, n, n) against the clean mean-pooled truth (n, n)."""
    return {"coarse_fair_crps": float(fair_crps(corr, lr_t).mean()),
            "coarse_mean_mae": mae(corr.mean(0), lr_t),                # the corrected field's ensemble mean
            "coarse_rain": float(corr.mean(0).sum()), "coarse_outside": outside_range(corr, lr_t),
            "coarse_rank_hist": rank_histogram(corr, lr_t).tolist(),   # the truth's rank, ties split at random
            "coarse_max": float(corr.max())}


def score(res: dict, truth: torch.Tensor | None, lr: np.ndarray, sat: np.ndarray | None = None) -> dict:
    """truth None: the correction stage alone was run (coarse scores only)."""
    corr, lr_t = torch.from_numpy(res["corrected_lr"][0]), torch.from_numpy(lr)
    if truth is None:
        return score_coarse(corr, lr_t)
    ens = torch.from_numpy(res["precip"][0])
    far = {}
    if sat is not None:   # the members' rain more than FAR_PX coarse px from any rain of the input crop
        near = within_reach(torch.from_numpy(np.nan_to_num(sat))[None, None], FAR_PX)[0, 0].numpy()
        f = ens.shape[-1] // sat.shape[-1]
        far_fine = torch.from_numpy(~near.repeat(f, 0).repeat(f, 1))
        far = {"far_rain": float(ens[:, far_fine].sum() / ens.shape[0]), "far_max": float(ens[:, far_fine].max())
               if far_fine.any() else 0.0}
    return {"fair_crps": float(fair_crps(ens, truth).mean()), **score_coarse(corr, lr_t),
            "rank_hist": rank_histogram(ens, truth).tolist(),
            "rain": float(ens.mean(0).sum()),                          # the ensemble's total rain (mean member)
            "outside": outside_range(ens, truth), **far,
            "p9999": float(torch.quantile(ens.flatten().double(), 0.9999)), "max": float(ens.max())}


def outside_range(members: torch.Tensor, truth: torch.Tensor) -> float:
    """Share of the truth's pixels outside the members' range (a calibrated ensemble of E: 2 / (E + 1));
    ties at zero rain count as inside."""
    lo, hi = members.min(0).values, members.max(0).values
    return float(((truth < lo) | (truth > hi)).double().mean())


def _bundle_and_errors(bundle, ckpt):
    """(the opened bundle, its scale factor, the fitted satellite-error model in ckpt's config)."""
    b = open_bundle(bundle or default_bundle_path())
    return b, int(b.manifest["scale_factor"]), fitted_error_model(ckpt)[0]


def _pipeline(path: Path, route: str, coarse_only: bool, tmp: Path) -> Pipeline:
    if route == "one_tile_no_context":
        path = one_tile_bundle(path, tmp)
    stages = ("downscaling",) if route == "no_correction" else ("correction",) if coarse_only else None
    return Pipeline.from_bundle(path, device="cpu", **({"stages": stages} if stages else {}))


def run(data_dir, *, members: int = 8, seeds=(0,), bundle=None, ckpt="checkpoints/v2", cases=None,
        max_windows: int | None = None, routes=ROUTES, error_seed: int = 0,
        degradation: DegradationConfig | None = None, coarse_only: bool = False) -> dict:
    """ckpt: the training checkpoints whose config holds the fitted satellite-error model; error_seed: which
    draw of that model degrades the frames (iter_cases; one displacement a frame, so 8 frames are only 8
    draws of the largest error term); degradation: another error model instead; routes=(): the baselines
    and the oracle alone (experiments/oracle.py floor); coarse_only: the correction stage alone, coarse scores
    only (a tenth of the time: many error draws), no_correction routes left out."""
    b, f, deg = _bundle_and_errors(bundle, ckpt)
    deg = degradation or deg
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pipes = {r: _pipeline(b.path, r, coarse_only, Path(tmp)) for r in routes
                 if not (coarse_only and r == "no_correction")}
        for source, t, y, x, frame, lr_frame, sat_frame in iter_cases(data_dir, f, deg, cases, max_windows, seed=error_seed):
            n, ly, lx = SIZE // f, y // f, x // f
            truth = torch.from_numpy(np.ascontiguousarray(frame[y:y + SIZE, x:x + SIZE]))
            lr, sat = lr_frame[ly:ly + n, lx:lx + n], sat_frame[ly:ly + n, lx:lx + n]
            row = {"source": source, "frame": t, "row0": y, "col0": x, "truth_max": float(truth.max()),
                   "truth_rain": float(truth.sum()), "coarse_truth_rain": float(np.nansum(lr)),
                   "coarse_truth_max": float(np.nanmax(lr)), "sat_rain": float(np.nansum(sat)),
                   "sat_mae": mae(torch.from_numpy(sat), torch.from_numpy(lr)),
                   "sat_bilinear_mae": mae(bilinear(sat, f), truth),
                   # the strongest simple baseline: bilinear of the clean mean-pooled radar
                   "clean_bilinear_mae": mae(bilinear(lr, f), truth)}
            # the information floor (experiments/oracle.py): the truth itself, placed as the input's shift allows
            shift = frame_shift(deg, error_seed, t)
            row["shift"] = shift.tolist()
            row.update(case_scores(frame, lr_frame, y, x, SIZE, shift, deg.shift_px, f))
            for route, pipe in pipes.items():
                fld = case_field(sat_frame, ly, lx, n, CONTEXT_PX if route == "shipped" else 0)
                for s in seeds:
                    res = pipe.sample(fld, members=members, seed=s)   # no_correction: corrected_lr is the input
                    row[f"{route}_{s}"] = score(res, None if coarse_only else truth, lr, sat)
            print(f"heldout_runtime: {source} frame {t} window ({y}, {x}), case {len(rows) + 1}",
                  file=sys.stderr, flush=True)
            rows.append(row)
    return {"rows": rows, "summary": summarise(rows, seeds, tuple(pipes)), "coarse_only": coarse_only,
            "members": members, "seeds": list(seeds), "error_seed": error_seed, "model_version": b.manifest.get("model_version")}


# The correction stage's domain: coarse pixels of the frame around the crop, and the tile it runs in
# (None: one tile up to 128 px, 0.3.1's route).
DOMAINS = {"crop_one_tile": (0, None), "crop_context8_tiled32": (8, (32, 8)),
           "context54_one_tile": (54, None), "context54_tiled32": (54, (32, 8))}


def correction_domains(data_dir, *, members: int = 32, seed: int = 5, bundle=None, ckpt="checkpoints/v2",
                       cases=None) -> dict:
    """The correction stage alone on each case's crop run in each of DOMAINS: its coarse fair CRPS over
    the input's MAE, overall and by ring (0 = the crop's outermost coarse pixels). Noise is keyed by
    global pixel, so every domain draws the same latents at the same pixel."""
    b, f, deg = _bundle_and_errors(bundle, ckpt)
    n = SIZE // f
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    ring = np.minimum(np.minimum(ii, jj), np.minimum(n - 1 - ii, n - 1 - jj))
    sums = {k: np.zeros((2, n // 2)) for k in DOMAINS}
    sat_sums = np.zeros((2, n // 2))
    with tempfile.TemporaryDirectory() as tmp:
        # the shipped bundle tiles its correction at (32, 8) itself; None: its copy without, in one 128 px tile
        pipes = {(32, 8): Pipeline.from_bundle(b.path, stages=("correction",), device="cpu"),
                 None: Pipeline.from_bundle(one_tile_bundle(b.path, Path(tmp)), stages=("correction",), device="cpu")}
        assert pipes[(32, 8)].stages["correction"].tiling.tile == 32, "the bundle's correction is not tiled at 32 px"
        for source, t, y, x, _, lr_frame, sat_frame in iter_cases(data_dir, f, deg, cases):
            ly, lx = y // f, x // f
            lr = torch.from_numpy(lr_frame[ly:ly + n, lx:lx + n].copy())
            np.add.at(sat_sums, (0, ring), np.abs(sat_frame[ly:ly + n, lx:lx + n] - lr.numpy()))
            np.add.at(sat_sums, (1, ring), 1)
            for name, (c, tile) in DOMAINS.items():
                y0, x0 = max(0, ly - c), max(0, lx - c)
                wide = np.ascontiguousarray(sat_frame[y0:ly + n + c, x0:lx + n + c])
                out = pipes[tile].sample_field(wide, members, None, seed, origin=Origin(y0, x0, sat_frame.shape[1]))
                ens = torch.from_numpy(out["corrected_lr"][:, ly - y0:ly - y0 + n, lx - x0:lx - x0 + n])
                np.add.at(sums[name], (0, ring), fair_crps(ens, lr).numpy())
                np.add.at(sums[name], (1, ring), 1)
            print(f"heldout_runtime: correction domains, {source} frame {t} window ({y}, {x})", file=sys.stderr,
                  flush=True)
    sat_ring = sat_sums[0] / sat_sums[1]
    return {name: {"coarse_fair_crps_over_input": float(v[0].sum() / sat_sums[0].sum()),
                   "by_ring": (v[0] / v[1] / sat_ring).round(4).tolist()} for name, v in sums.items()}


def summarise(rows: list, seeds, routes=ROUTES) -> dict:
    out = {}
    col = lambda key: [r[key] for r in rows]  # noqa: E731
    if rows and "shift_oracle_fair_crps" in rows[0]:
        out["shift_oracle"] = {
            "fair_crps_over_bilinear_input": ratio_of_sums(col("shift_oracle_fair_crps"), col("sat_bilinear_mae")),
            "fair_crps_over_bilinear_clean": ratio_of_sums(col("shift_oracle_fair_crps"), col("clean_bilinear_mae")),
            "coarse_fair_crps_over_input": ratio_of_sums(col("shift_oracle_coarse_fair_crps"), col("sat_mae"))}
    if rows and "sat_rain" in rows[0]:
        out["input"] = {"coarse_rain_over_truth": ratio_of_sums(col("sat_rain"), col("coarse_truth_rain"))}
    for route in routes:
        for s in seeds:
            k = f"{route}_{s}"
            got = lambda m: [r[k][m] for r in rows]  # noqa: E731
            out[k] = {"coarse_fair_crps_over_input": ratio_of_sums(got("coarse_fair_crps"), col("sat_mae")),
                      "coarse_mean_mae_over_input": ratio_of_sums(got("coarse_mean_mae"), col("sat_mae")),
                      "coarse_rain_over_truth": ratio_of_sums(got("coarse_rain"), col("coarse_truth_rain")),
                      "coarse_outside_range": sum(got("coarse_outside")) / len(rows),
                      "coarse_rank_histogram": _shares(got("coarse_rank_hist")),
                      "worst_coarse_max_over_truth_max": max(peak_ratio(r[k]["coarse_max"], r["coarse_truth_max"])
                                                             for r in rows)}
            if "fair_crps" not in rows[0][k]:
                continue
            fair = got("fair_crps")
            out[k] |= {"fair_crps_over_bilinear_input": ratio_of_sums(fair, col("sat_bilinear_mae")),
                      "fair_crps_over_bilinear_clean": ratio_of_sums(fair, col("clean_bilinear_mae")),
                      "rain_over_truth": ratio_of_sums([r[k]["rain"] for r in rows], col("truth_rain")),
                      "outside_range": sum(r[k]["outside"] for r in rows) / len(rows),
                      "rank_histogram": _shares(got("rank_hist")),
                      "far_rain_share": ratio_of_sums([r[k]["far_rain"] for r in rows], [r[k]["rain"] for r in rows]),
                      "worst_far_max": max(r[k]["far_max"] for r in rows),
                      "worst_p9999_over_truth_max": max(peak_ratio(r[k]["p9999"], r["truth_max"]) for r in rows),
                      "worst_max_over_truth_max": max(peak_ratio(r[k]["max"], r["truth_max"]) for r in rows)}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--ckpt", default="checkpoints/v2", help="the checkpoints holding the fitted satellite-error model")
    ap.add_argument("--out", default="out/heldout_runtime")
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--windows", type=int, default=None, help="at most this many windows per frame")
    ap.add_argument("--routes", default=",".join(ROUTES), help=f"comma list of {', '.join(ROUTES)}")
    ap.add_argument("--error-seeds", default="0",
                    help="comma list of draws of the satellite-error model degrading the frames, each scored")
    ap.add_argument("--model", default=None, help="a bundle to score instead of the shipped one")
    ap.add_argument("--panel", default="fit", help=f"comma list of error models to degrade the frames with, each "
                                                   f"scored (experiments/panel.py: {', '.join(PANEL)})")
    ap.add_argument("--coarse-only", action="store_true",
                    help="run the correction stage alone and score the coarse field only (many error draws fast)")
    ap.add_argument("--bundle", help=argparse.SUPPRESS)   # the old name, refused with a pointer
    ap.add_argument("--correction-domains", action="store_true",
                    help="score the correction stage alone in each of DOMAINS instead (32 members, each seed)")
    args = ap.parse_args(argv)
    if args.bundle is not None:
        ap.error("--bundle is now --model (the name every command uses for a bundle)")
    torch.set_num_threads(2)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    if args.correction_domains:
        res = {s: correction_domains(args.data, seed=s, ckpt=args.ckpt) for s in seeds}
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "correction_domains.json").write_text(json.dumps(res, indent=1) + "\n")
        for s, r in res.items():
            for k, v in r.items():
                print(f"seed {s} {k}: coarse fair CRPS / input {v['coarse_fair_crps_over_input']:.3f}, "
                      f"ring 0 {v['by_ring'][0]:.3f}")
        return
    routes = tuple(args.routes.split(","))
    if not routes or set(routes) - set(ROUTES):
        ap.error(f"--routes must be a comma list of {', '.join(ROUTES)}, got {args.routes!r}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    panel = args.panel.split(",")
    if set(panel) - set(PANEL):
        ap.error(f"--panel must be a comma list of {', '.join(PANEL)}, got {args.panel!r}")
    fitted = fitted_error_model(args.ckpt)[0]
    for name in panel:
        draws = {}
        for e in (int(v) for v in args.error_seeds.split(",")):
            res = run(args.data, members=args.members, seeds=seeds, bundle=args.model, ckpt=args.ckpt,
                      max_windows=args.windows, routes=routes, error_seed=e, degradation=panel_model(name, fitted),
                      coarse_only=args.coarse_only)
            stem = ("heldout_runtime" + ("_coarse" if args.coarse_only else "") + ("" if name == "fit" else f"_{name}")
                    + ("" if not e else f"_e{e}"))
            (out / f"{stem}.json").write_text(json.dumps({"panel": name, **res}, indent=1) + "\n")
            draws[e] = res["summary"]
            for k, v in res["summary"].items():
                print(f"{name}, error draw {e}:", k, _line(v), flush=True)
        if len(draws) > 1:
            for k, v in over_draws(draws).items():
                print(f"{name}, over {len(draws)} draws:", k, _line(v))


def _line(metrics: dict) -> str:
    return " ".join(f"{m} " + (" ".join(f"{y:.3f}" for y in x) if isinstance(x, list) else f"{x:.3f}")
                    for m, x in metrics.items())


def _shares(hists: list) -> list:
    """Summed rank histograms as shares of their pixels (a calibrated ensemble: 1 / (E + 1) each)."""
    total = np.sum(hists, axis=0)
    return (total / total.sum()).round(4).tolist()


def over_draws(draws: dict) -> dict:
    """Per summary row, over the error draws {draw: summary}: the mean of each skill ratio, the largest of
    each worst-case peak ratio."""
    rows = list(draws.values())
    out = {}
    for k, metrics in rows[0].items():
        out[k] = {}
        for m in metrics:
            xs = [d[k][m] for d in rows]
            out[k][m] = (max(xs) if m.startswith("worst") else np.mean(xs, axis=0).round(4).tolist()
                         if isinstance(xs[0], list) else sum(xs) / len(xs))
    return out


if __name__ == "__main__":
    main()
