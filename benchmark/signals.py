"""Stopping a run cleanly: Ctrl-C (SIGINT), SIGTERM and SIGHUP (the terminal closed) end it at once with one
line and exit 130 / 143 / 129. Under ``nohup`` (SIGHUP ignored) a closed terminal leaves the run going.

Nothing is lost: every file is written atomically, so the checkpoint of the last finished epoch is
intact and rerunning the same command resumes from the epoch after it.

Python runs a signal's handler only between two of its own instructions, so a stop that arrives while one
native operation runs for minutes (an attention over 20,000 prompt tokens) would wait for it to return.
``StuckWatch`` sees such a stop from a thread of its own: after ``NOTICE_S`` seconds without its handler
having run it says so and that a second stop ends the command at once; a second stop then does (``os._exit``,
exit 130 / 143 / 129), keeping every file already written.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing.resource_sharer
import os
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterable, Iterator


class Terminated(BaseException):
    """Raised in the main thread by the SIGTERM handler (a BaseException, like KeyboardInterrupt)."""

    signum, how = signal.SIGTERM, "terminated"


class HungUp(Terminated):
    """Raised in the main thread by the SIGHUP handler: the terminal or ssh session that started the run closed."""

    signum, how = signal.SIGHUP, "hung up"


# stop: the exception a signal asked for; held: depth of hold_signals (yielding: of those a second stop breaks);
# signalled: a stop signal reached this
# process since stop_on_signals was entered (kept after leaving it: loader iterators are collected later)
# handled_at: when a stop signal's handler (Python, main thread) last ran, read by StuckWatch
_requested: dict = {"stop": None, "held": 0, "yielding": 0, "signalled": False, "handled_at": -math.inf}


def check_stop() -> None:
    """Raise what a signal asked for (``Terminated`` for SIGTERM, ``KeyboardInterrupt`` for SIGINT). The
    handlers raise at once, but an exception raised while Python runs a finaliser or an at-fork hook is
    printed and dropped; loops call this once per batch so such a signal still stops the run."""
    if _requested["stop"] is not None:
        raise _requested["stop"]()


@contextlib.contextmanager
def hold_signals(second_stop_breaks: bool = False) -> Iterator[None]:
    """A signal arriving inside is recorded and raised at the end of the block instead of inside it: for
    code during which Python would print a traceback and drop the exception (starting loader workers
    forks, and the fork runs at-fork hooks such as logging's), or that must finish with its bookkeeping (a
    checkpoint and the epoch it counts). ``second_stop_breaks``: a second stop while the first waits is
    raised at once, as a second Ctrl-C is meant (for a block that may take seconds, and whose writes are
    atomic); breaking needs every hold in force to allow it."""
    _requested["held"] += 1
    _requested["yielding"] += second_stop_breaks
    try:
        yield
    finally:
        _requested["held"] -= 1
        _requested["yielding"] -= second_stop_breaks
    check_stop()


def _raise_now(pending: bool) -> bool:
    """Whether a stop signal's handler raises where it lands: unless held, or, held, when a stop was already
    waiting and every hold in force lets a second one break it (``hold_signals``)."""
    return not _requested["held"] or (pending and _requested["yielding"] == _requested["held"])


def start_loader(data: Iterable) -> Iterator:
    """``iter(data)`` for a DataLoader, started with signals held (``hold_signals``), and with workers that
    die of the signal that is stopping this process (a scheduler or a terminal signals the whole process
    group) ending quietly: torch's SIGCHLD handler reports a dead worker by raising wherever the main thread
    is, often inside the iterator's finaliser, where Python prints a traceback under the one-line stop
    message. A worker that dies while no stop was asked for is still reported."""
    with hold_signals():  # a signal held here is raised on leaving, after the handler is wrapped
        batches = iter(data)
        _tolerate_workers_stopped_with_us()
    return batches


def _tolerate_workers_stopped_with_us() -> None:
    """Wrap the SIGCHLD handler torch installs when a loader first starts workers (once per process)."""
    if threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGCHLD)
    if not callable(current) or getattr(current, "tolerates_stopped_workers", False):
        return

    def handler(signum, frame):
        try:
            current(signum, frame)
        except RuntimeError:
            if not _requested["signalled"]:
                raise

    handler.tolerates_stopped_workers = True
    signal.signal(signal.SIGCHLD, handler)


_SERVES_HANDOFFS = multiprocessing.resource_sharer._ResourceSharer._serve.__code__


def quiet_worker(_worker_id: int) -> None:
    """``worker_init_fn`` of every DataLoader with workers. A worker hands each batch's tensors to the trainer
    as file descriptors, served to it by a thread of the worker (multiprocessing's resource sharer). A trainer
    stopped by a signal while it takes one closes the connection before asking, and that thread, finding it
    ended (EOFError, or a broken pipe when it sends), prints a traceback under the trainer's one-line stop
    message. Such an ended connection is the trainer's stop, which the trainer reports; any other exception
    is printed as before."""
    printed = sys.excepthook

    def excepthook(kind, value, tb):
        if not (issubclass(kind, (EOFError, ConnectionError)) and tb is not None
                and tb.tb_frame.f_code is _SERVES_HANDOFFS):
            printed(kind, value, tb)

    sys.excepthook = excepthook


class CommandStopped(KeyboardInterrupt):
    """A command stopped by a signal: the CLI prints its one line, ``stopped (how)`` and ``then`` (where it stopped,
    what it kept, how to go on), and exits with ``exit_code`` (130, or 128 + the signal's number). A
    KeyboardInterrupt, so that nothing that carries on after errors (a sweep) carries on after it."""

    def __init__(self, interrupted: BaseException, then: str = ""):
        self.exit_code = 128 + interrupted.signum if isinstance(interrupted, Terminated) else 130
        how = interrupted.how if isinstance(interrupted, Terminated) else "interrupted"
        super().__init__(f"stopped ({how}){then}")


class RunStopped(CommandStopped):
    """A training run stopped by a signal: the line says from which epoch the same command resumes."""

    def __init__(self, interrupted: BaseException, next_epoch: int | None = None, epochs: int | None = None,
                 drop: tuple[str, ...] = ()):
        """``drop``: options of the stopped command that would start the run afresh (``--force``,
        ``--no-resume``), which the rerun that resumes must leave out."""
        rerun = "rerun the same command" + (f" without {' and '.join(drop)}" if drop else "")
        if next_epoch is None:
            resume = ""
        elif epochs is not None and next_epoch > epochs:
            resume = (f" with training done (epoch {epochs} of {epochs}); {rerun} to finish it (the trained model is "
                      "checkpointed: only the final evaluation and the measurements run again)")
        elif next_epoch <= 1:  # no epoch of this attempt finished: nothing to resume (with --no-resume, an earlier
            # checkpoint may still be there, which a rerun without it would resume: the same command it is)
            resume = " before its first epoch ended; rerun the same command to start it again"
        else:
            resume = f"; {rerun} to resume from epoch {next_epoch}"
        super().__init__(interrupted, resume)


def _leave_hung_up_terminal() -> None:
    """Point stdout and stderr that are a terminal at /dev/null: once a terminal has hung up, every write to it
    fails (EIO), and the first progress update or log line would replace the orderly stop with that error.
    A terminal is recognised as a character device (``isatty`` asks the terminal, which no longer answers)."""
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            if stat.S_ISCHR(os.fstat(fd).st_mode):
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, fd)
                os.close(null)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While inside, SIGTERM raises ``Terminated``, SIGHUP ``HungUp`` (unless it is ignored, as under ``nohup``)
    and SIGINT ``KeyboardInterrupt`` in the main thread (held inside ``hold_signals``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    owner = os.getpid()
    _requested["signalled"] = False

    def terminate(signum, frame):
        if os.getpid() != owner:  # a forked loader worker inherited this handler: the trainer, stopping,
            signal.signal(signum, signal.SIG_IGN)  # shuts it down (killed now, it would be reported)
            return
        _requested["handled_at"] = time.monotonic()
        stop = HungUp if signum == signal.SIGHUP else Terminated
        if stop is HungUp:
            _leave_hung_up_terminal()
        pending = _requested["stop"] is not None
        _requested["stop"], _requested["signalled"] = stop, True
        if _raise_now(pending):
            raise stop()

    def interrupt(signum, frame):
        if os.getpid() != owner:  # a forked loader worker (Ctrl-C reaches the terminal's whole process group):
            signal.signal(signum, signal.SIG_IGN)  # the trainer, stopping, shuts it down; raised here, inside
            return  # a finaliser it ran, Python would print a traceback under the trainer's stop line
        _requested["handled_at"] = time.monotonic()
        pending = _requested["stop"] is not None
        _requested["stop"], _requested["signalled"] = KeyboardInterrupt, True
        if _raise_now(pending):
            raise KeyboardInterrupt()

    reported = sys.unraisablehook

    def unraisable(event):
        """A stop raised while a finaliser ran (a loader iterator's, shutting its workers down) is dropped by
        Python with a traceback; ``check_stop`` raises it again (at the next batch, or when the loader has been
        shut down), so it is not shown."""
        if not (_requested["stop"] is not None and isinstance(event.exc_value, (KeyboardInterrupt, Terminated))):
            reported(event)

    handlers = {signal.SIGTERM: terminate, signal.SIGINT: interrupt}
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # nohup asked for the run to outlive the terminal
        handlers[signal.SIGHUP] = terminate
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    sys.unraisablehook = unraisable
    watch = StuckWatch(tuple(handlers))
    try:
        yield
    finally:
        watch.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = reported
        _requested["stop"] = None


NOTICE_S = 2.0  # a stop whose handler has not run after this long is waiting on a native operation
SECOND_S = 1.0  # a second stop ends the command once the first has waited at least this long unhandled
GIL_S = 0.5  # a handler that ran this long before the watch read its signal ran for it (the watch waited its turn)
_HOW = {signal.SIGINT: "interrupted", Terminated.signum: Terminated.how, HungUp.signum: HungUp.how}  # said in lines
_watching: dict = {"in": None}  # the process whose StuckWatch is on: a child forked from it must not feed it


def _leave_wakeup_fd_in_child() -> None:
    """A forked child (a loader worker) shares the watch's socket: the signals it receives (Ctrl-C reaches the
    whole process group) would reach the trainer's watch as if sent twice to the trainer."""
    if _watching["in"] is not None and _watching["in"] != os.getpid():
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(-1)


os.register_at_fork(after_in_child=_leave_wakeup_fd_in_child)


class StuckWatch:
    """A thread that learns of every stop signal as it arrives (``signal.set_wakeup_fd``: the interpreter's own
    C handler writes the signal's number to a socket), even while the main thread is inside one native
    operation that Python cannot leave until it returns.

    A stop whose handler has not run ``NOTICE_S`` seconds after it arrived gets one line: what the command
    waits for, and that a second stop ends it at once. A second stop while the first is still unhandled (and
    has waited ``SECOND_S`` at least: two quick presses are one stop for a command that is not stuck) ends the
    process with ``os._exit`` and the exit code of that signal. Every file the command writes is written
    atomically, so the checkpoint of the last finished epoch, and any result, is intact; a run's lock names a
    process that has ended, which the rerun takes over.
    """

    def __init__(self, signals: tuple[int, ...]):
        self.signals = set(signals)
        self.reader, self.writer = socket.socketpair()
        self.writer.setblocking(False)
        self.previous = signal.set_wakeup_fd(self.writer.fileno(), warn_on_full_buffer=False)
        _watching["in"] = os.getpid()
        self.thread = threading.Thread(target=self._watch, name="stuck-stop-watch", daemon=True)
        self.thread.start()

    def close(self) -> None:
        signal.set_wakeup_fd(self.previous)
        _watching["in"] = None
        with contextlib.suppress(OSError):
            self.writer.shutdown(socket.SHUT_RDWR)  # the thread reads the end of the stream and returns
        self.thread.join(timeout=5)
        self.writer.close()
        self.reader.close()

    def _next(self, timeout: float | None) -> int | None:
        """The number of the next signal that arrives within ``timeout`` s (None: none did; -1: closed)."""
        self.reader.settimeout(timeout)
        try:
            data = self.reader.recv(1)
        except TimeoutError:
            return None
        except OSError:
            return -1
        return data[0] if data else -1

    def _watch(self) -> None:
        first, first_signum, noticed = None, None, False  # the stop no handler has run for yet: when it came, which
        while True:
            wait = None if first is None or noticed else max(0.0, first + NOTICE_S - time.monotonic())
            signum = self._next(wait)
            if signum == -1:
                return
            if first is not None and self._handled_since(first):
                first, noticed = None, False  # the main thread ran the handler: it is stopping
            if signum is None:
                if first is not None and not noticed:
                    noticed = True
                    again = "press Ctrl-C again" if first_signum == signal.SIGINT else "send the signal again"
                    self._say(f"{_HOW[first_signum]}: waiting for an operation that cannot be interrupted to return "
                              f"({time.monotonic() - first:.0f} s so far); {again} to stop at once, keeping every "
                              "file already written")
                continue
            if signum not in self.signals:
                continue
            if first is None:
                first, first_signum = time.monotonic(), signum
                continue
            time.sleep(max(0.0, first + SECOND_S - time.monotonic()))
            if not self._handled_since(first):
                self._say(f"stopped ({_HOW[signum]}) inside an operation that could not be interrupted; every file "
                          "already written is kept: rerun the same command to resume from the last checkpoint")
                os._exit(128 + signum)

    @staticmethod
    def _handled_since(read_at: float) -> bool:
        """Whether a handler ran for a signal the watch read at ``read_at``: the interpreter writes the signal's
        number before the main thread runs the handler, but the watch may read it only after (``GIL_S``)."""
        return _requested["handled_at"] >= read_at - GIL_S

    @staticmethod
    def _say(line: str) -> None:
        with contextlib.suppress(OSError):
            os.write(2, (line + "\n").encode())
