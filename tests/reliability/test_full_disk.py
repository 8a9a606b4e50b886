"""Full disks: ENOSPC, EDQUOT and EFBIG (`ulimit -f`) while the output is written end in one line and
exit 1, with the temp file removed and an existing output untouched (never a crash in h5py's deallocator)."""
import errno
import os
import resource
import shutil
import subprocess

import numpy as np
import pytest
from faultkit import FAST, cli, coarse, one_line, snapshot, spawn, temps

from precipfast.errors import OutputError
from precipfast.runtime.files import atomic
from precipfast.runtime.files.writer import write_output

ATTRS = {"model_name": "t", "model_sha256": "ab" * 32, "steps": 2, "seed": 0, "backend": "torch",
         "input_sha256": "cd" * 32}


def _fail_writes(code):
    def write_all(raw, view):
        raise OSError(code, os.strerror(code))
    return write_all


def test_injected_enospc_through_the_cli(work, tiny_bundle, monkeypatch):
    (work / "out.h5").write_bytes(b"an earlier, good output")
    before = snapshot(work)
    monkeypatch.setattr(atomic, "_write_all", _fail_writes(errno.ENOSPC))
    res = cli("sample", work / "in.h5", "-o", work / "out.h5", "--model", tiny_bundle, "--overwrite",
              "--backend", "torch", *FAST)
    one_line(res, 1, f"no space left writing '{work / 'out.h5'}' (No space left on device); free space or "
                     f"choose another -o")
    assert snapshot(work) == before


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_injected_space_errors_in_the_writer(tmp_path, monkeypatch, code):
    (tmp_path / "o.h5").write_bytes(b"keep me")
    before = snapshot(tmp_path)
    monkeypatch.setattr(atomic, "_write_all", _fail_writes(code))
    lat, lon = 40 - 0.01 * np.arange(64), -100 + 0.01 * np.arange(64)
    with pytest.raises(OutputError, match=rf"^no space left writing .*\({os.strerror(code)}\); free space"):
        write_output(tmp_path / "o.h5", {"precip": np.ones((2, 64, 64), np.float32)}, lat=lat, lon=lon,
                     attrs=ATTRS, overwrite=True)
    assert snapshot(tmp_path) == before


def _run_limited(args, cwd, limit_bytes):
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    env_proc = spawn(args, cwd, preexec_fn=limit)
    out, err = env_proc.communicate(timeout=600)
    return env_proc.returncode, out, err


def test_real_file_size_limit(work, tiny_bundle):
    """`ulimit -f 8`: every write past 8 KiB fails with EFBIG (Python ignores SIGXFSZ)."""
    (work / "out.h5").write_bytes(b"an earlier, good output")
    before = snapshot(work)
    rc, out, err = _run_limited(["sample", "in.h5", "-o", "out.h5", "--model", tiny_bundle, "--overwrite",
                                 "--backend", "torch", *FAST], work, 8192)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 1 and len(lines) == 1 and out == "", (rc, out, err)
    assert "no space left writing 'out.h5' (File too large); free space or choose another -o" in lines[0]
    assert snapshot(work) == before


def _mount_tmpfs(where, size="64k"):
    if not shutil.which("mount") or os.geteuid() != 0:
        pytest.skip("a real full disk needs a tmpfs mount: not root here")
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")


def test_real_full_tmpfs(tmp_path, tiny_bundle):
    small = tmp_path / "small"
    _mount_tmpfs(small)
    try:
        coarse(tmp_path / "in.h5", h=30, w=30)  # 300 x 300 km at 1 km: far more than 64 KiB of output
        (small / "out.h5").write_bytes(b"an earlier, good output")
        before = snapshot(small)
        proc = spawn(["sample", tmp_path / "in.h5", "-o", small / "out.h5", "--model", tiny_bundle,
                      "--overwrite", "--backend", "torch", *FAST], tmp_path)
        out, err = proc.communicate(timeout=600)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert proc.returncode == 1 and len(lines) == 1 and out == "", (proc.returncode, out, err)
        assert "(No space left on device); free space or choose another -o" in lines[0]
        assert snapshot(small) == before and temps(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=False)
