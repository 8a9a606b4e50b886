"""No seams: on a tiled run of a real IMERG field with the shipped model, the rain field is no rougher
across tile borders than inside tiles."""
import numpy as np

from precipfast.runtime.files.reader import read_input
from precipfast.runtime.sampling.pipeline import Pipeline
from precipfast.runtime.sampling.tiling import balanced_tile, plan_tiles


def test_tile_borders_are_no_rougher_than_tile_interiors(shipped_bundle, shared_data):
    field = read_input(shared_data / "imerg_samples.h5", variable="v06b_final_conus_20170103T1100/precipitationCal",
                       bbox=(38.0, 40.0, -83.0, -81.0))
    lr = field.precip[0]
    assert lr.shape == (20, 20) and np.nanmean(lr > 0.1) > 0.9  # widespread rain: seams would show
    tile, overlap = 64, 16
    pipe = Pipeline.from_bundle(shipped_bundle, backend="onnxruntime", device="cpu", tile=tile, overlap=overlap,
                                stages=["downscaling"])
    precip = pipe.sample_field(lr, 2, 4, seed=0)["precip"]  # (2, 200, 200)
    h, w = precip.shape[-2:]
    edge = balanced_tile(w, tile, overlap)
    tiles = plan_tiles(h, w, (balanced_tile(h, tile, overlap), edge), overlap)
    assert len(tiles) >= 9
    # Where a seam would be: the first and last column/row of every tile that is not the domain edge.
    cols = sorted({t.col0 for t in tiles if t.col0 > 0} | {t.col1 for t in tiles if t.col1 < w})
    rows = sorted({t.row0 for t in tiles if t.row0 > 0} | {t.row1 for t in tiles if t.row1 < h})
    y = np.log1p(precip)
    gx, gy = np.abs(np.diff(y, axis=-1)), np.abs(np.diff(y, axis=-2))  # gx[..., j] is between j and j+1
    border_x = np.mean([gx[..., c - 1].mean() for c in cols])
    border_y = np.mean([gy[..., r - 1, :].mean() for r in rows])
    inside_x = np.delete(gx, [c - 1 for c in cols], axis=-1).mean()
    inside_y = np.delete(gy, [r - 1 for r in rows], axis=-2).mean()
    # 2 members x 200 px per border line: sampling noise of the mean is a few percent.
    assert border_x <= 1.1 * inside_x, (border_x, inside_x)
    assert border_y <= 1.1 * inside_y, (border_y, inside_y)


def test_tiled_members_match_the_whole_domain_member(shipped_bundle, shared_data):
    """Same seed, same member: the default 128 px tiles (2 x 2 here) against one 200 px tile. Not
    bit-equal (the nets see other context near tile edges) but far closer than two members are to each
    other. Measured with 4 steps: 0.088 of the member-to-member difference, correlation 0.994 (64 px
    tiles: 0.14, 0.985; with 8 steps 0.065 and 0.998 at 128 px)."""
    field = read_input(shared_data / "imerg_samples.h5", variable="v06b_final_conus_20170103T1100/precipitationCal",
                       bbox=(38.0, 40.0, -83.0, -81.0))
    kw = dict(backend="onnxruntime", device="cpu", stages=["downscaling"])
    whole = Pipeline.from_bundle(shipped_bundle, tile=256, **kw).sample_field(field.precip[0], 2, 4, seed=3)["precip"]
    tiled = Pipeline.from_bundle(shipped_bundle, tile=128, overlap=32, **kw).sample_field(field.precip[0], 2, 4,
                                                                                           seed=3)["precip"]
    diff = np.abs(tiled - whole).mean()
    spread = np.abs(whole[0] - whole[1]).mean()
    assert diff < 0.2 * spread, (diff, spread)
    assert np.corrcoef(tiled.ravel(), whole.ravel())[0, 1] > 0.98
