"""Overlapping tiles and smooth blending (runtime/sampling/tiling.py): coverage, exact reconstruction, no seams."""
import math

import pytest
import torch

from precipfast import noise
from precipfast.runtime.sampling.tiling import Tile, TileBlender, blend_reference, blend_weights, crop, plan_tiles

# (height, width, tile, overlap): awkward sizes, a domain smaller than a tile, a last tile that
# overlaps two others (29 = 12 + 16 + 1), and rectangular tile/overlap pairs.
PLANS = [(37, 53, 16, 4), (500, 500, 128, 32), (10, 7, 16, 4), (29, 29, 16, 4), (300, 301, 64, 16),
         (1, 40, 8, 3), (45, 70, (16, 24), (4, 6))]


def _pair(v):
    return (v, v) if isinstance(v, int) else v


@pytest.mark.parametrize("height,width,tile,overlap", PLANS)
def test_plan_covers_domain_within_bounds(height, width, tile, overlap):
    tiles = plan_tiles(height, width, tile, overlap)
    (th, tw), (oh, ow) = _pair(tile), _pair(overlap)
    count = torch.zeros(height, width, dtype=torch.int64)
    for t in tiles:
        assert 0 <= t.row0 < t.row1 <= height and 0 <= t.col0 < t.col1 <= width
        assert t.shape == (min(th, height), min(tw, width))
        count[t.row0:t.row1, t.col0:t.col1] += 1
    assert bool((count >= 1).all())
    for axis, n, o in (("row", height, oh), ("col", width, ow)):
        starts = sorted({getattr(t, axis + "0") for t in tiles})
        stops = sorted({getattr(t, axis + "1") for t in tiles})
        assert starts[0] == 0 and stops[-1] == n  # first tile on one border, last flush with the other
        assert all(stop - start >= o for start, stop in zip(starts[1:], stops[:-1]))  # overlap kept


def test_plan_stride_and_small_domain():
    assert [t.col0 for t in plan_tiles(16, 53, 16, 4)] == [0, 12, 24, 36, 37]
    assert plan_tiles(10, 7, 16, 4) == [Tile(0, 10, 0, 7)]
    assert plan_tiles(16, 16, 16, 4) == [Tile(0, 16, 0, 16)]


@pytest.mark.parametrize("args,match", [
    ((32, 32, 16, 16), "overlap"),
    ((32, 32, 16, -1), "overlap"),
    ((32, 32, 0, 0), "tile"),
    ((0, 32, 16, 4), "height"),
    ((32, 32, 16.0, 4), "tile"),
    ((32, 32, (16, 16, 16), 4), "tile"),
])
def test_plan_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        plan_tiles(*args)


@pytest.mark.parametrize("height,width,tile,overlap", PLANS)
def test_weights_positive_tapered_inside_flat_on_border(height, width, tile, overlap):
    oh, ow = _pair(overlap)
    weight_sum = torch.zeros(height, width, dtype=torch.float64)
    for t in plan_tiles(height, width, tile, overlap):
        w = blend_weights(t, height, width, overlap, dtype=torch.float64)
        assert w.shape == t.shape and bool((w > 0).all()) and bool((w <= 1).all())
        wy, wx = w.max(dim=1).values, w.max(dim=0).values  # separable: the two 1-D tapers
        # 1 on a domain border, a ramp starting below 1 on a side shared with another tile.
        assert (wy[0] == 1) == (t.row0 == 0 or oh == 0) and (wy[-1] == 1) == (t.row1 == height or oh == 0)
        assert (wx[0] == 1) == (t.col0 == 0 or ow == 0) and (wx[-1] == 1) == (t.col1 == width or ow == 0)
        weight_sum[t.row0:t.row1, t.col0:t.col1] += w
    # Ramps of neighbours sum to 1 where they align and some tile is flat elsewhere: the weight sum is
    # >= 1, so normalising never divides by a small number.
    assert bool((weight_sum >= 1 - 1e-12).all())


@pytest.mark.parametrize("height,width,tile,overlap", PLANS)
def test_weights_have_no_jump_larger_than_ramp_step(height, width, tile, overlap):
    values = []
    tiles = plan_tiles(height, width, tile, overlap)
    for i, t in enumerate(tiles):
        w = blend_weights(t, height, width, overlap, dtype=torch.float64)
        for dim, o in ((0, _pair(overlap)[0]), (1, _pair(overlap)[1])):
            if w.shape[dim] > 1 and o > 0:
                # Consecutive raised-cosine samples differ by sin(pi (j+1)/L) sin(pi/2L) <= sin(pi/2L).
                assert w.diff(dim=dim).abs().max().item() <= math.sin(math.pi / (2 * o)) + 1e-12
        values.append(torch.full((1,) + t.shape, float(i % 5), dtype=torch.float64))
    # Seams: blend tiles holding different constants (range 4). The normalised shares move by at most
    # one ramp step per pixel, so the blended field steps by at most 4 sin(pi / 2L) between neighbours.
    out = blend_reference(tiles, values, height, width, overlap)[0]
    for dim, o in ((0, _pair(overlap)[0]), (1, _pair(overlap)[1])):
        if out.shape[dim] > 1 and len(tiles) > 1:
            assert out.diff(dim=dim).abs().max().item() <= 4 * math.sin(math.pi / (2 * o)) + 1e-9


@pytest.mark.parametrize("height,width,tile,overlap", PLANS)
def test_blending_reconstructs_constant_and_smooth_fields(height, width, tile, overlap):
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                            torch.arange(width, dtype=torch.float64), indexing="ij")
    smooth = torch.stack([torch.sin(yy / 7.0) * torch.cos(xx / 11.0) + 0.01 * xx, torch.full_like(yy, 3.25)])
    field = smooth.expand(2, 2, height, width)  # (E, C, H, W): channel 1 is a constant
    tiles = plan_tiles(height, width, tile, overlap)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):  # float32: a few ulp of |x| <= 6
        blender = TileBlender(field.shape, overlap, dtype=dtype)
        for t in tiles:
            blender.add(t, crop(field, t).to(dtype))
        out = blender.result()
        assert out.dtype == dtype and out.shape == field.shape
        torch.testing.assert_close(out.double(), field, rtol=0, atol=tol)  # a partition of unity


def test_blender_matches_reference_and_reuses_buffers():
    height, width, tile, overlap = 37, 53, 16, 4
    tiles = plan_tiles(height, width, tile, overlap)
    g = torch.Generator().manual_seed(0)
    values = [torch.randn((3, 1) + t.shape, generator=g, dtype=torch.float64) for t in tiles]
    ref = blend_reference(tiles, values, height, width, overlap)
    blender = TileBlender((3, 1, height, width), overlap, dtype=torch.float64)
    for step in range(2):  # the second step reuses the buffers after reset()
        blender.reset()
        buffer = blender.numerator
        for t, v in zip(tiles, values):
            blender.add(t, v)
        out = blender.result()
        assert out.data_ptr() == buffer.data_ptr()  # divided in place: memory is the output size
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)  # same sums, another order


def test_tiled_noise_blends_back_to_the_full_field():
    # Noise is a pure function of the global pixel index, so per-tile noise agrees on every overlap
    # and the blend returns the full-domain field: no seam from the noise.
    height, width, tile, overlap = 37, 53, 16, 4
    full = noise.normal_members(0, [2, 5], "downscaling", 3, 0, height, 0, width, width, dtype=torch.float64)
    blender = TileBlender(full.shape, overlap, dtype=torch.float64)
    for t in plan_tiles(height, width, tile, overlap):
        blender.add(t, noise.normal_members(0, [2, 5], "downscaling", 3, t.row0, t.row1, t.col0, t.col1,
                                            width, dtype=torch.float64))
    torch.testing.assert_close(blender.result(), full, rtol=1e-14, atol=1e-14)


def test_blender_and_crop_errors():
    blender = TileBlender((2, 1, 20, 20), 4)
    with pytest.raises(ValueError, match=r"must be shaped \(2, 1, 10, 10\)"):
        blender.add(Tile(0, 10, 0, 10), torch.zeros(1, 1, 10, 10))
    with pytest.raises(ValueError, match="inside the domain"):
        blender.add(Tile(15, 25, 0, 10), torch.zeros(2, 1, 10, 10))
    blender.add(Tile(0, 10, 0, 10), torch.zeros(2, 1, 10, 10))
    with pytest.raises(ValueError, match="covered by no tile"):
        blender.result()
    for t in plan_tiles(20, 20, 10, 4):
        blender.add(t, torch.ones(2, 1, 10, 10))
    blender.result()
    with pytest.raises(RuntimeError, match="reset"):
        blender.add(Tile(0, 10, 0, 10), torch.zeros(2, 1, 10, 10))
    with pytest.raises(ValueError, match="at least 2 dims"):
        crop(torch.zeros(5), Tile(0, 1, 0, 1))
    field = torch.arange(30.0).view(5, 6)
    view = crop(field, Tile(1, 3, 2, 5))
    assert torch.equal(view, field[1:3, 2:5]) and view.data_ptr() != field.data_ptr()
    assert view.untyped_storage().data_ptr() == field.untyped_storage().data_ptr()  # a view, no copy


def test_balanced_tile_keeps_tile_count_and_cuts_work():
    from precipfast.runtime.sampling.tiling import balanced_tile
    for length, tile, overlap in [(300, 256, 32), (3500, 256, 32), (7000, 256, 32), (500, 128, 16), (61, 32, 12)]:
        edge = balanced_tile(length, tile, overlap)
        assert overlap < edge <= tile and edge % 8 == 0 or edge == length
        n_full = len({t.row0 for t in plan_tiles(length, 1, (tile, 1), (overlap, 0))})
        n_bal = len({t.row0 for t in plan_tiles(length, 1, (edge, 1), (overlap, 0))})
        assert n_bal == n_full
        assert n_bal * edge <= n_full * min(tile, length)
    assert balanced_tile(300, 256, 32) == 168
    assert balanced_tile(200, 256, 32) == 200  # a domain smaller than a tile is one tile


def test_coverage_from_corners_equals_a_pixel_mask():
    """`covers` decides from the tiles' edges what a full-size pixel mask decides (its slow twin), on
    random overlapping partitions with a tile sometimes dropped (a hole, unless the overlaps fill it)."""
    from precipfast.runtime.sampling.tiling import covers
    g = torch.Generator().manual_seed(7)

    def draw(lo, hi):
        return int(torch.randint(lo, hi, (1,), generator=g))

    def bands(n):
        cuts = sorted({0, n, *(draw(1, n) for _ in range(draw(0, 3)) if n > 1)})
        return [(max(0, a - draw(0, 4)), b) for a, b in zip(cuts, cuts[1:])]  # overlap the previous band
    seen = {True: 0, False: 0}
    for _ in range(300):
        h, w = draw(1, 30), draw(1, 30)
        tiles = [Tile(r0, r1, c0, c1) for r0, r1 in bands(h) for c0, c1 in bands(w)]
        if draw(0, 2):
            tiles.pop(draw(0, len(tiles)))
        mask = torch.zeros(h, w, dtype=torch.bool)
        for t in tiles:
            mask[t.row0:t.row1, t.col0:t.col1] = True
        got = covers(tiles, h, w)
        assert got == bool(mask.all()), (h, w, tiles)
        seen[got] += 1
    assert min(seen.values()) > 50, seen  # both answers were exercised
    assert covers(plan_tiles(350, 701, 128, 32), 350, 701)
    assert not covers(plan_tiles(350, 701, 128, 32)[1:], 350, 701)
