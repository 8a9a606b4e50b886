"""Model bundle, read side: open a bundle directory, check it whole, and hand out its configs, files and
torch denoisers (MISSION.md "Model bundle"; export/bundle.py writes the same format).

A bundle is a directory
  manifest.json            format, versions, grids, pooling, transform, per-stage configs, file sha256s
  <stage>.safetensors      weights of the preconditioned denoiser D (keys `net.*`)
  <stage>.onnx             D(x, sigma, cond) -> denoised, dynamic batch/H/W (export/onnx.py)
  parity.json              ONNX Runtime vs torch report (runtime/engines/parity.py)
for stages "correction" and/or "downscaling". `open_bundle` checks everything (format version, every
file's sha256, stage entries, channel counts) before any sampling, so a damaged or mismatched bundle
fails with one clear line instead of wrong rain.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from precipfast import _version
from precipfast.config import (
    POOLINGS,
    STAGES,
    AmplitudeConfig,
    EDMConfig,
    SamplerConfig,
    TransformConfig,
    UNetConfig,
    from_dict,
)
from precipfast.denoiser import build_denoiser, load_weights
from precipfast.errors import EngineMismatchError, PrecipfastError
from precipfast.runtime.engines.bundle_check import check_closed_world, check_stage_pairs, read_parity_report
from precipfast.runtime.engines.parity import live_pair_check
from precipfast.runtime.files.digest import sha256_file

FORMAT = "precipfast-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PARITY = "parity.json"
BASE_COND = {"correction": "precip_lr", "downscaling": "precip_up"}  # first conditioning channel
STAGE_KEYS = ("unet", "edm", "sampler", "cond_channels", "weights")
TOP_KEYS = ("name", "model_version", "scale_factor", "lr_pixel_deg", "hr_pixel_deg", "pooling",
            "transform", "stages", "files")


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

    def tiling(self, stage: str) -> tuple[int, int] | None:
        """(tile, overlap) in pixels that the stage must be sampled with, or None where the user's --tile
        and --overlap apply (see `_check_tile`)."""
        t = self.stage(stage).get("tile")
        return None if t is None else (int(t["size"]), int(t["overlap"]))

    def rain_reach(self, stage: str) -> int | None:
        """Coarse pixels within which the stage's training truth had rain around any satellite rain
        (runtime/sampling/dry.py), or None where the bundle does not say."""
        r = self.stage(stage).get("rain_reach_px")
        return None if r is None else int(r)

    def rain_inside(self, stage: str) -> int | None:
        """Radius (coarse px) of the input square all >= 1 mm/h inside which the stage's members have no dry holes
        (runtime/sampling/dry.py), or None where the bundle does not say."""
        r = self.stage(stage).get("rain_inside_px")
        return None if r is None else int(r)

    def amplitude(self, stage: str) -> AmplitudeConfig | None:
        """The stage's amplitude rule (runtime/sampling/amplitude.py), or None where the bundle has none (0.3.x)."""
        a = self.stage(stage).get("amplitude")
        return None if a is None else from_dict(AmplitudeConfig, a)

    def cond_names(self, stage: str) -> tuple[str, ...]:
        return tuple(self.stage(stage)["cond_channels"])

    def file(self, stage: str, kind: str) -> Path:
        """Path of a stage's "weights" or "onnx" file; refuses a kind the bundle does not have."""
        rel = self.stage(stage).get(kind)
        if not rel:
            raise EngineMismatchError(f"bundle {self.path} has no {kind!r} file for stage {stage!r}; "
                                      f"re-export it with onnx=True to use the onnxruntime/tensorrt backends")
        return self.path / rel


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
    validate_manifest(root, manifest)
    # An ONNX graph is trusted as the pair its export's parity check vouched for, or after a live check.
    check_stage_pairs(root, manifest, read_parity_report(root, manifest), live_pair_check(root, manifest["files"]))
    return Bundle(root, manifest)


def validate_manifest(root: Path, m) -> None:
    """Refuse a manifest (or the files it lists) that is not a complete, intact bundle of this format."""
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
        if not (isinstance(m["scale_factor"], int) and m["scale_factor"] >= 1 and m["pooling"] in POOLINGS):
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
    if "tile" in entry:
        _check_tile(stage, entry["tile"])
    for key in ("rain_reach_px", "rain_inside_px"):
        r = entry.get(key, 0)
        if not (isinstance(r, int) and not isinstance(r, bool) and 0 <= r <= 64):
            raise ValueError(f"stage {stage!r} {key} {r!r} is invalid; expected an integer 0-64 (coarse px)")
    if "amplitude" in entry:
        if stage != "correction" or not isinstance(entry["amplitude"], dict):
            raise ValueError(f"stage {stage!r} has an amplitude entry; only the correction stage may, as an object")
        from_dict(AmplitudeConfig, entry["amplitude"])
    names = entry["cond_channels"]
    if len(names) != unet.cond_channels:
        raise ValueError(f"stage {stage!r} lists {len(names)} conditioning channels {names} but its "
                         f"unet.cond_channels is {unet.cond_channels}")
    for kind in ("weights", "onnx"):
        if entry.get(kind) and entry[kind] not in files:
            raise ValueError(f"stage {stage!r} {kind} file {entry[kind]!r} is not listed in files")
    if entry.get("onnx"):
        try:
            shapes = onnx_io_shapes(root / entry["onnx"])
        except Exception as e:  # onnx raises DecodeError and friends for damaged protobufs
            raise ValueError(f"{entry['onnx']} is not a readable ONNX model ({e})") from None
        want = {"x": unet.in_channels, "cond": len(names)}
        for inp, ch in want.items():
            got = shapes.get(inp, [None, None])[1]
            if got != ch:
                raise ValueError(f"{entry['onnx']} input {inp!r} has {got} channels; the manifest says {ch}")


def _check_tile(stage: str, tile) -> None:
    """A stage's optional "tile": {"size": px, "overlap": px}: the domain size it was trained on, at which the
    runtime tiles it whatever --tile says. A net with GroupNorm and attention normalises over the whole
    image it sees, so on much larger images it sees other statistics than in training (the shipped
    correction: docs/experiments.md, "The runtime's route")."""
    ok = (isinstance(tile, dict) and set(tile) == {"size", "overlap"}
          and all(isinstance(tile[k], int) and not isinstance(tile[k], bool) for k in tile)
          and 8 <= tile["size"] <= 4096 and 0 <= tile["overlap"] < tile["size"])
    if not ok:
        raise ValueError(f"stage {stage!r} tile {tile!r} is invalid; expected {{\"size\": 8-4096, \"overlap\": "
                         f"0-(size-1)}} in pixels")


def load_denoiser(bundle, stage: str):
    """The torch denoiser D of one stage (eval mode, CPU), from the bundle's safetensors."""

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
    p = _package_dir() / "bundles" / "default"
    if must_exist and not (p / MANIFEST).is_file():
        raise EngineMismatchError(f"no default model bundle at {p}; this installation ships none. Train and "
                                  f"export one (`precipfast export CKPT... --out {p}`) or pass --model BUNDLE")
    return p


def _package_dir() -> Path:
    """The installed `precipfast` package directory (holds bundles/ and data/)."""
    return Path(_version.__file__).parent


def onnx_io_shapes(path: str | os.PathLike) -> dict[str, list]:
    """{input/output name: [dim, ...]} with ints for fixed dims and names for dynamic ones."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    shapes = {}
    for v in list(model.graph.input) + list(model.graph.output):
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
    return shapes
