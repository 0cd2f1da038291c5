"""One trainer per run: an exclusive lock on ``.lock`` in the run directory, naming its owner.

The lock is a kernel lock (``fcntl.flock``) on the file, held while the run trains: it is released
when its process ends, however it ends, so two processes can never both hold it, and a crashed
trainer never blocks the run. The file's content (host, pid, start time) names the owner for the
message a second process prints when it stops (or, with ``wait``, waits). Content left by a process
that ended without removing it is taken over, and said so.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

from benchmark.writes import json_from
from vtfpar.errors import UserError

LOCK = ".lock"
# What flock fails with on a file system that keeps no locks (some NFS and FUSE mounts).
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
POLL_SECONDS = 5.0  # how often a waiting process looks at the lock again
HOLDER_BYTES = 4096  # the most of a lock file read for its holder (bench writes ~80 bytes)
# How long a lock whose owner has ended may still be held by that owner's children (DataLoader workers share its
# descriptor and end a moment after it) before the run counts as busy.
ORPHAN_SECONDS = 15.0


class Busy(UserError):
    """What a ``FileLock`` raises while another process holds it; ``waiting()`` is the line a process that
    waits instead logs once."""

    def waiting(self) -> str:
        return f"waiting: {self}"


class RunLocked(Busy):
    """The run is being trained by another process (``who``), and this one was not asked to wait."""

    def __init__(self, run: str, who: str):
        self.run, self.who = run, who
        super().__init__(f"run {run} is being trained by {who}: wait for it (rerun with --wait), or stop that process")

    def __reduce__(self):  # rebuilt from its parts (another process, Ray)
        return type(self), (self.run, self.who)

    def waiting(self) -> str:
        """The line a process that does wait logs once."""
        return f"waiting for {self.who} to finish run {self.run} ..."


class FileLock:
    """An exclusive kernel lock on ``path`` naming its owner; ``busy(who)`` is the error raised while another
    process holds it (with ``wait``, its ``waiting()`` line is logged once instead); ``label`` names what is
    locked and ``fix`` ends the error when the lock file cannot be opened at all."""

    def __init__(self, path: Path, busy: Callable[[str], Busy], label: str, wait: bool = False,
                 log: Callable = print, poll_seconds: float = POLL_SECONDS, fix: str = "choose another --out"):
        self.path, self.busy, self.label, self.fix = Path(path), busy, label, fix
        self.wait, self.log, self.poll = wait, log, poll_seconds
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.fd: int | None = None

    def _holder(self) -> dict:
        return _read_holder(self.path)

    def _try_lock(self) -> bool:
        """Lock the file now at ``self.path`` (it may have been removed and re-created since it was opened)."""
        try:  # the folder again: a holder that failed before writing anything removes it on leaving
            for again in (True, True, False):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                existed = self.path.exists()
                try:
                    # non-blocking: a named pipe in its place would otherwise wait for a writer
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o666)
                    break
                except FileNotFoundError:  # the folder removed since (its holder left it empty): made again
                    if not again:
                        raise
        except OSError as exc:
            raise UserError(f"cannot lock {self.label} ({self.path}: {exc.strerror or exc}); remove {self.path} if "
                            f"it is not a file, or {self.fix}") from None
        if kind := _not_a_file(fd):  # its holder would be read from it: forever (a pipe), or without end (/dev/zero)
            os.close(fd)
            raise UserError(f"cannot lock {self.label}: {self.path} is {kind}, not a lock file; remove it, or "
                            f"{self.fix}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as exc:
            os.close(fd)
            if not existed:  # made by this call: leave the folder as it was (an empty run folder is removed)
                self.path.unlink(missing_ok=True)
            if exc.errno in NO_LOCKS:
                raise UserError(f"cannot lock {self.label} ({self.path}: {exc.strerror or exc}): its file system "
                                "does not keep file locks, which keep two processes from writing the same files; "
                                f"{self.fix} on a local disk or a file system with locking") from None
            raise UserError(f"cannot lock {self.label} ({self.path}: {exc.strerror or exc}); {self.fix}") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder removed the file as we locked it: lock the new one
            os.close(fd)
            return self._try_lock()
        self.fd = fd
        return True

    def __enter__(self) -> FileLock:
        waited = False
        orphaned_until = time.monotonic() + ORPHAN_SECONDS
        while not self._try_lock():
            holder = self._holder()
            if _owner_ended(holder) and time.monotonic() < orphaned_until:
                time.sleep(0.2)  # its workers still hold the lock, and end within moments
                continue
            who = _describe(holder)
            locked = self.busy(who)
            if not self.wait:
                raise locked
            if not waited:
                self.log(locked.waiting())
                waited = True
            time.sleep(self.poll)
        left = self._holder()
        if left.get("pid") is not None:
            self.log(f"taking over the lock of {self.label} left by pid {left['pid']} on "
                     f"{left.get('host')}, which has ended")
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(self.owner).encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # still locked: whoever opens it next re-checks the inode
            os.close(self.fd)
            self.fd = None


def _not_a_file(fd: int) -> str | None:
    """What the open ``fd`` is if it is no regular file ("a named pipe", "a device", "a socket"), else None."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return None
    return "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"


def _read_holder(path: Path) -> dict:
    """The owner a lock file names (host, pid, started), or {} if it names none (or is no regular file, or longer
    than any lock bench writes)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            text = "" if _not_a_file(fd) else os.read(fd, HOLDER_BYTES).decode("utf-8")
        finally:
            os.close(fd)
        holder = json_from(text or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}" if holder
            else "another process")


def _owner_ended(holder: dict) -> bool:
    """Whether the process a lock file names ran on this host and has ended."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or type(pid) is not int or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def trainer_of(run_dir: Path) -> str | None:
    """Who trains the run in ``run_dir`` now ("pid N on HOST since T"), or None. Asked of the kernel lock
    itself (a shared lock is refused while a trainer holds its exclusive one), so a lock file left by a
    killed trainer, whose pid may since name another process, does not count."""
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a named pipe there would wait for a writer
    except OSError:
        return None
    try:
        if _not_a_file(fd):  # no trainer locks one
            return None
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _describe(_read_holder(path))
    except OSError:  # a file system without flock, where no trainer can hold the lock either
        return None
    finally:
        os.close(fd)
    return None


class RunLock(FileLock):
    """One trainer per run: ``.lock`` in the run directory."""

    def __init__(self, run_dir: Path, wait: bool = False, log: Callable = print, poll_seconds: float = POLL_SECONDS):
        name = Path(run_dir).name
        super().__init__(Path(run_dir) / LOCK, lambda who: RunLocked(name, who), f"run {name}", wait, log,
                         poll_seconds)
