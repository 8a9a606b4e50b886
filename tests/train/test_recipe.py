"""train/recipe.py: the correction designs' configs, the remainder's sigma_data, and refused flag mixes."""
import argparse

import pytest
import torch

from precipfast.config import EDMConfig
from precipfast.train import recipe


def test_correction_kinds():
    assert recipe.configs("correction")["edm"].kind == "regression"
    for kind in ("regression", "crps"):      # one evaluation: the mean, or one member of the generator
        c = recipe.configs("correction", kind)
        assert c["edm"].kind == kind and c["sampler"].num_steps == 1 and c["train"].val_steps == 1
    for kind in ("edm", "mean+edm"):
        c = recipe.configs("correction", kind)
        assert c["edm"].kind == kind and c["sampler"].num_steps == 8


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


def test_design_flags_belong_to_the_correction_stage(capsys):
    with pytest.raises(SystemExit) as e:
        recipe.main(["--stage", "downscaling", "--kind", "edm", "--out", "unused"])
    assert e.value.code == 2 and "choose the correction stage's design" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--kind", "mean+edm"], ["--kind", "edm", "--mean", "checkpoints/v2/correction"]])
def test_mean_goes_with_mean_plus_edm_only(argv, capsys):
    with pytest.raises(SystemExit) as e:
        recipe.main(["--stage", "correction", "--out", "unused", *argv])
    assert e.value.code == 2 and "--kind mean+edm needs --mean" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["regression", "edm"])
def test_init_goes_with_crps_only(kind, capsys):
    with pytest.raises(SystemExit) as e:
        recipe.main(["--stage", "correction", "--out", "unused", "--kind", kind, "--init", "checkpoints/v2/correction"])
    assert e.value.code == 2 and "--init REGRESSION_CHECKPOINT starts a --kind crps generator" in capsys.readouterr().err


def test_init_needs_a_regression_checkpoint(capsys):
    with pytest.raises(ValueError, match="'edm' checkpoint; --init needs a regression one"):
        recipe.main(["--stage", "correction", "--out", "unused", "--kind", "crps", "--init", "checkpoints/v2/correction_edm"])


def test_crps_max_scales_parsed():
    ap, train = argparse.ArgumentParser(), recipe.configs("correction", "crps")["train"]
    assert recipe.with_max_scales(ap, train, "32").crps_max_scales == (32,)
    assert recipe.with_max_scales(ap, train, "4,8,32").crps_max_scales == (4, 8, 32)
    assert recipe.with_max_scales(ap, train, "None").crps_max_scales == ()


@pytest.mark.parametrize("text", ["1", "4,x", "", "8,0"])
def test_crps_max_scales_refused(text, capsys):
    with pytest.raises(SystemExit) as e:
        recipe.main(["--stage", "correction", "--out", "unused", "--kind", "crps", "--crps-max-scales", text])
    assert e.value.code == 2 and "--crps-max-scales must be 'none' or block sizes >= 2 in coarse px" in \
        capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--crps-max-scales", "32"], ["--crps-space", "log"]])
def test_crps_loss_flags_go_with_crps_only(flag, capsys):
    with pytest.raises(SystemExit) as e:
        recipe.main(["--stage", "correction", "--out", "unused", *flag])
    assert e.value.code == 2 and "shape the loss of a --kind crps generator only" in capsys.readouterr().err


@pytest.mark.parametrize("width", ["6", "0"])
def test_model_channels_refused(width, capsys):
    with pytest.raises(SystemExit) as e:
        recipe.main(["--stage", "correction", "--out", "unused", "--model-channels", width])
    assert e.value.code == 2 and f"--model-channels (unet.model_channels) must be a positive multiple of 4, got {width}" \
        in capsys.readouterr().err


def test_init_width_must_match(capsys):
    with pytest.raises(SystemExit) as e:
        recipe.main(["--stage", "correction", "--out", "unused", "--kind", "crps", "--init", "checkpoints/v2/correction",
                     "--model-channels", "32"])
    assert e.value.code == 2 and "is a U-Net 16 channels wide, the generator 32: pass --model-channels 16" in \
        capsys.readouterr().err


def test_model_channels_reach_the_trained_unet(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(recipe, "PairDataset", lambda *a, **k: _Pairs())
    monkeypatch.setattr(recipe, "train",
                        lambda train_cfg, data_cfg, unet_cfg, *a, **k: seen.update(unet=unet_cfg) or {"history": []})
    recipe.main(["--stage", "correction", "--out", str(tmp_path / "w32"), "--model-channels", "32"])
    assert seen["unet"].model_channels == 32 and seen["unet"].channel_mult == (1, 2, 2)
