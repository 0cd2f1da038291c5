"""A ceiling on a ``bench`` process's private memory, so that settings too large for the machine end in one line.

Linux overcommits: an allocation larger than what is free still succeeds, and a command whose settings
need more memory than the machine has (``--set data.frames=100000`` builds a temporal side network of
100,000 blocks) then pushes the page cache and every other process out of memory for minutes until the
kernel kills something. Under ``memory_ceiling`` the process may map at most what it maps when the command
starts, plus what the machine (or its container, cgroup v2 ``memory.max``) has available then, plus a
margin for the address space that torch's libraries and threads map without ever touching (about 1 GB on
import, and a stack per thread), as private writable memory (``RLIMIT_DATA``, which counts exactly that
since Linux 4.7). Past it an allocation fails at once; torch raises "can't allocate memory", and ``bench``
answers with one line naming the settings to lower. Swap is not counted as available: a run that needs it
would spend its time swapping.

The limit is per process: each process ``bench`` starts (loader workers, compile workers, Ray's) inherits
the same ceiling, and each torchrun rank, itself a ``bench`` process, sets its own.

Linux only, and only without a GPU driver (no ``/dev/nvidiactl``, ``/dev/kfd`` or ``/dev/dxg``): a GPU
driver maps memory of its own into the process, and a GPU run keeps its tensors on the device anyway.
The environment variable ``VTFPAR_MEMORY_LIMIT`` sets the ceiling instead (``16G``, ``512M`` ...; at least
``MIN_BYTES``, which bench needs to start) or turns it off (``0``).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vtfpar.errors import UserError

ENV = "VTFPAR_MEMORY_LIMIT"
GPU_DRIVER_FILES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")
MIN_BYTES = 2**30  # importing torch maps ~0.9 GB of private memory; below this bench cannot start
IMPORT_MARGIN = 2**30  # mapped by the imports and never touched (CUDA libraries' zeroed data, even on a CPU)
THREAD_MARGIN = 32 * 2**20  # per CPU: a thread's stack and its malloc arena's first heap
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


@dataclass(frozen=True)
class Ceiling:
    bytes: int
    source: str  # "env" (VTFPAR_MEMORY_LIMIT), "available" (what the machine had), "ulimit" (lower, already set)

    def describe(self) -> str:
        why = {"env": f"set by {ENV}",
               "available": f"what the machine had available when it started; {ENV} sets another",
               "ulimit": "the data-size limit (ulimit -d) this process was started with"}[self.source]
        return f"this command could map {self.bytes / 2**30:.1f} GiB: {why}"


def parse_size(text: str) -> int | None:
    """``16G``, ``512m``, ``1.5G``, ``3 GiB`` -> bytes; ``0`` -> None (no ceiling). A one-line ``UserError``
    naming ``ENV`` for anything else, or for less than ``MIN_BYTES``."""
    match = re.fullmatch(r"\s*(\d{1,15}(?:\.\d{1,9})?)\s*([kmgtKMGT]?)(?:i?[bB])?\s*", text)
    if not match:
        raise UserError(f"{ENV}={text!r} is not a size: use e.g. 16G, 512M, a number of bytes, or 0 for no ceiling")
    value = float(match.group(1))
    if value == 0:
        return None
    size = math.ceil(value * _UNITS[match.group(2).upper()])
    if size < MIN_BYTES:
        raise UserError(f"{ENV}={text!r} is below the {MIN_BYTES // 2**30} GiB bench needs to start: use at least "
                        "1G, or 0 for no ceiling")
    return size


def read_kib(path: str, keys: tuple[str, ...]) -> dict[str, int]:
    """``keys`` of a ``/proc`` file written as ``Key: <n> kB`` (``/proc/self/status``, ``/proc/meminfo``), in
    bytes; those it cannot read are left out."""
    values = {}
    with contextlib.suppress(OSError, ValueError, IndexError), open(path) as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in keys:
                values[key] = int(line.split()[1]) * 1024
    return values


def _cgroup_room() -> int | None:
    """What this process's cgroup v2 may still take (``memory.max - memory.current``), or None if unlimited."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        line = next(ln for ln in Path("/proc/self/cgroup").read_text().splitlines() if ln.startswith("0::"))
        folder = Path("/sys/fs/cgroup") / line[3:].strip().lstrip("/")
        limit = (folder / "memory.max").read_text().strip()
        if limit != "max":
            return max(0, int(limit) - int((folder / "memory.current").read_text()))
    return None


def find_ceiling() -> Ceiling | None:
    """The ceiling to set: from ``VTFPAR_MEMORY_LIMIT`` if set, else what this process maps plus what the
    machine has available plus the margins; None where there is none to set (0, a GPU driver, not Linux)."""
    text = os.environ.get(ENV, "").strip()
    if text:
        size = parse_size(text)
        return Ceiling(size, "env") if size and sys.platform.startswith("linux") else None
    if not sys.platform.startswith("linux") or any(os.path.exists(f) for f in GPU_DRIVER_FILES):
        return None
    mapped = read_kib("/proc/self/status", ("VmData",)).get("VmData")
    available = read_kib("/proc/meminfo", ("MemAvailable",)).get("MemAvailable")
    if mapped is None or available is None:
        return None
    room = _cgroup_room()
    if room is not None:
        available = min(available, room)
    margin = IMPORT_MARGIN + THREAD_MARGIN * (os.cpu_count() or 1)
    return Ceiling(mapped + available + margin, "available")


@contextlib.contextmanager
def memory_ceiling() -> Iterator[Ceiling | None]:
    """Hold the process (and what it starts) to ``find_ceiling()`` of private memory; restore the previous
    limit on exit. Never raises a lower limit already in force. Yields the ceiling in force, or None."""
    ceiling = find_ceiling()  # a malformed VTFPAR_MEMORY_LIMIT is an error on every platform
    try:
        import resource
    except ImportError:  # not a Unix
        ceiling = None
    if ceiling is None:
        yield None
        return
    previous = resource.getrlimit(resource.RLIMIT_DATA)
    for bound in previous:
        if bound != resource.RLIM_INFINITY and bound <= ceiling.bytes:
            ceiling = Ceiling(bound, "ulimit")
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (ceiling.bytes, previous[1]))
    except (ValueError, OSError, OverflowError):
        yield None
        return
    try:
        yield ceiling
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, previous)


def out_of_memory(exc: BaseException) -> bool:
    """An allocation that failed (host: MemoryError, torch's CPU allocator; GPU: torch.OutOfMemoryError):
    settings too large for the machine, not a bug."""
    text = str(exc).lower()  # a loader worker's error comes back as its message (type named in it)
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or any(
        s in text for s in ("can't allocate memory", "out of memory", "memoryerror", "unable to allocate",
                            "can't start new thread"))  # a thread's stack is memory too


def allocation_failure(exc: BaseException) -> str:
    """The last line of an allocation error, without torch's source location ("[enforce fail at ...] err == 0.")."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]  # a loader worker's: its traceback
    text = re.sub(r"\[enforce fail at [^\]]*\]\s*(err == 0\.\s*)?", "", lines[-1]) if lines else type(exc).__name__
    return text[:160]


def out_of_memory_message(exc: BaseException) -> str:
    """The one line an allocation failure (``out_of_memory``) ends in: what failed and what to lower."""
    return (f"out of memory ({allocation_failure(exc)}): lower the batch (train.batch_size, train.eval_batch_size, "
            "--batch), the frames (data.frames, --frames) or the model's size (model.fusion_width), or use a device "
            "with more memory")
