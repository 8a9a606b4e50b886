"""Bundle format: write -> open -> load round trip, and every way a bundle can be broken."""
import json
import shutil

import pytest
import torch

from precipfast.config import AmplitudeConfig, DataConfig, TrainConfig, to_dict
from precipfast.errors import EngineMismatchError, InputFormatError, OutputError
from precipfast.export import bundle as export_bundle
from precipfast.export.bundle import export_checkpoints, write_bundle
from precipfast.runtime.engines.bundle import FORMAT_VERSION, default_bundle_path, load_denoisers, open_bundle
from precipfast.train.checkpoint import save_checkpoint

COMMON = dict(name="tiny", model_version="0.0.1", scale_factor=10, pooling="max",
              transform={"kind": "log1p", "scale_mm_h": 1.0, "norm": 2.0})


@pytest.fixture(scope="module")
def stages(make_tiny, make_stage_config):
    corr, down = make_tiny(cond_channels=1, seed=1, sigma_data=0.3), make_tiny(cond_channels=2, seed=2)
    cfg_down = {**make_stage_config(down), "cond_names": ["precip_up", "dem"]}
    return {"correction": (corr, make_stage_config(corr)), "downscaling": (down, cfg_down)}


@pytest.fixture(scope="module")
def bundle_dir(stages, tmp_path_factory):
    return write_bundle(tmp_path_factory.mktemp("b") / "bundle", stages, **COMMON)


@pytest.fixture
def copy_of(bundle_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(bundle_dir, dst)
    return dst


def _edit_manifest(path, fn):
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    (path / "manifest.json").write_text(json.dumps(m))


def test_round_trip(stages, bundle_dir):
    b = open_bundle(bundle_dir)
    m = b.manifest
    assert (m["format"], m["format_version"], m["scale_factor"], m["pooling"]) == ("precipfast-bundle", 1, 10, "max")
    assert (m["lr_pixel_deg"], m["hr_pixel_deg"], m["lr_pixel_km"], m["hr_pixel_km"]) == (0.1, 0.01, 10.0, 1.0)
    assert sorted(m["files"]) == sorted(["correction.safetensors", "correction.onnx", "downscaling.safetensors",
                                         "downscaling.onnx", "parity.json"])
    assert b.stage_names == ("correction", "downscaling")
    assert b.cond_names("correction") == ("precip_lr",) and b.cond_names("downscaling") == ("precip_up", "dem")
    assert b.transform.norm == 2.0 and b.sampler("correction").num_steps == 12
    assert b.edm("correction").sigma_data == 0.3 and b.unet("downscaling").cond_channels == 2
    assert m["stages"]["correction"]["train"] == {"steps": 7, "last_validation": {"step": 7, "val_crps_mm_h": 0.5}}
    parity = json.loads((bundle_dir / "parity.json").read_text())
    assert parity["correction"]["passed"] and parity["downscaling"]["passed"]
    loaded = load_denoisers(bundle_dir)
    for s, (orig, _) in stages.items():
        cc = orig.net.cfg.cond_channels
        x, sigma, cond = torch.randn(3, 1, 37, 53), torch.tensor([0.002, 1.0, 80.0]), torch.randn(3, cc, 37, 53)
        with torch.inference_mode():
            assert torch.equal(loaded[s](x, sigma, cond), orig(x, sigma, cond))
        assert not loaded[s].training


def test_tampered_weights(copy_of):
    p = copy_of / "downscaling.safetensors"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(EngineMismatchError, match=r"'downscaling.safetensors'.*sha256.*manifest [0-9a-f]{16}"):
        open_bundle(copy_of)


def test_truncated_onnx(copy_of):
    p = copy_of / "correction.onnx"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(EngineMismatchError, match=r"'correction.onnx'.*sha256.*\(1000 bytes\)"):
        open_bundle(copy_of)


def test_missing_file(copy_of):
    (copy_of / "parity.json").unlink()
    with pytest.raises(EngineMismatchError, match="missing 'parity.json'"):
        open_bundle(copy_of)


def test_unknown_format_version(copy_of):
    _edit_manifest(copy_of, lambda m: m.update(format_version=999))
    with pytest.raises(EngineMismatchError, match=f"format_version 999.*reads format_version {FORMAT_VERSION}"):
        open_bundle(copy_of)


def test_cond_names_disagree_with_unet(copy_of):
    _edit_manifest(copy_of, lambda m: m["stages"]["downscaling"].update(cond_channels=["precip_up"]))
    with pytest.raises(EngineMismatchError, match=r"lists 1 conditioning channels.*cond_channels is 2"):
        open_bundle(copy_of)


@pytest.mark.parametrize("tile", [{"size": 4, "overlap": 0}, {"size": 32, "overlap": 32}, {"size": 32},
                                  {"size": 32.5, "overlap": 8}, {"size": True, "overlap": 0}, [32, 8]])
def test_invalid_stage_tile(copy_of, tile):
    _edit_manifest(copy_of, lambda m: m["stages"]["correction"].update(tile=tile))
    with pytest.raises(EngineMismatchError, match=r"stage 'correction' tile .* is invalid; expected \{\"size\": "
                                                  r"8-4096, \"overlap\": 0-\(size-1\)\} in pixels"):
        open_bundle(copy_of)


def test_invalid_noise_clip(copy_of):
    _edit_manifest(copy_of, lambda m: m["stages"]["downscaling"]["sampler"].update(noise_clip=0.2))
    with pytest.raises(EngineMismatchError, match=r"sampler.noise_clip must be >= 1 standard deviation \(inf: "
                                                  r"none\), got 0.2"):
        open_bundle(copy_of)


def test_onnx_disagrees_with_manifest(copy_of):
    def three(m):
        m["stages"]["downscaling"]["cond_channels"] = ["precip_up", "dem", "q"]
        m["stages"]["downscaling"]["unet"]["cond_channels"] = 3
    _edit_manifest(copy_of, three)
    with pytest.raises(EngineMismatchError, match="input 'cond' has 2 channels; the manifest says 3"):
        open_bundle(copy_of)


def test_not_a_bundle(tmp_path):
    with pytest.raises(EngineMismatchError, match="not a directory"):
        open_bundle(tmp_path / "nope")
    with pytest.raises(EngineMismatchError, match="has no manifest.json"):
        open_bundle(tmp_path)


def test_write_is_atomic_and_refuses_existing(stages, bundle_dir, tmp_path, monkeypatch):
    with pytest.raises(OutputError, match="already exists"):
        write_bundle(bundle_dir, stages, **COMMON)
    corr, cfg = stages["correction"]
    bad = {"correction": (corr, {**cfg, "edm": {**cfg["edm"], "sigma_data": 0.9}})}
    with pytest.raises(ValueError, match="does not match its config"):
        write_bundle(tmp_path / "new", bad, **COMMON)
    down, dcfg = stages["downscaling"]
    with pytest.raises(ValueError, match="conditioning names"):
        write_bundle(tmp_path / "new", {"downscaling": (down, {**dcfg, "cond_names": None})}, **COMMON)
    # A failure after files were written (here: the parity check) leaves nothing behind.
    failing = {"passed": False, "max_rel_err": 0.5, "max_abs_err": 0.2, "tolerance_rel": 1e-4, "cases": [{}]}
    monkeypatch.setattr(export_bundle, "parity_report", lambda *a, **k: failing)
    with pytest.raises(EngineMismatchError, match="correction.onnx: ONNX parity FAIL: max rel err 5.00e-01"):
        write_bundle(tmp_path / "new", {"correction": stages["correction"]}, **COMMON)
    assert list(tmp_path.iterdir()) == []
    out = write_bundle(tmp_path / "new", {"correction": stages["correction"]}, onnx=False, **COMMON)
    out = write_bundle(out, {"correction": stages["correction"]}, onnx=False, overwrite=True, **COMMON)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]
    assert sorted(open_bundle(out).manifest["files"]) == ["correction.safetensors"]
    with pytest.raises(EngineMismatchError, match="no 'onnx' file for stage 'correction'"):
        open_bundle(out).file("correction", "onnx")


def test_export_checkpoints(stages, tmp_path):
    dirs = []
    for s, (den, cfg) in stages.items():
        data = to_dict(DataConfig(pooling="mean"))
        config = {**cfg, "stage": s, "data": data, "train": to_dict(TrainConfig(stage=s))}
        save_checkpoint(tmp_path / s, config, den, den)
        dirs.append(tmp_path / s)
    out = export_checkpoints(dirs, tmp_path / "bundle", name="ck", onnx=False, parity=False)
    b = open_bundle(out)
    assert (b.name, b.manifest["pooling"], b.stage_names) == ("ck", "mean", ("correction", "downscaling"))
    # the coarse stage is tiled at its training crop (overlap a quarter of it); the diffusion stage by --tile
    crop = DataConfig().patch_lr
    assert b.tiling("correction") == (crop, crop // 4)
    assert b.tiling("downscaling") is None
    # the correction's rain reaches as far as its training errors moved rain: 3 sd of shift and of blur, + 1
    assert b.rain_reach("correction") == 9 and b.rain_reach("downscaling") is None
    x, cond = torch.randn(1, 1, 20, 30), torch.randn(1, 2, 20, 30)
    with torch.inference_mode():
        assert torch.equal(load_denoisers(b)["downscaling"](x, torch.tensor([2.0]), cond),
                           stages["downscaling"][0](x, torch.tensor([2.0]), cond))
    cfg = json.loads((tmp_path / "correction" / "config.json").read_text())
    cfg["data"]["error_prior"] = "wide"          # trained over the wide prior: it reaches as far as its widest errors
    (tmp_path / "correction" / "config.json").write_text(json.dumps(cfg))
    wide = export_checkpoints(dirs, tmp_path / "bundle_wide", onnx=False, parity=False)
    assert open_bundle(wide).rain_reach("correction") == 13
    assert open_bundle(wide).amplitude("correction") is None and open_bundle(wide).rain_inside("correction") is None
    # the rules chosen after training (the checkpoint's runtime section) go into the manifest
    cfg["runtime"] = {"amplitude": {"keep": 1.0, "window_px": 4.0, "max_gain": 4.0}, "rain_inside_px": 3}
    (tmp_path / "correction" / "config.json").write_text(json.dumps(cfg))
    ruled = open_bundle(export_checkpoints(dirs, tmp_path / "bundle_ruled", onnx=False, parity=False))
    assert ruled.amplitude("correction") == AmplitudeConfig(1.0, 4.0, 4.0) and ruled.rain_inside("correction") == 3
    cfg["runtime"]["spread"] = 1
    (tmp_path / "correction" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="runtime section has .*'spread'.*; expected amplitude and rain_inside_px"):
        export_checkpoints(dirs, tmp_path / "bundle3", onnx=False, parity=False)
    del cfg["runtime"]
    cfg["data"]["pooling"] = "max"
    (tmp_path / "correction" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputFormatError, match="disagree on data.pooling"):
        export_checkpoints(dirs, tmp_path / "bundle2", onnx=False, parity=False)


def test_default_bundle_path(tmp_path, monkeypatch):
    from precipfast.runtime.engines import bundle as rb
    p = default_bundle_path(must_exist=False)
    assert p.parts[-3:] == ("precipfast", "bundles", "default")
    # An installation without a shipped bundle (a package directory with none): one line saying what to do.
    monkeypatch.setattr(rb, "_package_dir", lambda: tmp_path)
    assert default_bundle_path(must_exist=False) == tmp_path / "bundles" / "default"
    with pytest.raises(EngineMismatchError, match="no default model bundle at .*pass --model BUNDLE"):
        default_bundle_path()


def test_mean_plus_edm_stage_round_trips_with_onnx_parity(tmp_path):
    """CorrDiff's correction (regression mean + diffusion on the remainder, edm.Preconditioned kind
    "mean+edm") ships as one stage: both networks in one weights file and one ONNX graph, parity checked
    at export, rebuilt by the runtime from the manifest."""
    import numpy as np

    from precipfast.config import EDMConfig, SamplerConfig, UNetConfig
    from precipfast.denoiser import build_denoiser
    from precipfast.runtime.engines.onnxruntime_backend import ort_session
    torch.manual_seed(4)
    edm = EDMConfig(sigma_data=0.2, kind="mean+edm", denoised_max=4.0)
    den = build_denoiser(UNetConfig(model_channels=8, channel_mult=(1, 2), attn_levels=(), cond_channels=1), edm)
    with torch.no_grad():   # |mu| of order 1, like a trained regression mean (large random means cancel in x - mu)
        for name, p in den.named_parameters():
            p.normal_(0.0, 0.05 if name.startswith("mean_net.") else 0.15)
    den.eval()
    cfg = {"unet": to_dict(den.net.cfg), "edm": to_dict(edm), "sampler": to_dict(SamplerConfig(num_steps=8))}
    out = write_bundle(tmp_path / "b", {"correction": (den, cfg)}, **COMMON)
    assert json.loads((out / "parity.json").read_text())["correction"]["passed"]
    loaded = load_denoisers(out)["correction"]
    assert loaded.kind == "mean+edm"
    x, sigma, cond = torch.randn(2, 1, 21, 30), torch.tensor([0.01, 3.0]), torch.rand(2, 1, 21, 30)
    with torch.inference_mode():
        ref = den(x, sigma, cond)
        assert torch.equal(loaded(x, sigma, cond), ref)
        without_mean = type(den)(den.net, 0.2, "edm", 4.0).eval()(x, sigma, cond)   # the diffusion net alone
    got = ort_session(out / "correction.onnx", threads=1).run(
        None, {"x": x.numpy(), "sigma": sigma.numpy(), "cond": cond.numpy()})[0]
    assert np.abs(got - ref.numpy()).max() <= 1e-4 * np.abs(ref.numpy()).max()
    # The mean network is in the graph: leaving it out moves D far more than the export's rounding.
    assert np.abs(got - without_mean.numpy()).max() > 100 * np.abs(got - ref.numpy()).max()


def test_crps_stage_round_trips_with_onnx_parity(tmp_path):
    """A CRPS-trained generator (kind "crps") ships as a one-step stage: its ONNX graph reads the latent as
    x / sigma like the eager module, and the manifest keeps its one step."""
    import numpy as np

    from precipfast.config import EDMConfig, SamplerConfig, UNetConfig
    from precipfast.denoiser import build_denoiser
    from precipfast.runtime.engines.onnxruntime_backend import ort_session
    torch.manual_seed(5)
    edm = EDMConfig(sigma_data=0.3, kind="crps", denoised_max=4.0)
    den = build_denoiser(UNetConfig(model_channels=8, channel_mult=(1, 2), attn_levels=(), cond_channels=1), edm)
    with torch.no_grad():
        for p in den.parameters():
            p.normal_(0.0, 0.15)
    den.eval()
    cfg = {"unet": to_dict(den.net.cfg), "edm": to_dict(edm), "sampler": to_dict(SamplerConfig(num_steps=1))}
    out = write_bundle(tmp_path / "b", {"correction": (den, cfg)}, **COMMON)
    assert json.loads((out / "parity.json").read_text())["correction"]["passed"]
    assert json.loads((out / "manifest.json").read_text())["stages"]["correction"]["sampler"]["num_steps"] == 1
    loaded = load_denoisers(out)["correction"]
    assert loaded.kind == "crps"
    n, cond = torch.randn(2, 1, 21, 30), torch.rand(2, 1, 21, 30)
    sigma = torch.tensor([8.0, 2.0])
    x = n * sigma.view(-1, 1, 1, 1)
    with torch.inference_mode():
        ref = den(x, sigma, cond)
        assert torch.equal(loaded(x, sigma, cond), ref)
        torch.testing.assert_close(ref[1], den(8.0 * n[1:], torch.tensor([8.0]), cond[1:])[0])  # only x / sigma
    got = ort_session(out / "correction.onnx", threads=1).run(
        None, {"x": x.numpy(), "sigma": sigma.numpy(), "cond": cond.numpy()})[0]
    assert np.abs(got - ref.numpy()).max() <= 1e-4 * np.abs(ref.numpy()).max()
