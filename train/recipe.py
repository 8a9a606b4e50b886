"""The shipped model's training recipe (MODEL_CARD.md): the configs of each stage, in one place.

    python -m precipfast.train.recipe --stage downscaling --out checkpoints/v2/downscaling [--resume]
    python -m precipfast.train.recipe --stage correction  --out checkpoints/v2/correction  [--resume]
    python -m precipfast.train.recipe --stage correction --kind mean+edm --mean checkpoints/v2/correction \
        --out checkpoints/v2/correction_mean_edm    (CorrDiff: diffusion on the regression's remainder)
    python -m precipfast.train.recipe --stage correction --kind crps --init checkpoints/v2/correction \
        --steps 1000 --crps-max-scales 4,8 --out checkpoints/v2/correction_crps_max48   (the shipped correction)
    python -m precipfast.train.recipe --stage correction --model-channels 32 --out OUT   (a wider U-Net)

Stage 2 (downscaling) is an EDM diffusion model of the 1 km residual over bilinear interpolation of the
mean-pooled field. Stage 1 (correction) as shipped is a generator of the coarse residual trained on the
fair CRPS of pixels, block means and block maxima (CRPS), one evaluation a member, started from the
deterministic regression mean (CorrDiff's regression stage, the default --kind); MODEL_CARD.md compares
it with the regression, diffusion, CorrDiff's pair and quantile mapping.
sigma_data and the denoised upper bound are measured on the stage's own training targets. The run is
resumable: checkpoints every `checkpoint_every` steps, a rerun with --resume continues bit for bit.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from precipfast.config import DataConfig, EDMConfig, SamplerConfig, TrainConfig, UNetConfig, from_dict
from precipfast.train.checkpoint import load_checkpoint, read_config
from precipfast.train.data import PairDataset
from precipfast.train.loop import train

MARGIN = 0.5   # working-space headroom above the largest training residual (x1.65 in rate)
ONE_SHOT = ("regression", "crps")   # kinds sampled with one evaluation (edm.karras_sigmas(1))
CRPS = dict(crps_scales=(1, 2, 4, 8), crps_space="rate", crps_max_scales=(4, 8, 32))   # train/loss.py crps_loss


def configs(stage: str, kind: str | None = None) -> dict:
    """UNet, EDM (without the measured fields), sampler, data and train configs of one stage. For the
    correction stage, kind "edm" makes it a diffusion model of the coarse residual (an ensemble of
    corrected fields, one per member) and "mean+edm" CorrDiff's regression mean plus diffusion on its
    remainder, instead of the regression mean (MODEL_CARD.md compares the three)."""
    data = DataConfig()
    if stage == "downscaling":
        return dict(unet=UNetConfig(model_channels=16, channel_mult=(1, 2, 2), attn_levels=(2,)),
                    edm=EDMConfig(), sampler=SamplerConfig(num_steps=8, sigma_max=4.0, rho=3.0), data=data,
                    train=TrainConfig(stage=stage, steps=2500, batch_size=16, lr=2e-3, warmup_steps=100,
                                      ema_halflife_steps=200, val_every=500, checkpoint_every=250, threads=1))
    kind = kind or "regression"
    return dict(unet=UNetConfig(model_channels=16, channel_mult=(1, 2, 2), attn_levels=(2,)),
                edm=EDMConfig(kind=kind), sampler=SamplerConfig(num_steps=1 if kind in ONE_SHOT else 8),
                data=dataclasses.replace(data, patch_lr=32),
                train=TrainConfig(stage=stage, steps=1500, batch_size=32, lr=1e-3, warmup_steps=100,
                                  ema_halflife_steps=200, val_every=500, checkpoint_every=250, threads=1,
                                  val_steps=1 if kind in ONE_SHOT else 8, **(CRPS if kind == "crps" else {})))


def with_max_scales(ap: argparse.ArgumentParser, train: TrainConfig, text: str) -> TrainConfig:
    """train with --crps-max-scales: 'none' or comma-separated block sizes in coarse px (TrainConfig checks
    the sizes)."""
    try:
        scales = () if text.strip().lower() == "none" else tuple(int(k) for k in text.split(","))
        return dataclasses.replace(train, crps_max_scales=scales)
    except ValueError:
        ap.error(f"--crps-max-scales must be 'none' or block sizes >= 2 in coarse px, like 4,8,32; got {text!r}")


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


def main(argv=None) -> None:
    from pathlib import Path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=["correction", "downscaling"], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--kind", choices=["regression", "edm", "mean+edm", "crps"], default=None,
                    help="the correction stage's model (default: the recipe's, regression)")
    ap.add_argument("--mean", default=None,
                    help="mean+edm: the regression checkpoint whose network is the frozen mean (CorrDiff)")
    ap.add_argument("--init", default=None,
                    help="crps: start from this regression checkpoint's network (then train all of it)")
    ap.add_argument("--crps-space", choices=["rate", "log"], default=None, help="crps: score mm/h or log1p")
    ap.add_argument("--crps-max-scales", default=None, metavar="K,K,..",
                    help="crps: the block-maximum scales scored, in coarse px ('none': no block maxima; "
                         f"default {','.join(map(str, CRPS['crps_max_scales']))})")
    ap.add_argument("--steps", type=int, default=None, help="override the recipe's optimiser steps")
    ap.add_argument("--model-channels", type=int, default=None, metavar="N",
                    help="override the U-Net's width at the finest level (the recipe's: 16; a multiple of 4)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    if args.stage != "correction" and (args.kind or args.mean or args.init):
        ap.error("--kind, --mean and --init choose the correction stage's design; the downscaling stage is EDM")
    c = configs(args.stage, args.kind)
    if (args.crps_space or args.crps_max_scales is not None) and c["edm"].kind != "crps":
        ap.error("--crps-space and --crps-max-scales shape the loss of a --kind crps generator only")
    if args.crps_space:
        c["train"] = dataclasses.replace(c["train"], crps_space=args.crps_space)
    if args.crps_max_scales is not None:
        c["train"] = with_max_scales(ap, c["train"], args.crps_max_scales)
    if args.steps:
        c["train"] = dataclasses.replace(c["train"], steps=args.steps)
    if args.model_channels is not None:
        try:
            c["unet"] = dataclasses.replace(c["unet"], model_channels=args.model_channels)
        except ValueError as e:
            ap.error(str(e))
    torch.set_num_threads(c["train"].threads or torch.get_num_threads())
    if (c["edm"].kind == "mean+edm") != bool(args.mean):
        ap.error("--kind mean+edm needs --mean REGRESSION_CHECKPOINT, and only it takes one")
    if args.init and c["edm"].kind != "crps":
        ap.error("--init REGRESSION_CHECKPOINT starts a --kind crps generator; other kinds start from random weights")
    mean_net, frozen = regression_mean(args.mean) if args.mean else (None, None)   # checked before the data loads
    width = read_config(args.init)["unet"]["model_channels"] if args.init else c["unet"].model_channels
    if width != c["unet"].model_channels:
        ap.error(f"--init {args.init} is a U-Net {width} channels wide, the generator {c['unet'].model_channels}: "
                 f"pass --model-channels {width}")
    init = regression_mean(args.init, "net")[1] if args.init else None
    train_data = PairDataset(c["data"], args.stage, "train", args.data)
    val_data = PairDataset(c["data"], args.stage, "val", args.data)
    if args.resume and (Path(args.out) / "config.json").is_file():
        edm = from_dict(EDMConfig, read_config(args.out)["edm"])   # measured once, at the start
    else:
        edm = measured_edm(c["edm"], train_data, mean_net=mean_net)
    print(json.dumps({"stage": args.stage, "sigma_data": edm.sigma_data, "denoised_max": edm.denoised_max}),
          flush=True)
    summary = train(c["train"], c["data"], c["unet"], edm, c["sampler"], train_data, val_data, args.out,
                    device=args.device, resume=args.resume, progress=True, frozen=frozen,
                    init=init)
    print(json.dumps(summary["history"][-1] if summary["history"] else {}), flush=True)


if __name__ == "__main__":
    main()
