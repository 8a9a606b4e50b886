"""The information floor of the satellite-error model: how well any two-stage model could score on the
held-out cases, given what the satellite-like input can tell it.

The fitted error model (train/degrade.py, DEGRADATION.md) shifts each frame by (dy, dx) ~ N(0, s^2) coarse
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
import math
from pathlib import Path

import numpy as np
import torch

from precipfast.config import DegradationConfig
from precipfast.train.degrade import draw_shift, shift_bilinear
from experiments.heldout import frame_generator

MEMBERS = 32
SEED = 99


def frame_shift(deg: DegradationConfig, seed: int, t: int) -> torch.Tensor:
    """(dy, dx) coarse pixels the held-out frame t was displaced by in `heldout.iter_cases(seed=seed)`."""
    if not deg.enabled or deg.shift_px <= 0:
        return torch.zeros(2, dtype=torch.float64)
    return draw_shift(1, deg.shift_px, frame_generator(seed, t))[0]


def shift_oracle(frame: np.ndarray, y: int, x: int, size: int, shift: torch.Tensor, shift_px: float,
                 factor: int, members: int = MEMBERS, generator: torch.Generator | None = None) -> torch.Tensor:
    """(members, size, size) mm/h: the 1 km frame's size x size window at (y, x), moved by (shift - d_k)
    * factor fine pixels, d_k ~ N(0, shift_px^2) coarse pixels (NaN counts as dry; beyond the frame the
    edge is repeated, as the degradation does)."""
    gen = generator if generator is not None else torch.Generator().manual_seed(SEED)
    moves = (shift.to(torch.float64)[None] - draw_shift(members, shift_px, gen)) * factor
    m = int(math.ceil(float(moves.abs().max()))) + 2          # the margin every member reads from
    y0, x0 = max(0, y - m), max(0, x - m)
    big = torch.from_numpy(np.nan_to_num(np.ascontiguousarray(frame[y0:y + size + m, x0:x + size + m],
                                                              dtype=np.float64)))
    moved = shift_bilinear(big[None, None].expand(members, 1, *big.shape), moves)
    return moved[:, 0, y - y0:y - y0 + size, x - x0:x - x0 + size].float()


def case_scores(frame: np.ndarray, lr_frame: np.ndarray, y: int, x: int, size: int, shift: torch.Tensor,
                shift_px: float, factor: int) -> dict:
    """The oracle's fair CRPS on one held-out case: at 1 km against the frame's size x size window at
    (y, x), and at the coarse grid (stage 1's floor: the clean mean-pooled field placed the same way)."""
    from precipfast.verify.scores import crps_ensemble
    n, ly, lx = size // factor, y // factor, x // factor
    truth = torch.from_numpy(np.ascontiguousarray(frame[y:y + size, x:x + size]))
    lr = torch.from_numpy(np.ascontiguousarray(lr_frame[ly:ly + n, lx:lx + n]))
    placed = shift_oracle(frame, y, x, size, shift, shift_px, factor)
    placed_lr = shift_oracle(lr_frame, ly, lx, n, shift, shift_px, 1)
    return {"shift_oracle_crps": float(crps_ensemble(placed, truth, fair=True).mean()),
            "shift_oracle_coarse_crps": float(crps_ensemble(placed_lr, lr, fair=True).mean())}


def floor(data_dir, error_seeds=(0,), ckpt="checkpoints/v2", cases=None, max_windows: int | None = None,
          shift_px: float | None = None) -> dict:
    """{draw: the held-out suite's oracle ratios (experiments/heldout_runtime.py's "shift_oracle" summary: fair
    CRPS over the MAE of bilinear of the input, and coarse CRPS over the input's MAE) and its rows} for each
    draw of the error model, without sampling any model; shift_px replaces the fitted displacement (what the
    floor would be for a better or worse located satellite)."""
    from experiments.heldout import fitted_error_model
    from experiments.heldout_runtime import run
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
        print(f"error draw {e}: shift oracle 1 km CRPS / bilinear(input) {r['crps_over_bilinear_input']:.3f}, "
              f"coarse CRPS / input MAE {r['coarse_crps_over_input']:.3f}")
    for k in ("crps_over_bilinear_input", "coarse_crps_over_input"):
        v = [r[k] for r in res.values()]
        print(f"{k}: mean over {len(v)} draws {np.mean(v):.3f} (min {min(v):.3f}, max {max(v):.3f})")


if __name__ == "__main__":
    main()
