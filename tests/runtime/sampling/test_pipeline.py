"""Two-stage pipeline: shapes, reproducibility across batch size / tiling / backend, masking, stages."""
import numpy as np
import pytest

from precipfast.errors import InputFormatError
from precipfast.runtime.sampling.pipeline import Pipeline, fine_coords

_Y, _X = np.mgrid[0:6, 0:7]
LR = (4.0 * np.exp(-((_Y - 3) ** 2 + (_X - 3) ** 2) / 4.0)).astype(np.float32)


def _pipe(bundle, **kw):
    kw.setdefault("backend", "torch")
    return Pipeline.from_bundle(bundle, device="cpu", **kw)


def test_shapes_and_rain_never_negative(tiny_bundle):
    res = _pipe(tiny_bundle).sample(LR, members=3, steps=3, seed=0)
    assert res["precip"].shape == (3, 60, 70)
    assert res["corrected_lr"].shape == (3, 6, 7)
    assert res["precip_mean"].shape == (60, 70) and res["precip_std"].shape == (60, 70)
    assert np.nanmin(res["precip"]) >= 0 and np.nanmin(res["corrected_lr"]) >= 0
    t = _pipe(tiny_bundle).sample(np.stack([LR, LR]), members=2, steps=3)
    assert t["precip"].shape == (2, 2, 60, 70)
    # Time 1 uses another noise key than time 0, so identical inputs give different members.
    assert np.abs(t["precip"][0] - t["precip"][1]).mean() > 1e-3


def test_same_seed_same_members_for_any_batch_size_and_subset(tiny_bundle):
    a = _pipe(tiny_bundle, max_batch=1).sample_field(LR, 4, 3, seed=11)
    b = _pipe(tiny_bundle, max_batch=16).sample_field(LR, 4, 3, seed=11)
    c = _pipe(tiny_bundle).sample_field(LR, 1, 3, seed=11, member_ids=[2])
    np.testing.assert_allclose(a["precip"], b["precip"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a["precip"][2:3], c["precip"], rtol=1e-4, atol=1e-5)
    d = _pipe(tiny_bundle).sample_field(LR, 4, 3, seed=12)
    assert np.abs(d["precip"] - a["precip"]).mean() > 1e-3


def test_backends_give_the_same_ensemble(tiny_bundle):
    t = _pipe(tiny_bundle, backend="torch").sample_field(LR, 2, 3, seed=3)
    o = _pipe(tiny_bundle, backend="onnxruntime").sample_field(LR, 2, 3, seed=3)
    # fp32 graph reordering (~1e-6 relative per evaluation) through 5 evaluations and expm1.
    np.testing.assert_allclose(t["precip"], o["precip"], rtol=1e-3, atol=1e-4)


def test_tiled_close_to_untiled(tiny_bundle):
    whole = _pipe(tiny_bundle, tile=256).sample_field(LR, 2, 3, seed=4)["precip"]
    tiled = _pipe(tiny_bundle, tile=32, overlap=12).sample_field(LR, 2, 3, seed=4)["precip"]
    diff = np.abs(whole - tiled).mean()
    spread = np.abs(whole[0] - whole[1]).mean()
    assert diff < 0.2 * spread, (diff, spread)


def test_a_stage_with_a_bundle_tile_ignores_the_user_tile(tiny_bundle, tmp_path):
    """A stage whose manifest fixes its tile (the coarse stage, tiled at its training crop) is sampled at
    that tile whatever --tile says; the other stage follows --tile."""
    import json
    import shutil
    b = tmp_path / "tiled"
    shutil.copytree(tiny_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    m["stages"]["correction"]["tile"] = {"size": 8, "overlap": 2}
    (b / "manifest.json").write_text(json.dumps(m))
    big = np.tile(LR, (3, 3))  # 18 x 21 coarse pixels: three 8 px tiles a side
    runs = [_pipe(b, stages=["correction"], tile=t, overlap=o) for t, o in ((16, 4), (256, 32))]
    assert [(r.stages["correction"].tiling.tile, r.stages["correction"].tiling.overlap) for r in runs] == [(8, 2)] * 2
    a, c = (r.sample_field(big, 2, 3, seed=5)["corrected_lr"] for r in runs)
    np.testing.assert_array_equal(a, c)
    untiled = _pipe(tiny_bundle, stages=["correction"], tile=256).sample_field(big, 2, 3, seed=5)["corrected_lr"]
    assert np.abs(untiled - a).mean() > 1e-4  # tiling at 8 px gave the net other context than one tile
    both = _pipe(b, tile=64, overlap=16)
    assert (both.stages["downscaling"].tiling.tile, both.stages["downscaling"].tiling.overlap) == (64, 16)


def test_shipped_correction_is_tiled_at_its_training_crop(shipped_bundle):
    from precipfast.runtime.engines.bundle import open_bundle
    assert open_bundle(shipped_bundle).tiling("correction") == (32, 8)
    assert open_bundle(shipped_bundle).tiling("downscaling") is None
    # the downscaling's starting noise is truncated (docs/experiments.md: isolated spikes); the correction's is not
    assert open_bundle(shipped_bundle).sampler("downscaling").noise_clip == 2.5
    assert open_bundle(shipped_bundle).sampler("correction").noise_clip == float("inf")


def test_missing_pixels_masked_and_stage_subsets(tiny_bundle):
    lr = LR.copy()
    lr[0, 0] = np.nan
    res = _pipe(tiny_bundle).sample_field(lr, 2, 3, seed=0)
    assert np.isnan(res["precip"][:, :10, :10]).all() and not np.isnan(res["precip"][:, 10:, 10:]).any()
    assert np.isnan(res["corrected_lr"][:, 0, 0]).all()
    down = _pipe(tiny_bundle, stages=["downscaling"]).sample_field(LR, 2, 3, seed=0)
    np.testing.assert_allclose(down["corrected_lr"][0], LR, rtol=1e-5, atol=1e-6)  # input passed through
    corr = _pipe(tiny_bundle, stages=["correction"]).sample_field(LR, 2, 3, seed=0)
    assert corr["precip"].shape == (2, 6, 7)


@pytest.mark.parametrize("bad, msg", [
    (np.full((5, 5), np.nan, np.float32), "is all missing"),
    (-LR - 1, "negative values"),
    (LR * 1000, r"rates up to 4\d+ mm/h; expected <= 1000"),
])
def test_bad_fields(tiny_bundle, bad, msg):
    with pytest.raises(InputFormatError, match=msg):
        _pipe(tiny_bundle).sample_field(bad, 2, 3, seed=0)


def test_fine_coords_centre_in_coarse_pixels():
    lat, lon = fine_coords(np.array([40.95, 40.85]), np.array([-100.95, -100.85]), 10)
    assert lat[0] == pytest.approx(40.995) and lat[-1] == pytest.approx(40.805)
    assert lon[0] == pytest.approx(-100.995) and lon[-1] == pytest.approx(-100.805)
    assert np.allclose(lat[:10].mean(), 40.95) and np.allclose(lon[10:].mean(), -100.85)


def test_diverged_sampling_is_refused_not_written(tiny_bundle):
    from precipfast.errors import SamplingError
    pipe = _pipe(tiny_bundle)
    # A denoiser that overflows: what too few steps from sigma_max = 80 do to the shipped model.
    pipe.stages["downscaling"].backend = lambda x, sigma, cond: x.new_full(x.shape, 1e30)
    with pytest.raises(SamplingError, match=r"downscaling stage diverged: \d+ of 8400 rates are inf or NaN with "
                                            r"3 Heun steps .*use more --steps"):
        pipe.sample_field(LR, 2, 3, seed=0)


def test_crps_correction_is_one_evaluation_per_member_whatever_steps(crps_bundle):
    """A one-step stage keeps its one evaluation under --steps (which sets the diffusion stage's), gives
    one corrected field per member, and keeps the seed rules: any batch size, any member subset."""
    pipe = _pipe(crps_bundle)
    assert pipe.evaluations_per_member(steps=3) == 1 + 5 and pipe.evaluations_per_member() == 1 + 7
    a = pipe.sample_field(LR, 3, 3, seed=7)
    b = _pipe(crps_bundle, max_batch=1).sample_field(LR, 3, 6, seed=7)
    c = pipe.sample_field(LR, 1, 3, seed=7, member_ids=[1])
    np.testing.assert_allclose(a["corrected_lr"], b["corrected_lr"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a["corrected_lr"][1:2], c["corrected_lr"], rtol=1e-5, atol=1e-6)
    assert np.abs(a["corrected_lr"][0] - a["corrected_lr"][1]).mean() > 1e-3     # an ensemble of corrections
    o = _pipe(crps_bundle, backend="onnxruntime").sample_field(LR, 3, 3, seed=7)
    np.testing.assert_allclose(a["corrected_lr"], o["corrected_lr"], rtol=1e-4, atol=1e-5)
