"""The panel of satellite-error models a correction is judged under (issue 33): nobody knows which way IMERG errs
on a given day and place, so a correction must not make the field worse under any plausible error, and must
leave a satellite that is right nearly alone. Each member changes the fitted model (train/degrade.py,
docs/degradation.md) where the literature says IMERG may differ from it.

    python -m experiments.heldout_runtime --panel fit,literature,under,over,clean --routes shipped
"""
from __future__ import annotations

import dataclasses

from precipfast.config import DegradationConfig

# name: (changes to the fitted model, or None for a satellite without error; why it is in the panel)
PANEL = {
    "fit": ({}, "the model fitted to the real IMERG fields in imerg_samples.h5 (docs/degradation.md)"),
    "literature": ({"bias_a": 1.3, "gamma_exp": 0.8},
                   "retrievals saturate in convective cores: light rain over, heavy rain under (gamma < 1; "
                   "Tan et al. 2016, J. Hydrometeor. 17), instead of the fit's overestimate growing with the rate"),
    "under": ({"bias_a": 0.65, "gamma_exp": 1.0},
              "a satellite 35 % low, as IMERG is in some seasons and regions (O et al. 2017, HESS 21)"),
    "over": ({"bias_a": 1.5, "gamma_exp": 1.0}, "a satellite 50 % high, the other extreme"),
    "shift_3px": ({"shift_px": 3.0}, "a large displacement: 30 km rms per axis (IR parallax, timing)"),
    "shift_1px": ({"shift_px": 1.0}, "a small displacement: 10 km rms per axis (a PMW overpass in the half hour)"),
    "misses": ({"p_miss": 0.8, "detect_mm_h": 1.0},
               "heavy misses of light rain: PMW over land and IR miss warm and light rain"),
    "clean": (None, "a satellite that is right: the correction must then leave the field nearly alone"),
}


def panel_model(name: str, fitted: DegradationConfig) -> DegradationConfig:
    """The error model of panel member `name`, built from the fitted one."""
    if name not in PANEL:
        raise ValueError(f"unknown panel member {name!r}; the panel is {', '.join(PANEL)}")
    changes = PANEL[name][0]
    return dataclasses.replace(fitted, enabled=False) if changes is None else dataclasses.replace(fitted, **changes)
