"""Termination signals as exceptions, so that every `with` and `finally` cleans up before the process exits.

Batch schedulers stop jobs with SIGTERM (then SIGKILL after a grace period), closed terminals and ssh
sessions send SIGHUP, users press Ctrl-C (SIGINT). Python turns only SIGINT into an exception; the other
two kill the process where it stands and leave the output's temp file behind. Inside
`signals_as_exceptions()` all three raise `Interrupted` (a KeyboardInterrupt, so code that already cleans
up on Ctrl-C handles them too), and from the first one on all three are ignored: a second Ctrl-C cannot
break the cleanup half way (or print a traceback from inside a progress bar).

Python runs a handler between any two bytecodes of the main thread, also inside a weakref callback or a
`__del__`, where an exception is printed as "Exception ignored" and dropped. So the first signal is also
recorded, such dropped `Interrupted`s are not printed (sys.unraisablehook), and long loops call
`raise_if_interrupted()` at each step (the sampler's progress ticks), which raises it again.

Exit status, the shell's convention for a process stopped by signal N: 128 + N (SIGHUP 129, SIGINT 130,
SIGTERM 143). SIGKILL cannot be caught: runtime/files/atomic.py removes such a run's temp file the next time a
run writes into the same directory.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading

HANDLED = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))
_arrived: list[int] = []  # signals received inside signals_as_exceptions (the process then exits)


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
    old_hook = sys.unraisablehook

    def handler(signo, frame):
        for s in HANDLED:
            signal.signal(s, signal.SIG_IGN)  # cleanup runs to its end; the process is on its way out
        _arrived.append(signo)
        raise Interrupted(signo)

    def unraisable(info):
        if not isinstance(info.exc_value, Interrupted):  # a dropped Interrupted comes back at the next tick
            old_hook(info)

    for s in HANDLED:
        signal.signal(s, handler)
    sys.unraisablehook = unraisable
    _arrived.clear()
    try:
        yield
    finally:
        if not _arrived:  # after a signal they stay ignored: the caller prints one line and exits
            for s, h in old.items():
                signal.signal(s, h)
            sys.unraisablehook = old_hook


def raise_if_interrupted() -> None:
    """Raise `Interrupted` again when a signal arrived whose exception was dropped (see the module doc);
    call it at each step of long loops. Free when no signal came."""
    if _arrived:
        raise Interrupted(_arrived[0])


@contextlib.contextmanager
def deferred():
    """Hold SIGINT, SIGTERM and SIGHUP back inside the block; they are delivered as it ends. For the few
    statements that create a file and record its name: a signal in between would leave a file that no
    cleanup knows of. Open the caller's `try` before the block, so the delivery lands inside it."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
