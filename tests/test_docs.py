"""Every command in README.md and docs/ runs as written.

Each line of a ```bash block that starts with `precipfast ` or `python -m ` is checked. All of them must parse
as written: the command exists and every option and value is accepted (click for `precipfast`, the module's
argparse parser for `python -m`, stopped right after parsing). The short ones then run for real, in a folder
holding the stand-in files the docs name (input.h5, coarse.h5, ens.h5, radar_1km.h5) with ../shared beside it:
`info`, `evaluate`, `--help`, and `sample` of a stand-in input. The long ones (training, validation, the
benchmarks, the experiments, sampling whole real granules) are parsed only: minutes to hours each.
"""
from __future__ import annotations

import argparse
import importlib
import re
import shlex
import shutil
from pathlib import Path

import click
import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from precipfast.cli import main
from precipfast.runtime.files.input_writer import write_precipfast_input

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
STAND_INS = ("input.h5", "coarse.h5", "ens.h5", "radar_1km.h5")
RUN = ("info", "evaluate", "sample")   # precipfast commands short enough to run (sample: on a stand-in only)


def commands() -> list[tuple[str, int, str]]:
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for m in re.finditer(r"```bash\n(.*?)```", text, re.S):
            first = text.count("\n", 0, m.start(1)) + 1
            for i, line in enumerate(m.group(1).splitlines()):
                line = line.strip()
                if line.startswith(("precipfast ", "python -m ")):
                    out.append((doc.name, first + i, line))
    return out


def argv_of(line: str) -> list[str]:
    return shlex.split(line, comments=True)


def test_readme_is_short_and_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024, f"README.md is {len(readme.encode())} bytes; at most 12 KB"
    head = "\n".join(readme.splitlines()[:40])
    assert "make demo" in head and "make test" in head


def test_the_docs_hold_commands_and_every_link_resolves():
    assert len(commands()) > 50
    for doc in DOCS + [ROOT / "MODEL_CARD.md", ROOT / "CHANGELOG.md"]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target:
                assert (doc.parent / target).exists(), f"{doc.name} links to {target}, which does not exist"


class _Parsed(Exception):
    """Raised right after argparse parsed a module's arguments: they are valid, nothing runs."""


def _parse_module(argv: list[str], monkeypatch) -> None:
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    module = importlib.import_module(argv[2])
    with pytest.raises(_Parsed):
        module.main(argv[3:])


def _parse_click(argv: list[str]) -> None:
    args = [a for a in argv[1:] if a != "--debug"]   # the group's only option besides --help/--version
    ctx = click.Context(main, info_name="precipfast")
    cmd = main.get_command(ctx, args[0])
    assert cmd is not None, f"no command {args[0]!r}"
    cmd.make_context(args[0], args[1:], parent=ctx)


@pytest.mark.parametrize("doc,line,command", commands(), ids=lambda v: str(v)[:60])
def test_command_parses_as_written(doc, line, command, monkeypatch):
    argv = argv_of(command)
    try:
        if argv[0] == "python":
            assert argv[1] == "-m", f"{doc}:{line}: run modules with python -m"
            _parse_module(argv, monkeypatch)
        else:
            _parse_click(argv)
    except (Exception, SystemExit) as e:
        if isinstance(e, pytest.fail.Exception):
            raise
        pytest.fail(f"{doc}:{line}: `{command}` does not parse: {type(e).__name__}: {e}")


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory, shipped_bundle, shared_data):
    """input.h5 / coarse.h5 (a 4 x 5 coarse field at 0.1 deg), ens.h5 (its 2-member ensemble from the shipped
    bundle) and radar_1km.h5 (a 1 km truth on the ensemble's grid), with ../shared beside them."""
    base = tmp_path_factory.mktemp("docs")
    (base / "shared").symlink_to(shared_data.parent)
    src = base / "src"
    src.mkdir()
    yy, xx = np.mgrid[0:4, 0:5]
    precip = (0.5 + 6.0 * np.exp(-((yy - 1.5) ** 2 + (xx - 2) ** 2) / 3.0)).astype(np.float32)
    lat, lon = 39.95 - 0.1 * np.arange(4), -99.95 + 0.1 * np.arange(5)
    write_precipfast_input(src / "input.h5", precip[None], lat, lon, times=[1_500_000_000])
    shutil.copy(src / "input.h5", src / "coarse.h5")
    res = CliRunner().invoke(main, ["sample", str(src / "input.h5"), "-o", str(src / "ens.h5"), "--members", "2",
                                    "--steps", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    with h5py.File(src / "ens.h5", "r") as f:
        flat, flon, mean = f["lat"][()], f["lon"][()], f["precip_mean"][0]
    write_precipfast_input(src / "radar_1km.h5", (1.1 * mean)[None], flat, flon, times=[1_500_000_000])
    return base


def _short(argv: list[str]) -> bool:
    if argv[0] != "precipfast" or "--help" in argv:
        return argv[0] == "precipfast"
    if argv[1] not in RUN or "--device" in argv and "cpu" not in argv:
        return False
    return argv[1] != "sample" or argv[2] in STAND_INS and "--model" not in argv


SHORT = [c for c in commands() if _short(argv_of(c[2]))]


@pytest.mark.parametrize("doc,line,command", SHORT, ids=lambda v: str(v)[:60])
def test_short_command_runs_as_written(doc, line, command, stand_ins, tmp_path, monkeypatch):
    work = stand_ins / f"run{len(list(stand_ins.glob('run*')))}"
    work.mkdir()
    for name in STAND_INS:
        shutil.copy(stand_ins / "src" / name, work / name)
    monkeypatch.chdir(work)
    torch.set_num_threads(1)
    res = CliRunner().invoke(main, argv_of(command)[1:] + (["--quiet"] if argv_of(command)[1] == "sample" else []))
    assert res.exit_code == 0, f"{doc}:{line}: `{command}` exited {res.exit_code}: {res.output[-500:]}"


def test_the_parse_check_refuses_what_would_not_run(monkeypatch):
    with pytest.raises(click.UsageError):
        _parse_click(argv_of("precipfast sample input.h5 --no-such-flag 3"))
    with pytest.raises(click.BadParameter):
        _parse_click(argv_of("precipfast sample input.h5 --members many"))
    with pytest.raises(SystemExit):
        _parse_module(argv_of("python -m experiments.oracle --no-such-flag"), monkeypatch)
    _parse_module(argv_of("python -m experiments.oracle --error-seeds 0,1"), monkeypatch)
