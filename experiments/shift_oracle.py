"""The shift oracle (experiments/oracle.py says what it bounds): the truth's exact 1 km field, placed where the
satellite-like field puts it minus a fresh draw of the displacement's prior (train/degrade.py draw_shift)."""
from __future__ import annotations

import math

import numpy as np
import torch

from experiments.heldout import frame_generator
from precipfast.config import DegradationConfig
from precipfast.train.degrade import draw_shift, shift_bilinear
from precipfast.verify.scores import fair_crps

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
    n, ly, lx = size // factor, y // factor, x // factor
    truth = torch.from_numpy(np.ascontiguousarray(frame[y:y + size, x:x + size]))
    lr = torch.from_numpy(np.ascontiguousarray(lr_frame[ly:ly + n, lx:lx + n]))
    placed = shift_oracle(frame, y, x, size, shift, shift_px, factor)
    placed_lr = shift_oracle(lr_frame, ly, lx, n, shift, shift_px, 1)
    return {"shift_oracle_fair_crps": float(fair_crps(placed, truth).mean()),
            "shift_oracle_coarse_fair_crps": float(fair_crps(placed_lr, lr).mean())}
