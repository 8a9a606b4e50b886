"""Fault-injection helpers: run the CLI (in-process or as a real process), and snapshot a directory so each
case can assert exactly what is left after it: no temp file, no partial output, nothing else changed."""
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from precipfast.cli import main
from precipfast.runtime.files.input_writer import write_precipfast_input

FAST = ["--members", "1", "--steps", "2", "--device", "cpu", "--quiet"]


def snapshot(directory) -> dict:
    """{name: sha256 | '-> target' | 'dir'} of every entry, hidden ones included."""
    out = {}
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.is_symlink():
            out[entry.name] = "-> " + os.readlink(entry.path)
        elif entry.is_dir():
            out[entry.name] = "dir"
        else:
            out[entry.name] = hashlib.sha256(Path(entry.path).read_bytes()).hexdigest()
    return out


def temps(directory) -> list:
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


def cli(*args):
    """Run the CLI in this process; returns click's Result (stdout and stderr apart)."""
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line(res, code: int, *fragments) -> str:
    """The run failed with `code`, said it on one stderr line holding every fragment, no traceback."""
    assert res.exit_code == code, (res.exit_code, res.output, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    return lines[0]


def spawn(args, cwd, **kw) -> subprocess.Popen:
    """`precipfast ARGS` as a real process (signals, resource limits, crashes), one torch thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": ""}
    return subprocess.Popen([sys.executable, "-m", "precipfast.cli", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def wait_for_temp(directory, proc, timeout_s=300.0) -> str:
    """Block until the run's temp file exists (sampling has started); returns its name."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        names = temps(directory)
        if names:
            return names[0]
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before writing: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("no temp file appeared")


def coarse(path, h=10, w=12, times=1, scale=8.0):
    """A small precipfast input at 0.1 deg with a rain blob, `times` slices."""
    lat = 40.95 - 0.1 * np.arange(h)
    lon = -100.95 + 0.1 * np.arange(w)
    yy, xx = np.mgrid[0:h, 0:w]
    blob = scale * np.exp(-((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / 8.0)
    precip = np.stack([blob * (1 + 0.5 * t) for t in range(times)]).astype(np.float32)
    return write_precipfast_input(path, precip, lat, lon,
                                  times=1_500_000_000 + 1800 * np.arange(times))


@pytest.fixture()
def work(tmp_path):
    """A working directory holding one small input, `in.h5`."""
    d = tmp_path / "work"
    d.mkdir()
    coarse(d / "in.h5")
    return d
