"""The amplitude dilemma (issue 33): how far a correction's ensemble mean can beat the satellite-like input
under every panel member (experiments/panel.py) when it cannot know which way the satellite errs.

The panel's members differ above all in the satellite's overall bias (the fit: 1.3x the truth's rain on the
held-out cases; `under`: 0.6x; `over`: 1.4x; `literature`: 0.8x). One field does not say which: a light
field seen 1.5x too high looks like a heavier one seen 0.65x too low. So a correction's amplitude is, at
best, a fixed multiple c of the input's. This scores, on the held-out cases (experiments/heldout.py) and
several draws of each error model, the *shape oracle*: the shift oracle's ensemble mean at the coarse grid
(experiments/oracle.py: the truth's exact field, placed where the input's displacement allows; no model of
the input alone can locate the rain better), rescaled to c times the input's total rain, for a grid of c.
Its coarse MAE over the input's is the floor of any correction that keeps c times the input's rain; the
same rescaling of a bundle's corrected mean (`--model`) shows where a real correction sits.

    python -m experiments.amplitude --error-seeds 0,1,2,3 --out out/amplitude [--model BUNDLE]

It prints, per panel member, the ratio at each c and the set of c where every member is at most 1.0 (never
worse) and the fit at most the issue's 0.8.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from experiments.heldout import SIZE, fitted_error_model, iter_cases
from experiments.heldout_runtime import case_field
from experiments.panel import PANEL, panel_model
from experiments.shift_oracle import frame_shift, shift_oracle
from precipfast.runtime.files.reader import CONTEXT_PX
from precipfast.runtime.sampling.pipeline import Pipeline
from precipfast.verify.scores import mae

SCALES = tuple(np.round(np.arange(0.5, 1.41, 0.05), 2).tolist())   # c: the correction's rain over the input's
BIASED = ("fit", "literature", "under", "over", "shift_3px", "shift_1px", "misses")   # clean has no input error


def rescaled_mae(mean: torch.Tensor, sat: torch.Tensor, truth: torch.Tensor, scales=SCALES) -> np.ndarray:
    """MAE against `truth` of `mean` rescaled to c times `sat`'s total rain, for each c in scales."""
    unit = mean * (sat.sum() / mean.sum().clamp_min(1e-9))
    return np.array([float((c * unit - truth).abs().mean()) for c in scales])


def sweep(data_dir, panel=BIASED, error_seeds=(0,), ckpt="checkpoints/v2", bundle=None, members: int = 8,
          cases=None, max_windows: int | None = None) -> dict:
    """{member: {"input_mae", "oracle": [MAE over the input's per c], "model": [...] (with bundle)}} summed over
    the cases and draws (ratios of sums)."""
    fitted, f = fitted_error_model(ckpt)
    pipe = Pipeline.from_bundle(bundle, stages=("correction",), device="cpu") if bundle else None
    out = {}
    for name in panel:
        deg = panel_model(name, fitted)
        if not deg.enabled:
            raise ValueError(f"panel member {name!r} has no satellite error: nothing to sweep")
        sums = {"input": 0.0, "oracle": np.zeros(len(SCALES)), "model": np.zeros(len(SCALES))}
        for e in error_seeds:
            for _, t, y, x, _, lr_frame, sat_frame in iter_cases(data_dir, f, deg, cases, max_windows, seed=e):
                n, ly, lx = SIZE // f, y // f, x // f
                truth = torch.from_numpy(np.ascontiguousarray(lr_frame[ly:ly + n, lx:lx + n]))
                sat = torch.from_numpy(np.ascontiguousarray(sat_frame[ly:ly + n, lx:lx + n]))
                sums["input"] += mae(sat, truth)
                placed = shift_oracle(lr_frame, ly, lx, n, frame_shift(deg, e, t), deg.shift_px, 1)
                sums["oracle"] += rescaled_mae(placed.mean(0).double(), sat.double(), truth.double())
                if pipe is not None:
                    res = pipe.sample(case_field(sat_frame, ly, lx, n, CONTEXT_PX), members=members, seed=0)
                    corr = torch.from_numpy(res["corrected_lr"][0]).double().mean(0)
                    sums["model"] += rescaled_mae(corr, sat.double(), truth.double())
        out[name] = {"input_mae": sums["input"], "oracle": (sums["oracle"] / sums["input"]).round(4).tolist()}
        if pipe is not None:
            out[name]["model"] = (sums["model"] / sums["input"]).round(4).tolist()
    return {"scales": list(SCALES), "error_seeds": list(error_seeds), "members": out}


def feasible(res: dict, key: str = "oracle", fit_max: float = 0.8) -> list[float]:
    """The c where every panel member's ratio is at most 1.0 and the fit's at most fit_max."""
    ok = []
    for i, c in enumerate(res["scales"]):
        r = {m: v[key][i] for m, v in res["members"].items()}
        if all(x <= 1.0 for x in r.values()) and r.get("fit", 0.0) <= fit_max:
            ok.append(c)
    return ok


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--ckpt", default="checkpoints/v2", help="the checkpoints holding the fitted satellite-error model")
    ap.add_argument("--panel", default=",".join(BIASED))
    ap.add_argument("--error-seeds", default="0,1,2,3")
    ap.add_argument("--model", default=None, help="a bundle whose corrected mean is rescaled the same way")
    ap.add_argument("--out", default="out/amplitude")
    args = ap.parse_args(argv)
    panel = args.panel.split(",")
    if set(panel) - set(PANEL):
        ap.error(f"--panel must be a comma list of {', '.join(PANEL)}, got {args.panel!r}")
    torch.set_num_threads(2)
    res = sweep(args.data, panel, tuple(int(s) for s in args.error_seeds.split(",")), args.ckpt, args.model)
    res["feasible_oracle"] = feasible(res)
    if args.model:
        res["feasible_model"] = feasible(res, "model")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "amplitude.json").write_text(json.dumps(res, indent=1) + "\n")
    print("c: " + " ".join(f"{c:5.2f}" for c in res["scales"]))
    for name, v in res["members"].items():
        for key in ("oracle", "model"):
            if key in v:
                print(f"{name} {key}: " + " ".join(f"{x:5.3f}" for x in v[key]))
    print("c where every member <= 1.0 and the fit <= 0.8: oracle", res["feasible_oracle"],
          *(("model", res["feasible_model"]) if args.model else ()))


if __name__ == "__main__":
    main()
