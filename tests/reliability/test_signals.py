"""Signals: SIGINT, SIGTERM and SIGHUP remove the temp file and end with one line and exit 128 + signo;
a second Ctrl-C during cleanup prints no traceback; a SIGKILLed run's temp file is removed by the next run
in that directory, and nothing else is."""
import signal
import socket
import time

import pytest
from faultkit import FAST, cli, coarse, snapshot, spawn, temps, wait_for_temp

from precipfast.runtime.files import atomic

SLOW = ["--members", "4", "--steps", "12", "--backend", "torch", "--device", "cpu"]


@pytest.fixture()
def busy(tmp_path, tiny_bundle):
    """A directory with an input big enough to sample for a while and an earlier output."""
    d = tmp_path / "busy"
    d.mkdir()
    coarse(d / "in.h5", h=20, w=20)
    (d / "out.h5").write_bytes(b"an earlier, good output")
    return d


def _start(d, tiny_bundle, quiet=True):
    args = ["sample", "in.h5", "-o", "out.h5", "--model", tiny_bundle, "--overwrite", *SLOW]
    proc = spawn(args + (["--quiet"] if quiet else []), d)
    wait_for_temp(d, proc)
    return proc


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_signal_cleans_up(busy, tiny_bundle, sig):
    before = snapshot(busy)
    proc = _start(busy, tiny_bundle)
    signo = getattr(signal, sig)
    proc.send_signal(signo)
    out, err = proc.communicate(timeout=300)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 128 + signo, (proc.returncode, err)
    assert lines == [f"Error: interrupted by {sig}; stopped, nothing partial was kept"] and out == "", err
    assert snapshot(busy) == before


def test_second_sigint_during_cleanup_prints_no_traceback(busy, tiny_bundle):
    before = snapshot(busy)
    proc = _start(busy, tiny_bundle, quiet=False)  # with the progress bar: tqdm once printed 22 lines here
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.rstrip().splitlines()[-1] == "Error: interrupted by SIGINT; stopped, nothing partial was kept"
    assert snapshot(busy) == before


def test_sigkill_leftover_is_swept_by_the_next_run_and_nothing_else(busy, tiny_bundle):
    proc = _start(busy, tiny_bundle)
    proc.kill()
    proc.wait(timeout=60)
    (stale,) = temps(busy)
    assert f"-{proc.pid}-" in stale and stale.startswith(".out.h5.precipfast-")
    host = atomic._HOST
    keep = [f".out.h5.precipfast-{host}-1-abcdef.tmp",              # pid 1 is alive: a running job
            f".out.h5.precipfast-{host}x-{proc.pid}-abcdef.tmp",    # another host (shared file system)
            ".out.h5.abcdef.tmp", "notes.tmp"]                     # not precipfast's names
    for name in keep:
        (busy / name).write_text("x")
    before = snapshot(busy)
    res = cli("sample", busy / "in.h5", "-o", busy / "new.h5", "--model", tiny_bundle, "--backend", "torch", *FAST)
    assert res.exit_code == 0, res.output
    after = snapshot(busy)
    assert stale not in after and "new.h5" in after
    assert {k: v for k, v in after.items() if k != "new.h5"} == {k: v for k, v in before.items() if k != stale}
    assert socket.gethostname()  # the host in the names is this machine's (sanitised) name
