"""The recipe (train/recipe_configs.py, train/recipe.py) through `precipfast train`: the correction designs'
configs, the remainder's sigma_data, refused flag mixes, and settings that replace the recipe's."""
import pytest
import torch
from click.testing import CliRunner

from precipfast.cli import main
from precipfast.config import EDMConfig, SamplerConfig, TrainConfig, UNetConfig, from_dict
from precipfast.train import recipe
from precipfast.train.checkpoint import read_config
from precipfast.train.recipe_configs import configs, with_overrides


def train(*args):
    return CliRunner().invoke(main, ["train", *map(str, args)])


def _refused(res, message, code=1):
    """One line on stderr (`Error: ...`), with `message` in it."""
    assert res.exit_code == code, res.output
    assert message in res.output and "Traceback" not in res.output, res.output


def test_correction_kinds():
    assert configs("correction")["edm"].kind == "regression"
    for kind in ("regression", "crps"):      # one evaluation: the mean, or one member of the generator
        c = configs("correction", kind)
        assert c["edm"].kind == kind and c["sampler"].num_steps == 1 and c["train"].val_steps == 1
    for kind in ("edm", "mean+edm"):
        c = configs("correction", kind)
        assert c["edm"].kind == kind and c["sampler"].num_steps == 8


def test_downscaling_samples_its_own_schedule():
    c = configs("downscaling")
    assert (c["sampler"].num_steps, c["sampler"].sigma_max, c["sampler"].rho) == (8, 4.0, 3.0)
    assert (c["train"].iterations, c["train"].learning_rate) == (2500, 2e-3)


def test_overrides_replace_one_field_of_the_config_that_has_it():
    c = with_overrides(configs("correction", "crps"), {"iterations": 7, "model_channels": 32, "pooling": "max",
                                                       "rho": 5.0, "crps_max_scales": ()})
    assert (c["train"].iterations, c["unet"].model_channels, c["data"].pooling, c["sampler"].rho) == (7, 32, "max", 5.0)
    assert c["train"].crps_max_scales == () and c["train"].batch_size == 32 and c["unet"].channel_mult == (1, 2, 2)
    with pytest.raises(ValueError, match="no training setting is named steps"):
        with_overrides(configs("correction"), {"steps": 3})


@pytest.mark.parametrize("ckpt, stage, kind, given", [
    ("downscaling", "downscaling", None, {}),
    ("correction_crps_max48", "correction", "crps", {"iterations": 1000, "crps_max_scales": (4, 8)})])
def test_the_recipe_reproduces_the_shipped_stages(ckpt, stage, kind, given):
    """The commands in docs/training.md give the shipped checkpoints' configs."""
    cfg, c = read_config(f"checkpoints/v2/{ckpt}"), with_overrides(configs(stage, kind), given)
    assert from_dict(TrainConfig, cfg["train"]) == c["train"]
    assert from_dict(UNetConfig, cfg["unet"]) == c["unet"] and from_dict(SamplerConfig, cfg["sampler"]) == c["sampler"]


class _Pairs:
    """target = 2 * cond + noise of std 0.1: a mean network 2 * cond leaves a remainder of std 0.1."""

    def batch(self, n, gen):
        cond = torch.rand(n, 1, 8, 8, generator=gen)
        return {"cond": cond, "target": 2 * cond + 0.1 * torch.randn(n, 1, 8, 8, generator=gen)}


def test_sigma_data_of_a_mean_plus_edm_stage_is_the_remainders():
    plain = recipe.measured_edm(EDMConfig(), _Pairs())
    remainder = recipe.measured_edm(EDMConfig(kind="mean+edm"), _Pairs(), mean_net=lambda x, s, c: 2 * c)
    assert plain.sigma_data > 0.5                                   # the residual itself varies with cond
    assert remainder.sigma_data == pytest.approx(0.1, abs=0.005)
    assert remainder.denoised_max == plain.denoised_max            # the bound is on the whole residual


def test_design_flags_belong_to_the_correction_stage():
    _refused(train("--stage", "downscaling", "--kind", "edm", "--out", "unused"), "choose the correction stage's design")


@pytest.mark.parametrize("argv", [["--kind", "mean+edm"], ["--kind", "edm", "--mean", "checkpoints/v2/correction"]])
def test_mean_goes_with_mean_plus_edm_only(argv):
    _refused(train("--stage", "correction", "--out", "unused", *argv), "--kind mean+edm needs --mean")


@pytest.mark.parametrize("kind", ["regression", "edm"])
def test_init_goes_with_crps_only(kind):
    _refused(train("--stage", "correction", "--out", "unused", "--kind", kind, "--init", "checkpoints/v2/correction"),
             "--init REGRESSION_CHECKPOINT starts a --kind crps generator")


def test_init_needs_a_regression_checkpoint():
    _refused(train("--stage", "correction", "--out", "unused", "--kind", "crps", "--init", "checkpoints/v2/downscaling"),
             "'edm' checkpoint; --init needs a regression one")


@pytest.mark.parametrize("text", ["1", "8,0"])
def test_crps_max_scales_checked_by_the_config(text):
    _refused(train("--stage", "correction", "--out", "unused", "--kind", "crps", "--crps-max-scales", text),
             "--crps-max-scales must be 'none' or block sizes >= 2 in coarse px")


@pytest.mark.parametrize("text", ["4,x", ""])
def test_crps_max_scales_must_be_a_list(text):
    _refused(train("--stage", "correction", "--out", "unused", "--kind", "crps", "--crps-max-scales", text),
             "--crps-max-scales must be a comma list of int values")


@pytest.mark.parametrize("flag", [["--crps-max-scales", "32"], ["--crps-space", "log"], ["--crps-scales", "1,2"]])
def test_crps_loss_flags_go_with_crps_only(flag):
    _refused(train("--stage", "correction", "--out", "unused", *flag), "shape the loss of a --kind crps generator only")


@pytest.mark.parametrize("width", ["6", "0"])
def test_model_channels_refused(width):
    _refused(train("--stage", "correction", "--out", "unused", "--model-channels", width),
             f"--model-channels (unet.model_channels) must be a positive multiple of 4, got {width}")


def test_init_width_must_match():
    _refused(train("--stage", "correction", "--out", "unused", "--kind", "crps", "--init", "checkpoints/v2/correction",
                   "--model-channels", "32"),
             "is a U-Net 16 channels wide, the generator 32: pass --model-channels 16")


@pytest.mark.parametrize("old, new", [("--steps", "--iterations"), ("--lr", "--learning-rate"),
                                      ("--warmup-steps", "--warmup-iterations"),
                                      ("--ema-halflife-steps", "--ema-halflife-iterations")])
def test_old_flags_point_to_their_new_names(old, new):
    res = train("--stage", "downscaling", "--out", "unused", old, "5")
    _refused(res, f"Error: {old} is now {new} (", code=2)
    if old == "--steps":
        assert "--steps is now --iterations (optimiser iterations; --steps means sampler steps elsewhere)" in res.output


def test_the_gone_sigma_data_flag_says_why():
    _refused(train("--stage", "downscaling", "--out", "unused", "--sigma-data", "0.5"),
             "Error: --sigma-data is gone: train measures sigma_data on the stage's own training targets", code=2)


def test_settings_reach_the_trained_configs(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(recipe, "PairDataset", lambda *a, **k: _Pairs())

    def fake_train(train_cfg, data_cfg, unet_cfg, edm_cfg, sampler_cfg, *a, **k):
        seen.update(train=train_cfg, data=data_cfg, unet=unet_cfg, sampler=sampler_cfg)
        return {"step": train_cfg.iterations, "edm": {"sigma_data": edm_cfg.sigma_data, "denoised_max": 1.0},
                "history": []}
    monkeypatch.setattr(recipe, "train", fake_train)
    res = train("--stage", "correction", "--out", tmp_path / "w32", "--model-channels", "32", "--iterations", "9",
                "--learning-rate", "0.01", "--channel-mult", "1,2", "--attn-levels", "1", "--rho", "4", "--quiet")
    assert res.exit_code == 0, res.output
    assert seen["unet"].model_channels == 32 and seen["unet"].channel_mult == (1, 2) and seen["unet"].attn_levels == (1,)
    assert (seen["train"].iterations, seen["train"].learning_rate, seen["train"].batch_size) == (9, 0.01, 32)
    assert seen["sampler"].rho == 4.0 and seen["sampler"].num_steps == 1 and seen["data"].patch_lr == 32


def test_the_old_module_points_to_the_command(capsys):
    with pytest.raises(SystemExit) as e:
        recipe.main(["--stage", "downscaling", "--out", "unused"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "is now `precipfast train`" in err
