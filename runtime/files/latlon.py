"""Regular lat/lon grids of pixel centres: north-up orientation, spacing, pixel size and bbox crops.

Orientation is a permutation of file indices (`order`), so readers can fetch a slab in file order and
reorder it once: lat descending (row 0 = north), lon ascending in [-180, 180) with 0..360 grids rolled.
Every check reports through `fail(message)`, the caller's error raiser, so messages name the file.
"""
from __future__ import annotations

import numpy as np

SPACING_RTOL = 1e-3   # allowed deviation of one coordinate step from the mean step, in pixels
SQUARE_RTOL = 1e-2    # lat and lon steps must agree to 1 % (the model's pixels are square)
BBOX_EPS_DEG = 1e-5   # float32 coordinates carry ~1e-5 deg of rounding; a centre on the edge is inside


def lat_order(lat, fail):
    """File indices that put lat descending (north first), and the sorted lat."""
    d = np.diff(lat)
    if (d < 0).all():
        order = np.arange(lat.size)
    elif (d > 0).all():
        order = np.arange(lat.size)[::-1]
    else:
        fail(f"lat is not strictly monotonic ({lat.size} values); expected a regular grid")
    return order, lat[order]


def lon_order(lon, fail):
    """File indices that put lon ascending in [-180, 180) (rolling 0..360 grids), and the sorted lon."""
    w = (lon + 180.0) % 360.0 - 180.0 if ((lon < -180) | (lon >= 180)).any() else lon
    idx = np.arange(lon.size)
    rolled = np.roll(idx, -int(np.argmin(w)))
    for order in (idx, idx[::-1], rolled):
        if (np.diff(w[order]) > 0).all():
            break
    else:
        fail(f"lon is not strictly monotonic ({lon.size} values); expected a regular grid")
    if order is rolled and _spacing(w[order]) is None:
        fail(f"the grid crosses the antimeridian (lon {lon.min():g}..{lon.max():g}); expected a grid "
             f"within [-180, 180): crop it with bbox")
    return order, w[order]


def _spacing(c):
    """Mean step of a regular axis, or None if some step deviates by more than SPACING_RTOL of a pixel."""
    step = abs(c[-1] - c[0]) / (c.size - 1)
    # float32 coordinates (IMERG) carry rounding of ~1 ulp: never demand better than that.
    tol = max(SPACING_RTOL * step, 2 * float(np.spacing(np.float32(np.abs(c).max()))))
    return step if np.abs(np.abs(np.diff(c)) - step).max() <= tol else None


def pixel_deg(lat, lon, fail) -> float:
    """Grid spacing in degrees of north-up coordinates, checked regular and square."""
    steps = {}
    for name, c in (("lat", lat), ("lon", lon)):
        if c.size > 1:
            steps[name] = _spacing(c)
            if steps[name] is None:
                d = np.abs(np.diff(c))
                i = int(np.argmax(np.abs(d - np.median(d))))
                fail(f"{name} spacing is not uniform: step {d[i]:.6g} deg between {name}[{i}] and {name}[{i + 1}], "
                     f"median {np.median(d):.6g} deg; expected a regular grid (tolerance {SPACING_RTOL:g} pixel)")
    if not steps:
        fail("the grid is a single pixel; expected at least 2 pixels along lat or lon to know the pixel size")
    if len(steps) == 2 and abs(steps["lat"] - steps["lon"]) > SQUARE_RTOL * steps["lon"]:
        fail(f"pixels are not square: lat step {steps['lat']:.6g} deg, lon step {steps['lon']:.6g} deg; "
             f"expected equal steps")
    # 5 significant digits: float32 coordinates put ~1e-6 of noise on the mean step (0.0999997 -> 0.1)
    return float(f"{np.mean(list(steps.values())):.5g}")


def crop(rows, cols, lat, lon, box, fail):
    """Keep the rows/cols (file indices) and coordinates whose pixel centres fall inside box (S, N, W, E)."""
    s, n, w, e = box
    r = (lat >= s - BBOX_EPS_DEG) & (lat <= n + BBOX_EPS_DEG)
    c = (lon >= w - BBOX_EPS_DEG) & (lon <= e + BBOX_EPS_DEG)
    if not r.any() or not c.any():
        fail(f"bbox (S {s:g}, N {n:g}, W {w:g}, E {e:g}) contains no pixel centre; the grid spans lat "
             f"{lat.min():.4f}..{lat.max():.4f}, lon {lon.min():.4f}..{lon.max():.4f}")
    return rows[r], cols[c], lat[r], lon[c]
