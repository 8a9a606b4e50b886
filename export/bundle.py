"""Model bundle, write side: the one on-disk format between training and every runtime (MISSION.md
"Model bundle"); runtime/engines/bundle.py reads and checks it.

`write_bundle` writes everything to a temporary directory and renames it into place, so a failed
export (a failed parity check included) leaves no partial bundle.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from precipfast import _version
from precipfast.config import (
    POOLINGS,
    STAGES,
    WIDE_ERROR_PRIOR,
    AmplitudeConfig,
    DegradationConfig,
    EDMConfig,
    SamplerConfig,
    TransformConfig,
    UNetConfig,
    from_dict,
    to_dict,
)
from precipfast.errors import EngineMismatchError, InputFormatError, OutputError
from precipfast.export.onnx import export_onnx
from precipfast.runtime.engines.bundle import BASE_COND, FORMAT, FORMAT_VERSION, MANIFEST, PARITY, validate_manifest
from precipfast.runtime.engines.parity import parity_report, summary_line
from precipfast.runtime.files.digest import sha256_file
from precipfast.train.checkpoint import load_checkpoint
from precipfast.train.degrade import margin_px


def _stage_entry(stage: str, denoiser, cfg: dict, cond_names) -> dict:
    """Manifest entry for one stage, checking the module against its config dict."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    missing = [k for k in ("unet", "edm", "sampler") if k not in cfg]
    if missing:
        raise ValueError(f"stage {stage!r} config lacks {missing}; expected a checkpoint config.json dict")
    unet, edm = from_dict(UNetConfig, cfg["unet"]), from_dict(EDMConfig, cfg["edm"])
    sampler = from_dict(SamplerConfig, cfg["sampler"])
    net_cfg = getattr(denoiser.net, "cfg", unet)
    if net_cfg != unet or abs(denoiser.sigma_data - edm.sigma_data) > 1e-12:
        raise ValueError(f"stage {stage!r}: the module ({net_cfg}, sigma_data={denoiser.sigma_data}) does not "
                         f"match its config ({unet}, sigma_data={edm.sigma_data})")
    names = list(cond_names or cfg.get("cond_names") or ([BASE_COND[stage]] if unet.cond_channels == 1 else []))
    if len(names) != unet.cond_channels:
        raise ValueError(f"stage {stage!r} has unet.cond_channels={unet.cond_channels} but conditioning names "
                         f"{names}; pass cond_names (first {BASE_COND[stage]!r}, then the aux names)")
    history = cfg.get("history") or [{}]
    entry = {"unet": to_dict(unet), "edm": to_dict(edm), "sampler": to_dict(sampler), "cond_channels": names,
             "weights": f"{stage}.safetensors",
             "train": {"steps": cfg.get("step"), "last_validation": history[-1]}}
    crop = (cfg.get("data") or {}).get("patch_lr")
    if stage == "correction" and crop:
        # The coarse stage runs at the size of its training crops, overlapping by a quarter: one evaluation a
        # member costs little at any tile size, and on 128 px domains a 32 px-trained generator scores 3 %
        # worse coarse CRPS than tiled at 32 (docs/experiments.md, "The runtime's route"). The diffusion
        # stage keeps the user's --tile (128 px default: the measured speed/skill trade, docs/sampling.md).
        entry["tile"] = {"size": int(crop), "overlap": int(crop) // 4}
    data = cfg.get("data") or {}
    if stage == "correction" and data.get("degradation", {}).get("enabled", True):
        # how far the training's satellite-error model moved rain: beyond it the corrected field is dry
        # (runtime/sampling/dry.py)
        deg = from_dict(DegradationConfig, data.get("degradation", {}))
        entry["rain_reach_px"] = margin_px(deg, WIDE_ERROR_PRIOR if data.get("error_prior") == "wide" else None)
    # rules chosen after training on the held-out cases, recorded in the checkpoint's "runtime" section
    # (runtime/sampling/amplitude.py, dry.py; docs/experiments.md, "The amplitude dilemma")
    rules = cfg.get("runtime") or {}
    unknown = set(rules) - {"amplitude", "rain_inside_px"}
    if unknown or (rules and stage != "correction"):
        raise ValueError(f"stage {stage!r} config runtime section has {sorted(rules)}; expected amplitude and "
                         f"rain_inside_px, on the correction stage only")
    if "amplitude" in rules:
        entry["amplitude"] = to_dict(from_dict(AmplitudeConfig, rules["amplitude"]))
    if "rain_inside_px" in rules:
        entry["rain_inside_px"] = int(rules["rain_inside_px"])
    return entry


def write_bundle(out_dir, stages: dict, *, name: str, model_version: str, scale_factor: int, pooling: str,
                 transform: dict, lr_pixel_deg: float = 0.1, hr_pixel_deg: float = 0.01,
                 hr_pixel_km: float = 1.0, cond_names: dict | None = None, overwrite: bool = False,
                 onnx: bool = True, parity: bool = True) -> Path:
    """Write a bundle for `stages` {stage: (Preconditioned, checkpoint config dict)} to `out_dir`.

    Everything is written to a temporary directory beside `out_dir` and renamed into place at the end,
    so a failure (including a failed parity check) leaves no partial bundle. Returns the bundle path."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise OutputError(f"bundle directory {str(out)!r} already exists; pass overwrite=True (--overwrite) "
                          "or choose another --out")
    if not stages:
        raise ValueError("write_bundle needs at least one stage")
    if pooling not in POOLINGS or int(scale_factor) != scale_factor or scale_factor < 1:
        raise ValueError(f"pooling must be 'max' or 'mean' and scale_factor a positive int; got {pooling!r}, "
                         f"{scale_factor!r}")
    if abs(lr_pixel_deg / hr_pixel_deg - scale_factor) > 1e-6 * scale_factor:
        raise ValueError(f"lr_pixel_deg / hr_pixel_deg = {lr_pixel_deg / hr_pixel_deg:g} must equal "
                         f"scale_factor={scale_factor}")
    transform_cfg = from_dict(TransformConfig, dict(transform))
    entries = {s: _stage_entry(s, den, cfg, (cond_names or {}).get(s)) for s, (den, cfg) in stages.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        reports = {}
        for s, (den, _) in stages.items():
            den = den.eval()
            state = {k: v.detach().contiguous().cpu() for k, v in den.state_dict().items()}
            save_file(state, str(tmp / entries[s]["weights"]), metadata={"format": FORMAT, "stage": s})
            if onnx:
                reports[s] = _export_stage(den, entries[s], tmp, parity)
        if reports and parity:
            (tmp / PARITY).write_text(json.dumps(reports, indent=2))
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": name,
                    "model_version": model_version, "precipfast_version": _version.__version__,
                    "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "scale_factor": int(scale_factor), "lr_pixel_deg": lr_pixel_deg, "hr_pixel_deg": hr_pixel_deg,
                    "lr_pixel_km": hr_pixel_km * scale_factor, "hr_pixel_km": hr_pixel_km, "pooling": pooling,
                    "upsample": "bilinear", "transform": to_dict(transform_cfg), "stages": entries,
                    "files": {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        validate_manifest(tmp, manifest)
        _publish_permissions(tmp)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _export_stage(den, entry: dict, tmp: Path, parity: bool) -> dict | None:
    """Write <stage>.onnx; run the parity check and refuse the bundle when it fails."""

    unet = from_dict(UNetConfig, entry["unet"])
    rel = entry["weights"].replace(".safetensors", ".onnx")
    export_onnx(den, tmp / rel, cond_channels=unet.cond_channels, in_channels=unet.in_channels)
    entry["onnx"] = rel
    if not parity:
        return None
    report = parity_report(den, tmp / rel)
    if not report["passed"]:
        raise EngineMismatchError(f"{rel}: {summary_line(report)}; the exported graph disagrees with torch")
    # The pair this report vouches for: open_bundle refuses any other pair (runtime/engines/bundle_check.py).
    report.update(weights_sha256=sha256_file(tmp / entry["weights"]), onnx_sha256=sha256_file(tmp / rel))
    return report


def _publish_permissions(tmp: Path) -> None:
    """mkdtemp and safetensors create owner-only entries; a bundle is meant to be read by everyone the
    umask allows, like any installed model."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o755 & ~umask)
    for p in tmp.iterdir():
        os.chmod(p, 0o644 & ~umask)


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished bundle into place; an old bundle is removed only after the new one is there."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_checkpoints(ckpt_dirs, out_dir, *, name: str = "precipfast", model_version: str = "0.1.0",
                       which: str = "ema", overwrite: bool = False, onnx: bool = True, parity: bool = True,
                       cond_names: dict | None = None, hr_pixel_deg: float = 0.01) -> Path:
    """Bundle training checkpoint directories (one per stage; config.json says which) into `out_dir`.

    The stages must agree on data.scale_factor, data.pooling, data.transform and data.hr_pixel_km; the
    coarse pixel is hr_pixel_deg * scale_factor. `which` picks the "ema" (default) or "model" weights."""

    stages, data = {}, {}
    for d in ckpt_dirs:
        den, cfg = load_checkpoint(d, which)
        stage = cfg.get("stage")
        if stage not in STAGES or "data" not in cfg:
            raise InputFormatError(f"checkpoint {str(d)!r} has stage {stage!r} and data "
                                   f"{'present' if 'data' in cfg else 'missing'}; expected a stage in {STAGES} "
                                   "and a data section (a `precipfast train` output)")
        if stage in stages:
            raise InputFormatError(f"two checkpoints for stage {stage!r}: {data[stage][0]} and {d}")
        stages[stage], data[stage] = (den, cfg), (d, cfg["data"])
    if not stages:
        raise InputFormatError("export needs at least one checkpoint directory")
    ref_dir, ref = next(iter(data.values()))
    for key in ("scale_factor", "pooling", "transform", "hr_pixel_km"):
        for d, dc in data.values():
            if dc.get(key) != ref.get(key):
                raise InputFormatError(f"checkpoints disagree on data.{key}: {ref.get(key)!r} in {ref_dir}, "
                                       f"{dc.get(key)!r} in {d}; a bundle has one value")
    sf = int(ref["scale_factor"])
    return write_bundle(out_dir, stages, name=name, model_version=model_version, scale_factor=sf,
                        pooling=ref["pooling"], transform=ref["transform"], lr_pixel_deg=hr_pixel_deg * sf,
                        hr_pixel_deg=hr_pixel_deg, hr_pixel_km=float(ref.get("hr_pixel_km", 1.0)),
                        cond_names=cond_names, overwrite=overwrite, onnx=onnx, parity=parity)
