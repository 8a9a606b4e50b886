"""Training a stage with the shipped model's recipe (MODEL_CARD.md): `precipfast train` calls `run`.

    precipfast train --stage downscaling --out checkpoints/v2/downscaling [--resume]
    precipfast train --stage correction  --out checkpoints/v2/correction  [--resume]
    precipfast train --stage correction --kind mean+edm --mean checkpoints/v2/correction \
        --out checkpoints/v2/correction_mean_edm    (CorrDiff: diffusion on the regression's remainder)
    precipfast train --stage correction --kind crps --init checkpoints/v2/correction \
        --iterations 1000 --crps-max-scales 4,8 --out checkpoints/v2/correction_crps_max48   (the shipped correction)
    precipfast train --stage correction --model-channels 32 --out OUT   (a wider U-Net)

The configs of each stage are in train/recipe_configs.py. Stage 2 (downscaling) is an EDM diffusion model
of the 1 km residual over bilinear interpolation of the mean-pooled field. Stage 1 (correction) as shipped
is a generator of the coarse residual trained on the fair CRPS of pixels, block means and block maxima
(CRPS), one evaluation a member, started from the deterministic regression mean (CorrDiff's regression
stage, the default --kind); MODEL_CARD.md compares it with the regression, diffusion, CorrDiff's pair and
quantile mapping.
sigma_data and the denoised upper bound are measured on the stage's own training targets. The run is
resumable: checkpoints every `checkpoint_every` optimiser iterations, a rerun with --resume continues bit
for bit.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch

from precipfast.config import EDMConfig, from_dict
from precipfast.train.checkpoint import load_checkpoint, read_config
from precipfast.train.data import PairDataset
from precipfast.train.loop import train
from precipfast.train.recipe_configs import configs, with_overrides

MARGIN = 0.5   # working-space headroom above the largest training residual (x1.65 in rate)
CRPS_SETTINGS = ("crps_scales", "crps_space", "crps_max_scales")   # the loss of a "crps" stage only


def measured_edm(edm: EDMConfig, train_data: PairDataset, n: int = 2048, seed: int = 0,
                 mean_net=None) -> EDMConfig:
    """sigma_data = std of the residual targets (of the remainder target - mean_net(cond) for a
    "mean+edm" stage); denoised_max = the targets' maximum + MARGIN (4 decimals)."""
    gen = torch.Generator().manual_seed(seed)
    batches = [train_data.batch(64, gen) for _ in range(n // 64)]
    t = torch.cat([b["target"].double() for b in batches])
    spread = t
    if mean_net is not None:
        with torch.no_grad():
            mu = torch.cat([mean_net(torch.zeros_like(b["target"]), torch.zeros(len(b["target"])), b["cond"]).double()
                            for b in batches])
        spread = t - mu
    return dataclasses.replace(edm, sigma_data=round(float(spread.std()), 4),
                               denoised_max=round(float(t.max()) + MARGIN, 4))


def regression_mean(ckpt_dir, prefix: str = "mean_net") -> tuple[torch.nn.Module, dict]:
    """The regression network of a regression checkpoint: (its raw U-Net, its weights named as the
    `prefix`.* parameters of edm.Preconditioned): mean_net.* is the frozen mean of a "mean+edm" stage,
    net.* the starting weights of a "crps" generator."""
    den, cfg = load_checkpoint(ckpt_dir)
    if cfg["edm"].get("kind") != "regression":
        flag = "--mean" if prefix == "mean_net" else "--init"
        raise ValueError(f"{ckpt_dir} is a {cfg['edm'].get('kind')!r} checkpoint; {flag} needs a regression one")
    return den.net, {f"{prefix}.{k}": v for k, v in den.net.state_dict().items()}


def run(stage: str, out, *, kind: str | None = None, mean=None, init=None, overrides: dict | None = None,
        data_dir="../shared/data", device: str = "auto", resume: bool = False, progress: bool = True) -> dict:
    """Train one stage with the recipe's configs (train/recipe_configs.py), each setting in `overrides`
    ({field name: value} of TrainConfig, UNetConfig, DataConfig or SamplerConfig) replacing the recipe's.
    kind, mean and init choose the correction stage's design: mean is the regression checkpoint whose
    network is the frozen mean of a "mean+edm" stage, init the one a "crps" generator starts from. Every
    setting is checked before the data loads; sigma_data and denoised_max are measured on the training
    targets, or read from the checkpoint in `out` on resume. Returns the loop's summary (train/loop.py)."""
    overrides = dict(overrides or {})
    if stage != "correction" and (kind or mean or init):
        raise ValueError("--kind, --mean and --init choose the correction stage's design; the downscaling stage is EDM")
    c = configs(stage, kind)
    if set(overrides) & set(CRPS_SETTINGS) and c["edm"].kind != "crps":
        raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in CRPS_SETTINGS)} shape the loss of a "
                         "--kind crps generator only")
    c = with_overrides(c, overrides)
    if (c["edm"].kind == "mean+edm") != bool(mean):
        raise ValueError("--kind mean+edm needs --mean REGRESSION_CHECKPOINT, and only it takes one")
    if init and c["edm"].kind != "crps":
        raise ValueError("--init REGRESSION_CHECKPOINT starts a --kind crps generator; other kinds start from "
                         "random weights")
    mean_net, frozen = regression_mean(mean) if mean else (None, None)   # checked before the data loads
    width = read_config(init)["unet"]["model_channels"] if init else c["unet"].model_channels
    if width != c["unet"].model_channels:
        raise ValueError(f"--init {init} is a U-Net {width} channels wide, the generator "
                         f"{c['unet'].model_channels}: pass --model-channels {width}")
    init_weights = regression_mean(init, "net")[1] if init else None
    if c["train"].threads:
        torch.set_num_threads(c["train"].threads)
    train_data = PairDataset(c["data"], stage, "train", data_dir)
    val_data = PairDataset(c["data"], stage, "val", data_dir)
    if resume and (Path(out) / "config.json").is_file():
        edm = from_dict(EDMConfig, read_config(out)["edm"])   # measured once, at the start
    else:
        edm = measured_edm(c["edm"], train_data, mean_net=mean_net)
    if progress:
        print(json.dumps({"stage": stage, "sigma_data": edm.sigma_data, "denoised_max": edm.denoised_max}),
              file=sys.stderr, flush=True)
    return train(c["train"], c["data"], c["unet"], edm, c["sampler"], train_data, val_data, out, device=device,
                 resume=resume, progress=progress, frozen=frozen, init=init_weights)


def main(argv=None) -> None:
    """The recipe's old command line, now `precipfast train`: one line saying so, exit 2."""
    print("python -m precipfast.train.recipe is now `precipfast train` (same flags: --stage, --out, --data, --kind, "
          "--mean, --init, --crps-space, --crps-max-scales, --model-channels, --device, --resume; --steps is now "
          "--iterations)", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
