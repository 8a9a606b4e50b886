"""The output can never be the input (same path, symbolic links, hard links), and an output path that
names a directory, or a dangling link without --overwrite, is refused before anything runs."""
import os

import pytest
from faultkit import FAST, cli, one_line, snapshot


@pytest.fixture()
def links(work):
    os.symlink("in.h5", work / "link.h5")
    os.link(work / "in.h5", work / "hard.h5")
    os.symlink(".", work / "here")
    (work / "sub").mkdir()
    return work


SAME_FILE = [(out, f"output '{out}' is the input file 'in.h5' ({how}); choose another -o") for out, how in [
    ("in.h5", "the same path"),
    ("./sub/../in.h5", "the same path"),
    ("link.h5", "the same file through symbolic links"),
    ("here/in.h5", "the same file through symbolic links"),
    ("hard.h5", "a hard link to it"),
]]
DIRECTORY = [
    ("newdir/", "output 'newdir/' ends with '/'; expected a file path"),
    ("sub/", "output 'sub' is a directory; expected a file path"),
    ("sub", "output 'sub' is a directory; expected a file path"),
]


@pytest.mark.parametrize("out, message", SAME_FILE + DIRECTORY)
def test_output_is_the_input_or_a_directory(links, tiny_bundle, monkeypatch, out, message):
    """Refused before anything runs, even with --overwrite: nothing in the directory changes."""
    monkeypatch.chdir(links)
    before = snapshot(links)
    res = cli("sample", "in.h5", "-o", out, "--model", tiny_bundle, "--overwrite", *FAST)
    one_line(res, 1, message)
    assert snapshot(links) == before


def test_dangling_link_needs_overwrite(work, tiny_bundle, monkeypatch):
    monkeypatch.chdir(work)
    os.symlink("nowhere/ens.h5", work / "ens.h5")
    before = snapshot(work)
    res = cli("sample", "in.h5", "-o", "ens.h5", "--model", tiny_bundle, "--backend", "torch", *FAST)
    one_line(res, 1, "output 'ens.h5' is a dangling symbolic link (to 'nowhere/ens.h5'); pass --overwrite")
    assert snapshot(work) == before
    res = cli("sample", "in.h5", "-o", "ens.h5", "--model", tiny_bundle, "--backend", "torch", "--overwrite", *FAST)
    assert res.exit_code == 0, res.output
    assert not os.path.islink(work / "ens.h5") and (work / "ens.h5").is_file()  # the link, not its target
    assert sorted(snapshot(work)) == ["ens.h5", "in.h5"]
