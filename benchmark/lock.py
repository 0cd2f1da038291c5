"""One trainer per run: a lock file in the run directory, created atomically, naming its owner.

``.lock`` holds the owner's host, pid and start time. It is created with ``os.link`` from a
complete temporary file, so it either does not exist or is whole. A second process asking for the
same run stops with one line naming the owner, or with ``wait`` waits until the lock is gone. A lock
left by a process that no longer exists on this host is taken over (and said so); one from another
host is never taken over (its process cannot be checked from here).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from vtfpar.errors import UserError

LOCK = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    def __init__(self, run_dir: Path, wait: bool = False, log: Callable = print, poll_seconds: float = 5.0):
        self.path = Path(run_dir) / LOCK
        self.wait, self.log, self.poll = wait, log, poll_seconds
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def _try_create(self) -> bool:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".lock.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.owner, f)
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def __enter__(self) -> RunLock:
        waited = False
        while not self._try_create():
            holder = self._holder()
            if holder is None:  # released between our attempt and the read
                continue
            host, pid = holder.get("host"), holder.get("pid")
            if host == self.owner["host"] and isinstance(pid, int) and not _alive(pid):
                self.log(f"taking over the lock of {self.path.parent.name} left by pid {pid}, which has ended")
                self.path.unlink(missing_ok=True)
                continue
            who = f"pid {pid} on {host} since {holder.get('started')}" if holder else f"an unreadable {self.path}"
            if not self.wait:
                raise UserError(f"run {self.path.parent.name} is being trained by {who}: wait for it (rerun with "
                                f"--wait), or delete {self.path} if that process is gone")
            if not waited:
                self.log(f"waiting for {who} to finish run {self.path.parent.name} ...")
                waited = True
            time.sleep(self.poll)
        return self

    def __exit__(self, *exc) -> None:
        if self._holder() == self.owner:
            self.path.unlink(missing_ok=True)
