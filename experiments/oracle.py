"""The information floor of the satellite-error model: how well any two-stage model could score on the
held-out cases, given what the satellite-like input can tell it.

The fitted error model (train/degrade.py, docs/degradation.md) shifts each frame by (dy, dx) ~ N(0, s^2) coarse
pixels, s = 2.0 (the term that brings the correlation with the truth to the literature's 0.5). Nothing in
the degraded field says which shift it got, so given the satellite-like field the truth sits at the
field's position minus a shift drawn from that same prior.

The *shift oracle* is the ensemble of that posterior for an observer who knows even more than the input
holds: the truth's exact 1 km field, free of bias, blur, noise and missed rain, but not its position.
Member k is the truth moved by (shift - d_k) coarse pixels, shift being the displacement the frame really
got and d_k ~ N(0, s^2) a fresh draw. Conditioning on more information never raises the expected value
of a proper score (Gneiting and Raftery 2007, JASA 102, section 2: the Bayes act under a finer
information set), so over the error model's draws no model given the satellite-like field alone can
expect a fair CRPS below the oracle's. The held-out suite reports it beside the model
(experiments/heldout_runtime.py); over several draws of the error model:

    python -m experiments.oracle --error-seeds 0,1,2,3,4,5,6,7 --out out/oracle
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from experiments.heldout import fitted_error_model
from experiments.heldout_runtime import run


def floor(data_dir, error_seeds=(0,), ckpt="checkpoints/v2", cases=None, max_windows: int | None = None,
          shift_px: float | None = None) -> dict:
    """{draw: the held-out suite's oracle ratios (experiments/heldout_runtime.py's "shift_oracle" summary: fair
    CRPS over the MAE of bilinear of the input, and coarse fair CRPS over the input's MAE) and its rows} for each
    draw of the error model, without sampling any model; shift_px replaces the fitted displacement (what the
    floor would be for a better or worse located satellite)."""
    deg, _ = fitted_error_model(ckpt)
    if shift_px is not None:
        deg = dataclasses.replace(deg, shift_px=float(shift_px))
    out = {}
    for e in error_seeds:
        res = run(data_dir, routes=(), ckpt=ckpt, cases=cases, max_windows=max_windows, error_seed=e,
                  degradation=deg)
        out[e] = {"rows": res["rows"], **res["summary"]["shift_oracle"]}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--ckpt", default="checkpoints/v2", help="the checkpoints holding the fitted satellite-error model")
    ap.add_argument("--error-seeds", default="0,1,2,3,4,5,6,7", help="draws of the error model (iter_cases' seed)")
    ap.add_argument("--shift-px", type=float, default=None,
                    help="replace the fitted displacement (coarse px rms per axis) in the error model")
    ap.add_argument("--out", default="out/oracle")
    args = ap.parse_args(argv)
    res = floor(args.data, tuple(int(s) for s in args.error_seeds.split(",")), args.ckpt, shift_px=args.shift_px)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    name = "oracle.json" if args.shift_px is None else f"oracle_shift{args.shift_px:g}.json"
    (Path(args.out) / name).write_text(json.dumps(res, indent=1) + "\n")
    for e, r in res.items():
        print(f"error draw {e}: shift oracle 1 km fair CRPS / bilinear(input) "
              f"{r['fair_crps_over_bilinear_input']:.3f}, "
              f"coarse fair CRPS / input MAE {r['coarse_fair_crps_over_input']:.3f}")
    for k in ("fair_crps_over_bilinear_input", "coarse_fair_crps_over_input"):
        v = [r[k] for r in res.values()]
        print(f"{k}: mean over {len(v)} draws {np.mean(v):.3f} (min {min(v):.3f}, max {max(v):.3f})")


if __name__ == "__main__":
    main()
