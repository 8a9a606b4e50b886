"""The shipped model's recipe (MODEL_CARD.md): the configs of each stage, in one place.

Torch-free, so that `precipfast train --help` states the recipe's defaults without importing torch;
train/recipe.py trains with them (`precipfast train`).
"""
from __future__ import annotations

import dataclasses

from precipfast.config import KINDS, DataConfig, EDMConfig, SamplerConfig, TrainConfig, UNetConfig

ONE_SHOT = ("regression", "crps")   # kinds sampled with one evaluation (edm.karras_sigmas(1))
CRPS = dict(crps_scales=(1, 2, 4, 8), crps_space="rate", crps_max_scales=(4, 8, 32))   # train/loss.py crps_loss
CORRECTION_KIND = "regression"      # the correction stage's kind unless --kind says otherwise
DESIGNS = (("downscaling", None), *(("correction", kind) for kind in KINDS))   # every (stage, kind) it trains


def configs(stage: str, kind: str | None = None) -> dict:
    """UNet, EDM (without the measured fields), sampler, data and train configs of one stage. For the
    correction stage, kind "edm" makes it a diffusion model of the coarse residual (an ensemble of
    corrected fields, one per member), "mean+edm" CorrDiff's regression mean plus diffusion on its
    remainder and "crps" a CRPS-trained generator, instead of the regression mean (MODEL_CARD.md compares
    them)."""
    data = DataConfig()
    if stage == "downscaling":
        return dict(unet=UNetConfig(model_channels=16, channel_mult=(1, 2, 2), attn_levels=(2,)),
                    edm=EDMConfig(), data=data,
                    sampler=SamplerConfig(num_steps=8, sigma_max=4.0, rho=3.0, noise_clip=2.5),   # the shipped sampler
                    train=TrainConfig(stage=stage, iterations=2500, batch_size=16, learning_rate=2e-3,
                                      warmup_iterations=100, ema_halflife_iterations=200, val_every=500,
                                      checkpoint_every=250, threads=1))
    kind = kind or CORRECTION_KIND
    return dict(unet=UNetConfig(model_channels=16, channel_mult=(1, 2, 2), attn_levels=(2,)),
                edm=EDMConfig(kind=kind), sampler=SamplerConfig(num_steps=1 if kind in ONE_SHOT else 8),
                data=dataclasses.replace(data, patch_lr=32),
                train=TrainConfig(stage=stage, iterations=1500, batch_size=32, learning_rate=1e-3,
                                  warmup_iterations=100, ema_halflife_iterations=200, val_every=500,
                                  checkpoint_every=250, threads=1, val_steps=1 if kind in ONE_SHOT else 8,
                                  **(CRPS if kind == "crps" else {})))


def with_overrides(c: dict, overrides: dict) -> dict:
    """`c` (from `configs`) with each {field name: value} replacing that field of the config that has it
    (train, unet, data or sampler), checked by that config; a name none of them has is a ValueError."""
    out, left = dict(c), dict(overrides)
    for key in ("train", "unet", "data", "sampler"):
        names = {f.name for f in dataclasses.fields(out[key])}
        mine = {k: left.pop(k) for k in list(left) if k in names}
        if mine:
            out[key] = dataclasses.replace(out[key], **mine)
    if left:
        raise ValueError(f"no training setting is named {', '.join(sorted(left))}")
    return out
