"""Termination signals as exceptions, so that every `with` and `finally` cleans up before the process exits.

Batch schedulers stop jobs with SIGTERM (then SIGKILL after a grace period), closed terminals and ssh
sessions send SIGHUP, users press Ctrl-C (SIGINT). Python turns only SIGINT into an exception; the other
two kill the process where it stands and leave the output's temp file behind. Inside
`signals_as_exceptions()` all three raise `Interrupted` (a KeyboardInterrupt, so code that already cleans
up on Ctrl-C handles them too), and from the first one on all three are ignored: a second Ctrl-C cannot
break the cleanup half way (or print a traceback from inside a progress bar).

Exit status, the shell's convention for a process stopped by signal N: 128 + N (SIGHUP 129, SIGINT 130,
SIGTERM 143). SIGKILL cannot be caught: runtime/output.py removes such a run's temp file the next time a
run writes into the same directory.
"""
from __future__ import annotations

import contextlib
import signal
import threading

HANDLED = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


class Interrupted(KeyboardInterrupt):
    """A termination signal arrived; `signo` says which, `exit_code` is 128 + signo."""

    def __init__(self, signo: int):
        self.signo = int(signo)
        super().__init__(f"interrupted by {signal_name(signo)}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signo


def signal_name(signo: int) -> str:
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"


@contextlib.contextmanager
def signals_as_exceptions():
    """SIGINT, SIGTERM and SIGHUP raise `Interrupted` inside the block; after the first signal all three are
    ignored until the process exits. Outside the main thread (where handlers cannot be set) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in HANDLED}
    arrived = []

    def handler(signo, frame):
        for s in HANDLED:
            signal.signal(s, signal.SIG_IGN)  # cleanup runs to its end; the process is on its way out
        arrived.append(signo)
        raise Interrupted(signo)

    for s in HANDLED:
        signal.signal(s, handler)
    try:
        yield
    finally:
        if not arrived:  # after a signal they stay ignored: the caller prints one line and exits
            for s, h in old.items():
                signal.signal(s, h)
