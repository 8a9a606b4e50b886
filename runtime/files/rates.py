"""What counts as a rain-rate field: at least one valid pixel, no negative rates, none above
MAX_RATE_MM_H. One check for files (io_h5.py) and for arrays handed to the Python API (pipeline.py)."""
from __future__ import annotations

import numpy as np

MAX_RATE_MM_H = 1000.0


def rate_problem(precip: np.ndarray, where: str = "") -> str | None:
    """None for a usable field (NaN = missing), else what is wrong and what was expected; `where` says
    which part was looked at (e.g. " inside bbox (...)")."""
    valid = precip[~np.isnan(precip)]
    if valid.size == 0:
        return f"is all missing (NaN or fill){where}, {precip.shape}; expected at least one valid pixel"
    lo, hi = float(valid.min()), float(valid.max())
    if lo < 0:
        return (f"has {np.count_nonzero(valid < 0)} negative values (min {lo:g} mm/h) that are not fill values; "
                f"expected rates >= 0 mm/h")
    if hi > MAX_RATE_MM_H:
        return f"has rates up to {hi:g} mm/h; expected <= {MAX_RATE_MM_H:g} mm/h (is the unit mm/h?)"
    return None
