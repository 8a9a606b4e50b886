"""Crash-safe file plumbing for the output: path checks, temporary files, the stale-file sweep, full disks.

Atomic: the writer writes to `<dir>/.<name>.precipfast-<host>-<pid>-<random>.tmp` (`create_temp`) and renames it
over the output only when the run succeeded; any exception (signals included, see runtime/files/signals.py)
removes the temp file and leaves an existing output untouched. A run killed outright (SIGKILL, power loss)
leaves its temp file; the next writer in that directory removes every such file of this host whose pid is dead
(`sweep_stale_temporaries`) and nothing else.
Full disks: HDF5 writes through `GuardedFile`, which records the first failed write (ENOSPC, EDQUOT, EFBIG)
and lets HDF5 believe the rest succeeded. HDF5's own error path on a full disk retries the flush from every
object's deallocator and ends in a segfault; this way the writer raises one OutputError (`space_error`), HDF5
closes cleanly, and the temp file is removed.
Paths: `check_output_path` and `check_not_input` refuse, before any work, an output that cannot be written
or that is the input under another name.
"""
from __future__ import annotations

import errno
import os
import re
import secrets
import socket
from pathlib import Path

from precipfast.errors import OutputError
from precipfast.runtime.files.signals import deferred

SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # full disk, quota, `ulimit -f`
_TMP_TAG = ".precipfast-"


def check_output_path(path, overwrite: bool = False) -> Path:
    """Refuse, before any work, an output that cannot be written: call it at the start of a run."""
    text = os.fspath(path)
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise OutputError(f"output '{path}' is a directory; expected a file path")
    if text.endswith(("/", os.sep)):  # Path() drops the slash: 'dir/new/' would write a file named 'new'
        raise OutputError(f"output '{text}' ends with '/'; expected a file path (e.g. '{path / 'ens.h5'}')")
    if path.is_symlink() and not path.exists() and not overwrite:
        raise OutputError(f"output '{path}' is a dangling symbolic link (to '{os.readlink(path)}'); pass "
                          f"--overwrite to replace the link")
    if not parent.exists():
        raise OutputError(f"output directory '{parent}' does not exist")
    if not parent.is_dir():
        raise OutputError(f"output directory '{parent}' is not a directory")
    if path.exists() and not overwrite:
        raise OutputError(f"output '{path}' exists; pass --overwrite to replace it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output directory '{parent}' is not writable")
    probe = None
    try:  # os.access can be wrong (root, ACLs, read-only mounts): try the real thing
        with deferred():  # a signal lands after `probe` is known, so the finally removes it
            probe = create_temp(path)
    except OSError as e:
        if e.errno in SPACE_ERRNOS:
            raise space_error(path, e) from None
        raise OutputError(f"output directory '{parent}' is not writable ({e.strerror})") from None
    finally:
        if probe is not None:
            os.unlink(probe)
    return path


def check_not_input(input_path, output_path) -> None:
    """Refuse an output that is the input under another name: the same path, a symbolic link to it, or a
    hard link (same device and inode). Call it before anything runs: with --overwrite the run would
    otherwise replace the input by the ensemble."""
    inp, out = Path(input_path), Path(output_path)
    try:
        same = os.path.samefile(inp, out)  # follows symlinks, compares st_dev and st_ino: hard links too
    except OSError:  # one of them does not exist (or a dangling link): they cannot be the same file
        return
    if same:
        how = ("the same path" if os.path.abspath(inp) == os.path.abspath(out) else
               "the same file through symbolic links" if os.path.realpath(inp) == os.path.realpath(out) else
               "a hard link to it")
        raise OutputError(f"output '{os.fspath(output_path)}' is the input file '{os.fspath(input_path)}' ({how}); "
                          f"choose another -o, the input "
                          f"would be replaced by the ensemble")


def space_error(path, e: OSError) -> OutputError:
    """The one-line error for a write that failed for lack of space (ENOSPC, EDQUOT, EFBIG)."""
    return OutputError(f"no space left writing '{path}' ({e.strerror or os.strerror(e.errno)}); free space "
                       f"or choose another -o")


def temp_name(path) -> str:
    """`.<name>.precipfast-<host>-<pid>-<random>.tmp`: recognisable, and owned by a process of a host."""
    return f".{Path(path).name}{_TMP_TAG}{_HOST}-{os.getpid()}-{secrets.token_hex(3)}.tmp"


def sweep_stale_temporaries(directory) -> list[Path]:
    """Remove the temp files of precipfast runs of this host that died (their pid is gone), in `directory`
    only; returns what was removed. Files of live runs, of other hosts (shared file systems), links,
    directories and every other name stay untouched."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        m = _TMP_RE.match(entry.name)
        if not m or m["host"] != _HOST or int(m["pid"]) == os.getpid() or _pid_alive(int(m["pid"])):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue  # gone meanwhile, or not ours to remove: leave it
    return removed


_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname().split(".")[0]) or "host"
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.precipfast-(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-[0-9a-f]{6}\.tmp$")


def create_temp(path) -> str:
    """Create the temp file beside `path` (O_EXCL, mode 0600); returns its path."""
    parent = Path(path).parent
    for _ in range(100):
        tmp = os.path.join(parent, temp_name(path))
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
            return tmp
        except FileExistsError:
            continue
    raise OutputError(f"cannot create a temporary file beside '{path}' (100 names taken)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _write_all(raw, view) -> None:
    """Write every byte of `view` at the current position (os-level writes may be partial)."""
    done = 0
    while done < view.nbytes:
        done += raw.write(view[done:])


class GuardedFile:
    """The file object HDF5 writes through (h5py's fileobj driver). The first failed write is recorded in
    `error` and every later write is dropped while reporting success, so HDF5 never enters its full-disk
    error path; the writer checks `error` after each write and raises once."""

    def __init__(self, path):
        self.raw = open(path, "r+b", buffering=0)
        self.error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        pos = self.raw.tell()
        if self.error is None:
            try:
                _write_all(self.raw, view)
                return view.nbytes
            except OSError as e:
                self.error = e
        self.raw.seek(pos + view.nbytes)
        return view.nbytes

    def truncate(self, size=None):
        try:
            return self.raw.truncate(size)
        except OSError as e:
            self.error = self.error or e
            return size

    def seek(self, offset, whence=0):
        return self.raw.seek(offset, whence)

    def tell(self):
        return self.raw.tell()

    def read(self, n=-1):
        return self.raw.read(n)

    def readinto(self, buf):
        return self.raw.readinto(buf)

    def flush(self):
        pass

    def fileno(self):
        return self.raw.fileno()

    def close(self):
        self.raw.close()


def current_umask() -> int:
    """The process's file-creation mask (finalize gives the renamed output 0666 less it, as open() would)."""
    mask = os.umask(0)  # the only portable way to read it; restored at once
    os.umask(mask)
    return mask
