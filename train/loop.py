"""Training loop for one stage: AdamW, warm-up + cosine decay, gradient clipping, EMA weights,
bf16 autocast on CUDA, deterministic seeding, resume, safetensors checkpoints, periodic validation CRPS.

The same code runs on 2 CPU cores for small nets and on a CUDA GPU unchanged.
"""
from __future__ import annotations

import copy
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from precipfast import _version
from precipfast.config import DataConfig, EDMConfig, SamplerConfig, TrainConfig, UNetConfig, to_dict
from precipfast.denoiser import build_denoiser, load_weights
from precipfast.edm import karras_sigmas, sample
from precipfast.runtime.engines.device import resolve_device
from precipfast.train.checkpoint import load_optimizer_state, read_config, save_checkpoint
from precipfast.train.loss import batch_loss
from precipfast.transform import inverse
from precipfast.verify.scores import fair_crps, mae, nanmean


def learning_rate_at(iteration: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.learning_rate, then cosine decay to 10 % of it at the last iteration."""
    if iteration < cfg.warmup_iterations:
        return cfg.learning_rate * (iteration + 1) / cfg.warmup_iterations
    frac = (iteration - cfg.warmup_iterations) / max(1, cfg.iterations - cfg.warmup_iterations)
    return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, iteration: int, halflife_iterations: float) -> None:
    """EMA with a half-life in optimiser iterations (EDM's ema_halflife_kimg, counted in iterations here);
    short early memory."""
    beta = min(0.5 ** (1.0 / max(halflife_iterations, 1e-8)), (1 + iteration) / (10 + iteration))
    for p_ema, p in zip(ema.parameters(), net.parameters()):
        p_ema.lerp_(p.detach(), 1 - beta)


@torch.no_grad()
def validate(denoiser, batch: dict, stage: str, data_cfg: DataConfig, sampler_cfg: SamplerConfig,
             members: int, steps: int, seed: int) -> dict:
    """Fair ensemble CRPS (mm/h) of `members` samples vs truth, beside the MAE of the conditioning field alone
    (interpolation for downscaling, the raw satellite field for correction).

    The training loop's validation scores the EMA weights' fair CRPS on the held-out day every val_every
    iterations; `precipfast validate` samples held-out radar days through the runtime and scores them, and
    `precipfast evaluate` scores an ensemble file the user sampled against the user's own truth."""
    cond, base = batch["cond"], batch["base"]
    truth = inverse(batch["base"] + batch["target"], data_cfg.transform)
    sigmas = karras_sigmas(steps, sampler_cfg.sigma_min, sampler_cfg.sigma_max, sampler_cfg.rho, cond.dtype)
    gen = torch.Generator().manual_seed(seed)
    outs = []
    for _ in range(members):
        noise = {}
        noise_fn = lambda i: noise.setdefault(i, torch.randn(base.shape, generator=gen).to(cond.device))  # noqa
        resid = sample(denoiser, cond, noise_fn, sigmas.to(cond.device), noise_clip=sampler_cfg.noise_clip)
        outs.append(inverse(base + resid, data_cfg.transform))
    ens = torch.stack(outs)
    crps = nanmean(fair_crps(ens, truth))  # 4 members: the plain estimate is biased high
    base_mae = mae(inverse(base, data_cfg.transform), truth)
    return {"val_crps_mm_h": crps, "val_baseline_mae_mm_h": base_mae, "val_members": members,
            "val_steps": steps}


def train(train_cfg: TrainConfig, data_cfg: DataConfig, unet_cfg: UNetConfig, edm_cfg: EDMConfig,
          sampler_cfg: SamplerConfig, train_data, val_data, out_dir: str | Path, *, device: str = "auto",
          resume: bool = False, progress: bool = True, frozen: dict | None = None,
          init: dict | None = None) -> dict:
    """Train one stage; writes checkpoints to out_dir and returns the final summary dict.

    train_data / val_data: objects with `batch(batch_size, generator) -> dict(target, cond, base)`.
    frozen: {parameter name: tensor} loaded into the denoiser and never trained (the regression mean of
    a "mean+edm" stage, edm.Preconditioned); the optimiser holds only the other parameters.
    init: {parameter name: tensor} starting weights that are trained (a "crps" generator starts from the
    regression mean's network); ignored on resume, where the checkpoint's weights are loaded."""
    dev = resolve_device(device)
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    torch.manual_seed(train_cfg.seed)
    out = Path(out_dir)
    net = build_denoiser(unet_cfg, edm_cfg).to(dev).train()
    _load_params(net, frozen or {}, "frozen", edm_cfg.kind, freeze=True)
    _load_params(net, init or {}, "initial", edm_cfg.kind, freeze=False)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    trainable = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=train_cfg.learning_rate, weight_decay=train_cfg.weight_decay)
    # "step" (here and in each "history" entry): the optimiser iterations done, under the checkpoint
    # format's key (export/bundle.py reads it).
    config = {"stage": train_cfg.stage, "unet": to_dict(unet_cfg), "edm": to_dict(edm_cfg),
              "sampler": to_dict(sampler_cfg), "data": to_dict(data_cfg), "train": to_dict(train_cfg),
              "precipfast_version": _version.__version__, "step": 0, "history": []}
    start = 0
    if resume and (out / "config.json").is_file():
        old = read_config(out)
        for key in ("stage", "unet", "edm", "data"):
            if old[key] != config[key]:
                raise ValueError(f"cannot resume {out}: its {key} config differs from the requested one")
        load_weights(net, out / "model.safetensors")
        load_weights(ema, out / "ema.safetensors")
        load_optimizer_state(opt, out, old)
        start, config["history"] = int(old["step"]), old.get("history", [])
    elif (out / "config.json").is_file():
        raise ValueError(f"{out} already holds a checkpoint; pass --resume to continue it or choose a new --out")

    val_gen = torch.Generator().manual_seed(train_cfg.seed + 7919)
    val_batch = {k: v.to(dev) for k, v in val_data.batch(train_cfg.batch_size, val_gen).items()
                 if torch.is_tensor(v)}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else _null()
    bar = tqdm(range(start, train_cfg.iterations), initial=start, total=train_cfg.iterations, disable=not progress,
               file=sys.stderr, desc=f"train {train_cfg.stage}", dynamic_ncols=True)
    t0, loss_avg = time.time(), None
    for iteration in bar:
        # Seed from (seed, iteration) so a resumed run draws exactly what an uninterrupted one would.
        gen = torch.Generator().manual_seed(train_cfg.seed * 1_000_003 + iteration)
        batch = train_data.batch(train_cfg.batch_size, gen)
        for g in opt.param_groups:
            g["lr"] = learning_rate_at(iteration, train_cfg)
        with autocast:
            loss = batch_loss(net, batch["target"].to(dev), batch["cond"].to(dev), edm_cfg, gen, data_cfg.transform,
                              train_cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, train_cfg.grad_clip)
        opt.step()
        ema_update(ema, net, iteration, train_cfg.ema_halflife_iterations)
        lv = loss.detach().item()
        loss_avg = lv if loss_avg is None else 0.95 * loss_avg + 0.05 * lv
        bar.set_postfix(loss=f"{loss_avg:.4f}", gnorm=f"{float(grad_norm):.2f}")
        done = iteration + 1
        if done % train_cfg.val_every == 0 or done == train_cfg.iterations:
            metrics = validate(ema, val_batch, train_cfg.stage, data_cfg, sampler_cfg,
                               train_cfg.val_members, train_cfg.val_steps, train_cfg.seed)
            metrics.update(step=done, loss=loss_avg, elapsed_s=round(time.time() - t0, 1))
            config["history"].append(metrics)
            if progress:
                tqdm.write(f"iteration {done}: loss {loss_avg:.4f}  val CRPS {metrics['val_crps_mm_h']:.4f} mm/h  "
                           f"(conditioning-field MAE {metrics['val_baseline_mae_mm_h']:.4f})", file=sys.stderr)
        if done % train_cfg.checkpoint_every == 0 or done == train_cfg.iterations:
            config["step"] = done
            save_checkpoint(out, config, net, ema, opt)
    return config


@torch.no_grad()
def _load_params(net: torch.nn.Module, weights: dict, what: str, kind: str, freeze: bool) -> None:
    """Copy {parameter name: tensor} into net; freeze=True also stops their gradients."""
    params = dict(net.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise ValueError(f"{what} weights {unknown[:3]} are not parameters of the {kind} denoiser")
    for name, value in weights.items():
        params[name].copy_(value).requires_grad_(not freeze)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
