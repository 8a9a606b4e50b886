"""Bundles are a closed world: names that leave the bundle directory are refused before any file is opened
or hashed, and a stage whose ONNX is not the pair of its safetensors is refused on every backend."""
import hashlib
import json
import os
import shutil

import pytest
from faultkit import FAST, cli, one_line, snapshot

from precipfast.errors import EngineMismatchError
from precipfast.runtime.engines import bundle as bundle_mod
from precipfast.runtime.engines.bundle_check import check_plain_name

BACKENDS = ["torch", "onnxruntime"]


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _copy(src, dst, edit):
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    edit(dst, m)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def _point_onnx_at(name, target):
    def edit(d, m):
        m["files"].pop("correction.onnx")
        m["files"][name] = _sha(target)  # the hash is right: only the name gives it away
        m["stages"]["correction"]["onnx"] = name
    return edit


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["parent", "absolute", "etc-passwd", "subdir"])
def test_names_outside_the_bundle(tmp_path, work, tiny_bundle, monkeypatch, backend, kind):
    evil = tmp_path / "evil.onnx"
    shutil.copy(tiny_bundle / "correction.onnx", evil)
    name, target, why = {"parent": ("../evil.onnx", evil, "a parent reference"),
                         "absolute": (str(evil), evil, "an absolute path"),
                         "etc-passwd": ("../../../../etc/passwd", "/etc/passwd", "a parent reference"),
                         "subdir": ("sub/correction.onnx", evil, "a path with directories")}[kind]
    if not os.path.exists(target):
        pytest.skip(f"{target} is absent here")
    b = _copy(tiny_bundle, tmp_path / "b", _point_onnx_at(name, target))
    hashed = []
    real = bundle_mod.sha256_file
    monkeypatch.setattr(bundle_mod, "sha256_file", lambda p: hashed.append(str(p)) or real(p))
    before = snapshot(work)
    res = cli("sample", work / "in.h5", "-o", work / "o.h5", "--model", b, "--backend", backend, *FAST)
    one_line(res, 1, f"bundle {b}: manifest names {name!r}, {why}; expected a plain file name inside the bundle")
    assert hashed == [] and snapshot(work) == before  # refused before anything named was hashed


@pytest.mark.parametrize("backend", BACKENDS)
def test_symlink_out_of_the_bundle(tmp_path, work, tiny_bundle, backend):
    evil = tmp_path / "evil.onnx"
    shutil.copy(tiny_bundle / "correction.onnx", evil)

    def edit(d, m):
        (d / "correction.onnx").unlink()
        os.symlink(evil, d / "correction.onnx")
    b = _copy(tiny_bundle, tmp_path / "b", edit)
    res = cli("sample", work / "in.h5", "-o", work / "o.h5", "--model", b, "--backend", backend, *FAST)
    one_line(res, 1, f"'correction.onnx' is a symbolic link to '{evil}', outside the bundle")
    assert sorted(os.listdir(work)) == ["in.h5"]


def _swap_onnx(d, m):
    """Replace correction.onnx with the downscaling graph (same inputs) and 'fix' the manifest's hash."""
    shutil.copy(d / "downscaling.onnx", d / "correction.onnx")
    m["files"]["correction.onnx"] = _sha(d / "correction.onnx")


def _record_pairing(d, m):
    """What `precipfast export` writes with parity on: each stage's report names the pair it checked."""
    report = {s: {"passed": True, "weights_sha256": m["files"][e["weights"]], "onnx_sha256": m["files"][e["onnx"]]}
              for s, e in m["stages"].items()}
    (d / "parity.json").write_text(json.dumps(report))
    m["files"]["parity.json"] = _sha(d / "parity.json")


@pytest.mark.parametrize("backend", BACKENDS)
def test_swapped_onnx_without_a_recorded_pairing(tmp_path, work, tiny_bundle, backend):
    b = _copy(tiny_bundle, tmp_path / "b", _swap_onnx)  # the tiny bundle has no parity report: live check
    res = cli("sample", work / "in.h5", "-o", work / "o.h5", "--model", b, "--backend", backend, *FAST)
    one_line(res, 1, "stage 'correction': correction.onnx does not compute what correction.safetensors computes")
    assert sorted(os.listdir(work)) == ["in.h5"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_swapped_onnx_against_the_recorded_pairing(tmp_path, work, tiny_bundle, backend):
    good = _copy(tiny_bundle, tmp_path / "good", _record_pairing)
    bundle_mod.open_bundle(good)  # the untouched pair is trusted

    def swap(d, m):
        _swap_onnx(d, m)
    b = _copy(good, tmp_path / "b", swap)
    res = cli("sample", work / "in.h5", "-o", work / "o.h5", "--model", b, "--backend", backend, *FAST)
    one_line(res, 1, "are not the pair the parity report checked", "re-export the bundle")
    assert sorted(os.listdir(work)) == ["in.h5"]


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/x", "a\\b", "x\0y", None, 3])
def test_plain_names_only(tmp_path, name):
    with pytest.raises(EngineMismatchError, match="expected a plain file name inside the bundle directory"):
        check_plain_name(tmp_path, name)


def test_links_inside_the_bundle_are_fine(tmp_path):
    (tmp_path / "real.onnx").write_bytes(b"x")
    os.symlink("real.onnx", tmp_path / "alias.onnx")
    check_plain_name(tmp_path, "alias.onnx")
    check_plain_name(tmp_path, "real.onnx")
