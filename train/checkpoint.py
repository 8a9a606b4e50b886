"""Training checkpoints: safetensors weights + `config.json` beside them (never pickles).

A checkpoint directory holds
  config.json          {"stage", "unet", "edm", "sampler", "data", "train", "step", ...}
  ema.safetensors      EMA weights of the raw network F (what inference uses)
  model.safetensors    live weights (for resume)
  optim.safetensors    AdamW moments, flattened (for resume); scalar state lives in config.json
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from precipfast.config import EDMConfig, UNetConfig, from_dict, to_dict
from precipfast.denoiser import build_denoiser, load_weights
from precipfast.edm import Preconditioned
from precipfast.errors import EngineMismatchError, InputFormatError

CONFIG_NAME = "config.json"


def _atomic_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def save_checkpoint(out_dir: str | os.PathLike, config: dict, net: torch.nn.Module,
                    ema: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Write weights first and config.json last, each atomically, so a crash never leaves a checkpoint
    whose config points at weights that are not there."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, module in (("model", net), ("ema", ema)):
        state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        save_file(state, str(out / f"{name}.safetensors.tmp"))
        os.replace(out / f"{name}.safetensors.tmp", out / f"{name}.safetensors")
    cfg = dict(config)
    if optimizer is not None:
        tensors, scalars = {}, {}
        for pid, st in optimizer.state_dict()["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v) and v.ndim > 0:
                    tensors[f"{pid}.{k}"] = v.contiguous().cpu()
                else:
                    scalars[f"{pid}.{k}"] = float(v)
        save_file(tensors, str(out / "optim.safetensors.tmp"))
        os.replace(out / "optim.safetensors.tmp", out / "optim.safetensors")
        cfg["optim_scalars"] = scalars
    _atomic_json(out / CONFIG_NAME, cfg)


def read_config(ckpt_dir: str | os.PathLike) -> dict:
    path = Path(ckpt_dir) / CONFIG_NAME
    if not Path(ckpt_dir).is_dir():
        raise InputFormatError(f"checkpoint {str(ckpt_dir)!r} is not a directory; expected a training output "
                               f"directory with {CONFIG_NAME} and ema.safetensors")
    if not path.is_file():
        raise InputFormatError(f"checkpoint {str(ckpt_dir)!r} has no {CONFIG_NAME}; expected the directory "
                               "written by `precipfast train`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise EngineMismatchError(f"{path} is not valid JSON ({e})") from None


def load_checkpoint(ckpt_dir: str | os.PathLike, which: str = "ema") -> tuple[Preconditioned, dict]:
    """Rebuild the denoiser of a checkpoint with its `which` weights ("ema" or "model")."""
    cfg = read_config(ckpt_dir)
    unet_cfg = from_dict(UNetConfig, cfg["unet"])
    edm_cfg = from_dict(EDMConfig, cfg["edm"])
    den = build_denoiser(unet_cfg, edm_cfg)
    load_weights(den, Path(ckpt_dir) / f"{which}.safetensors")
    return den.eval(), cfg


def load_optimizer_state(optimizer: torch.optim.Optimizer, ckpt_dir: str | os.PathLike, cfg: dict) -> None:
    """Restore AdamW state written by `save_checkpoint`."""
    tensors = load_file(str(Path(ckpt_dir) / "optim.safetensors"))
    state: dict = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for key, v in cfg.get("optim_scalars", {}).items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = torch.tensor(v)
    sd = optimizer.state_dict()
    sd["state"] = state
    optimizer.load_state_dict(sd)


def denoiser_config(unet_cfg: UNetConfig, edm_cfg: EDMConfig) -> dict:
    return {"unet": to_dict(unet_cfg), "edm": to_dict(edm_cfg)}
