"""Overlapping tiles blended with smooth weights (MultiDiffusion, Bar-Tal et al. 2023, Eq. 3-5).

A domain larger than a tile is cut into overlapping tiles. At every sampling step each tile's denoised
estimate is weighted by a taper and the estimates are averaged pixel by pixel:

    D(x)[p] = sum_i w_i[p] D_i(x)[p] / sum_i w_i[p]

which is MultiDiffusion's closed-form least-squares fusion with per-pixel weights. The taper is a
raised cosine (half a Hann window) across the overlap on every side that meets another tile, and 1 on
the domain border, so the normalised weights change smoothly and no seam appears. `TileBlender` keeps
only the full-domain numerator (E, C, H, W) and a (H, W) denominator: memory is the output size.

`blend_reference` is the plain twin (all tiles at once, one weighted mean) the blender is tested against.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class Tile:
    """A global pixel window [row0:row1, col0:col1] (half-open, like a slice)."""

    row0: int
    row1: int
    col0: int
    col1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.row1 - self.row0, self.col1 - self.col0


def _pair(name: str, value) -> tuple[int, int]:
    """An int or a (rows, cols) pair as a pair of ints."""
    pair = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) \
        else ()
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{name} must be an int or a (rows, cols) pair of ints, got {value!r}")
    return pair


def _starts(n: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one axis: stride tile - overlap, the last tile flush with the far border."""
    if n <= tile:
        return [0]
    starts = [0]
    while starts[-1] + tile < n:
        starts.append(min(starts[-1] + tile - overlap, n - tile))
    return starts


def plan_tiles(height: int, width: int, tile, overlap) -> list[Tile]:
    """Overlapping tiles covering a (height, width) domain exactly, row-major.

    tile, overlap: ints or (rows, cols) pairs. Tiles are `tile` pixels (or the whole axis when it is
    shorter), advance by tile - overlap, and the last one along each axis is shifted back to end on the
    border, so neighbours overlap by at least `overlap` and no tile leaves the domain."""
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    (th, tw), (oh, ow) = _pair("tile", tile), _pair("overlap", overlap)
    for axis, t, o in (("rows", th, oh), ("cols", tw, ow)):
        if t < 1:
            raise ValueError(f"tile ({axis}) must be >= 1, got {t}")
        if not 0 <= o < t:
            raise ValueError(f"overlap ({axis}) must satisfy 0 <= overlap < tile = {t}, got {o}")
    th, tw = min(th, height), min(tw, width)
    return [Tile(r, r + th, c, c + tw)
            for r in _starts(height, th, oh) for c in _starts(width, tw, ow)]


def balanced_tile(length: int, tile: int, overlap: int, multiple: int = 8) -> int:
    """The smallest tile edge (a multiple of `multiple`, at most `tile`) that covers `length` with as
    many tiles as `tile` would need. A 300 px axis with tile 256 needs two tiles either way, but two
    168 px tiles do 35 % less work than two 256 px ones overlapping by 212 px."""
    if length <= tile:
        return length
    n = math.ceil((length - overlap) / (tile - overlap))
    edge = math.ceil((length + (n - 1) * overlap) / n)
    return min(tile, max(overlap + 1, -(-edge // multiple) * multiple))


def _taper(start: int, stop: int, n: int, ramp: int, dtype, device) -> torch.Tensor:
    """1-D weights of [start, stop) in [0, n): raised-cosine ramps of `ramp` pixels on interior sides.

    Ramp sample j (0 = outermost) is (1 - cos(pi (j + 1/2) / ramp)) / 2: strictly inside (0, 1), and
    the ramps of two neighbours sharing the same `ramp` pixels sum to exactly 1."""
    length = stop - start
    w = torch.ones(length, dtype=torch.float64, device=device)
    ramp = min(ramp, length)
    if ramp > 0:
        j = torch.arange(ramp, dtype=torch.float64, device=device)
        rise = 0.5 - 0.5 * torch.cos(math.pi * (j + 0.5) / ramp)
        if start > 0:
            w[:ramp] *= rise
        if stop < n:
            w[length - ramp:] *= rise.flip(0)
    return w.to(dtype)


def blend_weights(tile: Tile, height: int, width: int, overlap, *, dtype=torch.float32,
                  device=None) -> torch.Tensor:
    """Separable taper (h, w) of a tile: raised-cosine ramps across `overlap` on sides that touch
    another tile, 1 along the domain border and inside; strictly positive everywhere."""
    _check_tile(tile, height, width)
    oh, ow = _pair("overlap", overlap)
    if oh < 0 or ow < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap!r}")
    wy = _taper(tile.row0, tile.row1, height, oh, dtype, device)
    wx = _taper(tile.col0, tile.col1, width, ow, dtype, device)
    return wy[:, None] * wx[None, :]


def _check_tile(tile: Tile, height: int, width: int) -> None:
    if not (0 <= tile.row0 < tile.row1 <= height and 0 <= tile.col0 < tile.col1 <= width):
        raise ValueError(f"{tile} must be a non-empty window inside the domain (0..{height}, 0..{width})")


def crop(field: torch.Tensor, tile: Tile) -> torch.Tensor:
    """The tile's window of a field (..., H, W) -> (..., h, w), as a view."""
    if field.ndim < 2:
        raise ValueError(f"field must have at least 2 dims (..., H, W), got shape {tuple(field.shape)}")
    _check_tile(tile, field.shape[-2], field.shape[-1])
    return field[..., tile.row0:tile.row1, tile.col0:tile.col1]


class TileBlender:
    """Accumulates weighted per-tile fields into one blended full-domain field.

        blender = TileBlender((E, C, H, W), overlap)
        for tile in tiles: blender.add(tile, denoised_tile)   # (E, C, h, w)
        out = blender.result()                                  # (E, C, H, W)

    Holds the numerator (E, C, H, W) and the weight sum (H, W) only. `result` divides the numerator in
    place and returns it (no second full-size buffer); `reset` zeroes both for the next step. Coverage
    is checked from the tiles' rectangles on the host, so a blend on the GPU never waits for it."""

    def __init__(self, shape: Sequence[int], overlap, *, dtype=torch.float32, device=None):
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2 or min(shape) < 1:
            raise ValueError(f"shape must be (..., H, W) with positive sizes, got {shape}")
        self.shape, self.overlap = shape, overlap
        self.numerator = torch.zeros(shape, dtype=dtype, device=device)
        self.weight_sum = torch.zeros(shape[-2:], dtype=dtype, device=device)
        self._tiles: list[Tile] = []
        self._done = False

    def add(self, tile: Tile, values: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Add one tile's field (..., h, w); weights default to `blend_weights` of the tile (strictly
        positive). Weights passed in must be positive too: `result` checks that the tiles cover the
        domain, not the weights' values, which it would have to read back from the device."""
        if self._done:
            raise RuntimeError("TileBlender.add after result(): call reset() to start a new blend")
        height, width = self.shape[-2:]
        _check_tile(tile, height, width)
        expected = self.shape[:-2] + tile.shape
        if tuple(values.shape) != expected:
            raise ValueError(f"values for {tile} must be shaped {expected}, got {tuple(values.shape)}")
        if weights is None:
            weights = blend_weights(tile, height, width, self.overlap, dtype=self.numerator.dtype,
                                    device=self.numerator.device)
        crop(self.numerator, tile).addcmul_(values.to(self.numerator.dtype), weights)
        crop(self.weight_sum, tile).add_(weights)
        self._tiles.append(tile)

    def result(self) -> torch.Tensor:
        """The blended field (..., H, W): numerator / weight sum, computed in place."""
        if self._done:
            raise RuntimeError("TileBlender.result called twice: call reset() to start a new blend")
        if not covers(self._tiles, *self.shape[-2:]):
            raise ValueError("some pixels were covered by no tile: add tiles from plan_tiles over the "
                             f"whole domain {self.shape[-2:]}")
        self._done = True
        return self.numerator.div_(self.weight_sum)

    def reset(self) -> None:
        """Zero the accumulators to blend the next step into the same buffers."""
        self.numerator.zero_()
        self.weight_sum.zero_()
        self._tiles.clear()
        self._done = False


def covers(tiles: Sequence[Tile], height: int, width: int) -> bool:
    """Whether the tiles cover every pixel of (height, width), from their corners alone: the distinct
    row and column edges cut the domain into cells each either inside a tile or outside all of them,
    so a (edges x edges) mask decides it, whatever the number of pixels."""
    rows = sorted({0, height, *(t.row0 for t in tiles), *(t.row1 for t in tiles)})
    cols = sorted({0, width, *(t.col0 for t in tiles), *(t.col1 for t in tiles)})
    ri, ci = {r: i for i, r in enumerate(rows)}, {c: i for i, c in enumerate(cols)}
    cell = [[False] * (len(cols) - 1) for _ in range(len(rows) - 1)]
    for t in tiles:
        for i in range(ri[t.row0], ri[t.row1]):
            cell[i][ci[t.col0]:ci[t.col1]] = [True] * (ci[t.col1] - ci[t.col0])
    return all(all(row) for row in cell)


def blend_reference(tiles: Sequence[Tile], values: Sequence[torch.Tensor], height: int, width: int,
                    overlap) -> torch.Tensor:
    """Plain twin of TileBlender: stack every tile's weighted field on a full-size canvas, then divide."""
    canvases, weights = [], []
    for tile, v in zip(tiles, values, strict=True):
        w = blend_weights(tile, height, width, overlap, dtype=torch.float64)
        canvas = torch.zeros(v.shape[:-2] + (height, width), dtype=torch.float64)
        weight = torch.zeros(height, width, dtype=torch.float64)
        crop(canvas, tile)[...] = v.double() * w
        crop(weight, tile)[...] = w
        canvases.append(canvas)
        weights.append(weight)
    return torch.stack(canvases).sum(0) / torch.stack(weights).sum(0)
