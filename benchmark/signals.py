"""Stopping a run cleanly: Ctrl-C (SIGINT) and SIGTERM end it at once with one line and exit 130 / 143.

Nothing is lost: every file is written atomically, so the checkpoint of the last finished epoch is
intact and rerunning the same command resumes from the epoch after it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator


class Terminated(BaseException):
    """Raised in the main thread by the SIGTERM handler (a BaseException, like KeyboardInterrupt)."""


_requested = {"stop": False}


def check_stop() -> None:
    """Raise ``Terminated`` if SIGTERM arrived. The handler raises at once, but an exception raised while
    Python runs a finaliser (a DataLoader iterator being collected) is printed and dropped; loops call
    this once per batch so such a signal still stops the run."""
    if _requested["stop"]:
        raise Terminated()


class RunStopped(KeyboardInterrupt):
    """A run stopped by a signal; the CLI prints the message and exits with ``exit_code``. A
    KeyboardInterrupt, so that nothing that carries on after errors (a sweep) carries on after it."""

    def __init__(self, interrupted: BaseException, next_epoch: int | None = None):
        self.exit_code = 143 if isinstance(interrupted, Terminated) else 130
        how = "terminated" if self.exit_code == 143 else "interrupted"
        resume = (f"; rerun the same command to resume from epoch {next_epoch}" if next_epoch is not None else "")
        super().__init__(f"stopped ({how}){resume}")


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While inside, SIGTERM raises ``Terminated`` in the main thread (SIGINT already raises KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    owner = os.getpid()

    def terminate(signum, frame):
        if os.getpid() != owner:  # a forked loader worker inherited this handler: the trainer, stopping,
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # shuts it down (killed now, it would be reported)
            return
        _requested["stop"] = True
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _requested["stop"] = False
