"""Model bundle: the one on-disk format between training and every runtime (MISSION.md "Model bundle").

A bundle is a directory
  manifest.json            format, versions, grids, pooling, transform, per-stage configs, file sha256s
  <stage>.safetensors      weights of the preconditioned denoiser D (keys `net.*`)
  <stage>.onnx             D(x, sigma, cond) -> denoised, dynamic batch/H/W (export/onnx.py)
  parity.json              ONNX Runtime vs torch report (export/parity.py)
for stages "correction" and/or "downscaling". `open_bundle` checks everything (format version, every
file's sha256, stage entries, channel counts) before any sampling, so a damaged or mismatched bundle
fails with one clear line instead of wrong rain.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

from precipfast import _version
from precipfast.config import STAGES, EDMConfig, SamplerConfig, TransformConfig, UNetConfig, from_dict, to_dict
from precipfast.errors import EngineMismatchError, InputFormatError, OutputError, PrecipfastError
from precipfast.runtime.bundle_check import check_closed_world, check_stage_pairs, read_parity_report

FORMAT = "precipfast-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PARITY = "parity.json"
BASE_COND = {"correction": "precip_lr", "downscaling": "precip_up"}  # first conditioning channel
STAGE_KEYS = ("unet", "edm", "sampler", "cond_channels", "weights")
TOP_KEYS = ("name", "model_version", "scale_factor", "lr_pixel_deg", "hr_pixel_deg", "pooling",
            "transform", "stages", "files")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A validated bundle directory (from `open_bundle`); accessors parse the manifest's configs."""
    path: Path
    manifest: dict

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s for s in STAGES if s in self.manifest["stages"])

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def transform(self) -> TransformConfig:
        return from_dict(TransformConfig, self.manifest["transform"])

    @cached_property
    def sha256(self) -> str:
        """Identity of the whole bundle: the manifest lists every file's sha256."""
        return sha256_file(self.path / MANIFEST)

    def stage(self, stage: str) -> dict:
        if stage not in self.manifest["stages"]:
            raise PrecipfastError(f"stage {stage!r} is not in bundle {self.path}; it has {list(self.stage_names)}")
        return self.manifest["stages"][stage]

    def unet(self, stage: str) -> UNetConfig:
        return from_dict(UNetConfig, self.stage(stage)["unet"])

    def edm(self, stage: str) -> EDMConfig:
        return from_dict(EDMConfig, self.stage(stage)["edm"])

    def sampler(self, stage: str) -> SamplerConfig:
        return from_dict(SamplerConfig, self.stage(stage)["sampler"])

    def cond_names(self, stage: str) -> tuple[str, ...]:
        return tuple(self.stage(stage)["cond_channels"])

    def file(self, stage: str, kind: str) -> Path:
        """Path of a stage's "weights" or "onnx" file; refuses a kind the bundle does not have."""
        rel = self.stage(stage).get(kind)
        if not rel:
            raise EngineMismatchError(f"bundle {self.path} has no {kind!r} file for stage {stage!r}; "
                                      f"re-export it with onnx=True to use the onnxruntime/tensorrt backends")
        return self.path / rel


# ---------------------------------------------------------------------------- writing
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
    return {"unet": to_dict(unet), "edm": to_dict(edm), "sampler": to_dict(sampler), "cond_channels": names,
            "weights": f"{stage}.safetensors",
            "train": {"steps": cfg.get("step"), "last_validation": history[-1]}}


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
    if pooling not in ("max", "mean") or int(scale_factor) != scale_factor or scale_factor < 1:
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
        _validate(tmp, manifest)
        _publish_permissions(tmp)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _export_stage(den, entry: dict, tmp: Path, parity: bool) -> dict | None:
    """Write <stage>.onnx; run the parity check and refuse the bundle when it fails."""
    from precipfast.export.onnx import export_onnx

    unet = from_dict(UNetConfig, entry["unet"])
    rel = entry["weights"].replace(".safetensors", ".onnx")
    export_onnx(den, tmp / rel, cond_channels=unet.cond_channels, in_channels=unet.in_channels)
    entry["onnx"] = rel
    if not parity:
        return None
    from precipfast.export.parity import parity_report, summary_line
    report = parity_report(den, tmp / rel)
    if not report["passed"]:
        raise EngineMismatchError(f"{rel}: {summary_line(report)}; the exported graph disagrees with torch")
    # The pair this report vouches for: open_bundle refuses any other pair (runtime/bundle_check.py).
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


# ---------------------------------------------------------------------------- reading
def open_bundle(path) -> Bundle:
    """Open and fully validate a bundle directory; raises EngineMismatchError on any inconsistency."""
    if isinstance(path, Bundle):
        return path
    root = Path(path)
    if not root.is_dir():
        raise EngineMismatchError(f"model bundle {str(root)!r} is not a directory; expected a bundle written "
                                  f"by `precipfast export` (a directory with {MANIFEST})")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise EngineMismatchError(f"model bundle {str(root)!r} has no {MANIFEST}")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EngineMismatchError(f"{mpath} is not valid JSON ({e})") from None
    _validate(root, manifest)
    from precipfast.export.parity import live_pair_check
    check_stage_pairs(root, manifest, read_parity_report(root, manifest),
                      live_pair_check(root, manifest["files"]))
    return Bundle(root, manifest)


def _validate(root: Path, m) -> None:
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        got = m.get("format") if isinstance(m, dict) else type(m).__name__
        raise EngineMismatchError(f"{root / MANIFEST} is not a precipfast bundle manifest "
                                  f"(format {got!r}, expected {FORMAT!r})")
    if m.get("format_version") != FORMAT_VERSION:
        raise EngineMismatchError(f"bundle {root} has format_version {m.get('format_version')!r}; precipfast "
                                  f"{_version.__version__} reads format_version {FORMAT_VERSION} only")
    missing = [k for k in TOP_KEYS if k not in m]
    if missing:
        raise EngineMismatchError(f"{root / MANIFEST} lacks {missing}")
    check_closed_world(root, m)  # before anything named in it is opened or hashed
    _check_files(root, m["files"])
    try:
        from_dict(TransformConfig, m["transform"])
        if not (isinstance(m["scale_factor"], int) and m["scale_factor"] >= 1 and m["pooling"] in ("max", "mean")):
            raise ValueError(f"scale_factor {m['scale_factor']!r} / pooling {m['pooling']!r} are invalid")
        if not m["stages"] or set(m["stages"]) - set(STAGES):
            raise ValueError(f"stages must be a non-empty subset of {STAGES}, got {sorted(m['stages'])}")
        for stage, entry in m["stages"].items():
            _check_stage(root, stage, entry, m["files"])
    except (ValueError, TypeError, KeyError) as e:
        raise EngineMismatchError(f"bundle {root}: {e}") from None


def _check_files(root: Path, files: dict) -> None:
    """Every listed file exists and has the manifest's sha256 (catches truncation and tampering)."""
    if not isinstance(files, dict):
        raise EngineMismatchError(f"{root / MANIFEST}: files must map names to sha256, got {type(files).__name__}")
    for rel, expected in files.items():
        p = root / rel
        if not p.is_file():
            raise EngineMismatchError(f"bundle {root} is missing {rel!r} (listed in {MANIFEST})")
        actual = sha256_file(p)
        if actual != expected:
            raise EngineMismatchError(
                f"bundle file {rel!r} in {root} fails its sha256 check: manifest {expected[:16]}..., file "
                f"{actual[:16]}... ({p.stat().st_size} bytes); it is corrupted or was modified, re-export it")


def _check_stage(root: Path, stage: str, entry: dict, files: dict) -> None:
    missing = [k for k in STAGE_KEYS if k not in entry]
    if missing:
        raise ValueError(f"stage {stage!r} entry lacks {missing}")
    unet = from_dict(UNetConfig, entry["unet"])
    from_dict(EDMConfig, entry["edm"])
    from_dict(SamplerConfig, entry["sampler"])
    names = entry["cond_channels"]
    if len(names) != unet.cond_channels:
        raise ValueError(f"stage {stage!r} lists {len(names)} conditioning channels {names} but its "
                         f"unet.cond_channels is {unet.cond_channels}")
    for kind in ("weights", "onnx"):
        if entry.get(kind) and entry[kind] not in files:
            raise ValueError(f"stage {stage!r} {kind} file {entry[kind]!r} is not listed in files")
    if entry.get("onnx"):
        from precipfast.export.onnx import onnx_io_shapes
        try:
            shapes = onnx_io_shapes(root / entry["onnx"])
        except Exception as e:  # onnx raises DecodeError and friends for damaged protobufs
            raise ValueError(f"{entry['onnx']} is not a readable ONNX model ({e})") from None
        want = {"x": unet.in_channels, "cond": len(names)}
        for inp, ch in want.items():
            got = shapes.get(inp, [None, None])[1]
            if got != ch:
                raise ValueError(f"{entry['onnx']} input {inp!r} has {got} channels; the manifest says {ch}")


# ---------------------------------------------------------------------------- loading and paths
def load_denoiser(bundle, stage: str):
    """The torch denoiser D of one stage (eval mode, CPU), from the bundle's safetensors."""
    from precipfast.train.checkpoint import build_denoiser, load_weights

    b = open_bundle(bundle)
    den = build_denoiser(b.unet(stage), b.edm(stage))
    load_weights(den, b.file(stage, "weights"))
    return den.eval()


def load_denoisers(bundle=None) -> dict:
    """{stage: D} for every stage of `bundle` (a path or Bundle; None = the default bundle)."""
    b = open_bundle(default_bundle_path() if bundle is None else bundle)
    return {s: load_denoiser(b, s) for s in b.stage_names}


def default_bundle_path(must_exist: bool = True) -> Path:
    """`precipfast/bundles/default` inside the installed package."""
    import precipfast
    p = Path(precipfast.__file__).parent / "bundles" / "default"
    if must_exist and not (p / MANIFEST).is_file():
        raise EngineMismatchError(f"no default model bundle at {p}; this installation ships none. Train and "
                                  f"export one (`precipfast export CKPT... --out {p}`) or pass --model BUNDLE")
    return p


def export_checkpoints(ckpt_dirs, out_dir, *, name: str = "precipfast", model_version: str = "0.1.0",
                       which: str = "ema", overwrite: bool = False, onnx: bool = True, parity: bool = True,
                       cond_names: dict | None = None, hr_pixel_deg: float = 0.01) -> Path:
    """Bundle training checkpoint directories (one per stage; config.json says which) into `out_dir`.

    The stages must agree on data.scale_factor, data.pooling, data.transform and data.hr_pixel_km; the
    coarse pixel is hr_pixel_deg * scale_factor. `which` picks the "ema" (default) or "model" weights."""
    from precipfast.train.checkpoint import load_checkpoint

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
