"""Bundle trust checks: a bundle is a closed world, and each stage's ONNX is the pair of its weights.

1. Closed world (`check_closed_world`): every file a manifest names (`files`, each stage's `weights` and
   `onnx`) is a plain name inside the bundle directory: a non-empty string with no path separator, not
   "." or "..", no NUL, and if it is a symbolic link, one that resolves inside the directory. This runs on
   the manifest and on `lstat` only, before any file is opened or hashed, so a manifest naming
   `../../etc/passwd` or `/abs/evil.onnx` never gets them read.
2. Pairs (`check_stage_pairs`): the ONNX graph and the safetensors weights of a stage must compute the same
   function. `precipfast export` records, in each stage's parity report (parity.json), the sha256 of the
   two files it compared; the files must be exactly those and the report must have passed. A bundle whose
   ONNX was swapped and whose manifest hashes were updated to match fails here, on every backend. A bundle
   without a recorded pairing (exported with parity=False, or before pairings were recorded) is checked
   live instead, through the `live_check` callable the caller passes (one small ONNX-vs-torch case).

Pure functions: they read the manifest, the parity report and link metadata, and raise
EngineMismatchError with one line naming the bundle, the file and what was expected.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from precipfast.errors import EngineMismatchError

STAGE_FILE_KINDS = ("weights", "onnx")


def check_plain_name(root: Path, rel) -> None:
    """`rel` is a plain file name inside `root` (no directories, no way out); raises otherwise."""
    root = Path(root)
    if not isinstance(rel, str) or not rel:
        raise EngineMismatchError(f"bundle {root}: manifest names a file {rel!r}; expected a plain file name "
                                  f"inside the bundle directory")
    bad = ("an absolute path" if os.path.isabs(rel) or rel.startswith(("/", "\\")) else
           "a parent reference" if rel in (".", "..") or ".." in rel.replace("\\", "/").split("/") else
           "a path with directories" if "/" in rel or "\\" in rel or os.sep in rel else
           "a NUL character" if "\0" in rel else None)
    if bad:
        raise EngineMismatchError(f"bundle {root}: manifest names {rel!r}, {bad}; expected a plain file name "
                                  f"inside the bundle directory (no '/', no '..')")
    p = root / rel
    if p.is_symlink():
        target = os.path.realpath(p)
        inside = os.path.realpath(root)
        if os.path.dirname(target) != inside:
            raise EngineMismatchError(f"bundle {root}: {rel!r} is a symbolic link to {target!r}, outside the "
                                      f"bundle; expected the file itself inside the bundle directory")


def manifest_names(m: dict) -> list:
    """Every file name a manifest refers to: the `files` keys and each stage's weights/onnx."""
    names = list(m.get("files") or {}) if isinstance(m.get("files"), dict) else []
    stages = m.get("stages") if isinstance(m.get("stages"), dict) else {}
    for entry in stages.values():
        if isinstance(entry, dict):
            names += [entry[k] for k in STAGE_FILE_KINDS if entry.get(k) is not None]
    return names


def check_closed_world(root: Path, m: dict) -> None:
    """Every name in the manifest is a plain name inside `root`; call before opening or hashing any file."""
    for rel in manifest_names(m):
        check_plain_name(root, rel)


def check_stage_pairs(root: Path, m: dict, report: dict | None,
                      live_check: Callable[[str, dict], dict] | None = None) -> None:
    """Each stage with both ONNX and weights: the parity report `report` ({stage: {..., weights_sha256,
    onnx_sha256, passed}}, None when the bundle has none) must vouch for exactly the files the manifest
    lists; stages it does not cover go to `live_check(stage, entry)` -> a parity report dict (skipped when
    `live_check` is None, e.g. without onnxruntime, where the ONNX cannot run anyway)."""
    files = m["files"]
    for stage, entry in m["stages"].items():
        if not (entry.get("onnx") and entry.get("weights")):
            continue
        rep = (report or {}).get(stage) if isinstance(report, dict) else None
        have = {"weights": files.get(entry["weights"]), "onnx": files.get(entry["onnx"])}
        if isinstance(rep, dict) and rep.get("weights_sha256") and rep.get("onnx_sha256"):
            paired = {"weights": rep["weights_sha256"], "onnx": rep["onnx_sha256"]}
            if paired != have:
                raise EngineMismatchError(
                    f"bundle {root}: stage {stage!r}: {entry['onnx']} ({str(have['onnx'])[:12]}...) and "
                    f"{entry['weights']} ({str(have['weights'])[:12]}...) are not the pair the parity report "
                    f"checked (onnx {paired['onnx'][:12]}..., weights {paired['weights'][:12]}...); expected the "
                    f"files exported together: re-export the bundle")
            if rep.get("passed") is not True:
                raise EngineMismatchError(f"bundle {root}: stage {stage!r}: its parity report did not pass; "
                                          f"expected an ONNX graph that matches the torch weights")
            continue
        if live_check is None:
            continue
        live = live_check(stage, entry)
        if not live.get("passed"):
            raise EngineMismatchError(
                f"bundle {root}: stage {stage!r}: {entry['onnx']} does not compute what {entry['weights']} "
                f"computes (relative error {live.get('max_rel_err', float('nan')):.2e}, tolerance "
                f"{live.get('tolerance_rel', float('nan')):.0e}); expected the ONNX exported from these weights: "
                f"re-export the bundle")


def read_parity_report(root: Path, m: dict, name: str = "parity.json") -> dict | None:
    """The bundle's parity report when the manifest lists it (its sha256 already checked), else None."""
    if name not in (m.get("files") or {}):
        return None
    try:
        report = json.loads((Path(root) / name).read_text())
    except (OSError, ValueError) as e:
        raise EngineMismatchError(f"bundle {root}: {name} is unreadable ({e}); expected the JSON parity report "
                                  f"`precipfast export` writes") from None
    return report if isinstance(report, dict) else None
