"""Tracebacks that became one line: seeds beyond 64 bits, `info` on what is not a bundle, and any
unexpected exception; click's usage errors keep their exit code 2."""
import json

import pytest
from faultkit import FAST, cli, coarse, one_line, snapshot

from precipfast.jobs import sample as job

TOP = 2 ** 32 - 1   # slice t samples with seed + t * 2^32 (precipfast/noise.py): the seed fills the low word, so
# every (seed, t) pair has its own noise and any seed works for any number of time slices


@pytest.mark.parametrize("seed, times, message", [
    (2 ** 64, 1, f"--seed must be in [0, {TOP}], got {2 ** 64}"),
    (10 ** 30, 1, f"--seed must be in [0, {TOP}], got {10 ** 30}"),
    (-1, 1, f"--seed must be in [0, {TOP}], got -1"),
    (TOP + 1, 3, f"--seed must be in [0, {TOP}], got {TOP + 1}"),
])
def test_seed_out_of_range(work, tiny_bundle, seed, times, message):
    if times > 1:
        coarse(work / "in.h5", times=times)  # replaces the one-time input
    before = snapshot(work)
    res = cli("sample", work / "in.h5", "-o", work / "o.h5", "--model", tiny_bundle, "--seed", seed,
              "--backend", "torch", *FAST[:-1])
    one_line(res, 1, message)
    assert snapshot(work) == before


def test_largest_seed_runs(work, tiny_bundle):
    coarse(work / "in.h5", times=3)
    res = cli("sample", work / "in.h5", "-o", work / "o.h5", "--model", tiny_bundle, "--seed", TOP,
              "--backend", "torch", *FAST)
    assert res.exit_code == 0, res.output


def test_info_on_a_missing_path(work, monkeypatch):
    monkeypatch.chdir(work)
    res = cli("info", "nope.h5")
    one_line(res, 1, "no such file or directory: 'nope.h5'")


def test_info_on_an_input(work):
    res = cli("info", work / "in.h5")
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert list(got) == ["input"]
    assert got["input"]["format"] == "precipfast" and got["input"]["shape"] == {"time": 1, "lat": 10, "lon": 12}


def test_info_on_a_file_that_is_not_hdf5(work):
    (work / "notes.txt").write_text("hello")
    one_line(cli("info", work / "notes.txt"), 1, "is not an HDF5 file; expected a precipfast output, an input")


def test_unexpected_exception_is_one_line(work, tiny_bundle, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("something internal\nwith a second line")
    monkeypatch.setattr(job, "read_input", boom)
    res = cli("sample", work / "in.h5", "-o", work / "o.h5", "--model", tiny_bundle, *FAST)
    one_line(res, 1, "unexpected RuntimeError: something internal (rerun with `precipfast --debug ...`")
    assert sorted(snapshot(work)) == ["in.h5"]
    with pytest.raises(RuntimeError):  # --debug: the traceback
        from click.testing import CliRunner

        from precipfast.cli import main
        CliRunner().invoke(main, ["--debug", "sample", str(work / "in.h5"), "-o", str(work / "o.h5")],
                           catch_exceptions=False)


def test_usage_errors_exit_2(work):
    res = cli("sample", work / "in.h5", "--members", "abc")
    assert res.exit_code == 2 and "Invalid value for '--members'" in res.stderr
