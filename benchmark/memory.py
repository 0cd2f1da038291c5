"""A ceiling on ``bench``'s private memory, so that settings too large for the machine end in one line.

Linux overcommits: an allocation larger than what is free still succeeds, and a command whose settings
need more memory than the machine has (``--set data.frames=100000`` builds a temporal side network of
100,000 blocks) then pushes the machine's page cache and every other process out of memory for minutes
until the kernel kills it. Under ``memory_ceiling`` the process may map at most what it holds when the
command starts plus what the machine has available then (``MemAvailable + SwapFree``) as private,
writable memory (``RLIMIT_DATA``, which counts exactly that since Linux 4.7). Past it an allocation fails at
once; torch raises "can't allocate memory", and ``bench`` answers with one line naming the settings to lower.
The ceiling is far above any run that fits: such a run's private mappings stay close to its resident memory.

Only on machines without a GPU driver (no ``/dev/nvidiactl``, ``/dev/kfd`` or ``/dev/dxg``): a GPU driver
maps memory of its own into the process, and a GPU run keeps its tensors on the device anyway. The
environment variable ``VTFPAR_MEMORY_LIMIT`` sets the ceiling instead (``16G``, ``512M``, a number of bytes)
or turns it off (``0``). Processes the command starts (loader workers, torchrun ranks, Ray) inherit it.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

from vtfpar.errors import UserError

ENV = "VTFPAR_MEMORY_LIMIT"
GPU_DRIVER_FILES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}

def parse_size(text: str) -> int:
    """``16G``, ``512m``, ``1.5G``, ``2048`` (bytes) -> bytes; a one-line ``UserError`` naming ``ENV`` otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtKMGT]?)(?:i?[bB])?\s*", text)
    if not match:
        raise UserError(f"{ENV}={text!r} is not a size: use e.g. 16G, 512M, a number of bytes, or 0 for no ceiling")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _meminfo() -> dict[str, int]:
    """/proc/meminfo and this process's VmData, in bytes ({} where they cannot be read)."""
    values = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        for path, keys in (("/proc/meminfo", ("MemAvailable", "SwapFree")), ("/proc/self/status", ("VmData",))):
            with open(path) as f:
                for line in f:
                    key = line.split(":", 1)[0]
                    if key in keys:
                        values[key] = int(line.split()[1]) * 1024
    return values


def ceiling_bytes() -> int | None:
    """The ceiling to set: from ``VTFPAR_MEMORY_LIMIT`` if set (None for 0), else what this process holds
    plus what the machine has available, or None (a GPU driver is present, or not Linux)."""
    text = os.environ.get(ENV, "").strip()
    if text:
        size = parse_size(text)
        return size or None
    if any(os.path.exists(f) for f in GPU_DRIVER_FILES):
        return None
    info = _meminfo()
    if not {"MemAvailable", "SwapFree", "VmData"} <= info.keys():
        return None
    return info["VmData"] + info["MemAvailable"] + info["SwapFree"]


@contextlib.contextmanager
def memory_ceiling() -> Iterator[int | None]:
    """Hold the process (and what it starts) to ``ceiling_bytes()`` of private memory; restore the previous
    limit on exit. Never raises a lower limit already in force. Yields the ceiling in bytes, or None."""
    try:
        import resource
    except ImportError:  # not a Unix
        yield None
        return
    limit = ceiling_bytes()
    previous = resource.getrlimit(resource.RLIMIT_DATA)
    if limit is None:
        yield None
        return
    soft, hard = previous
    if soft != resource.RLIM_INFINITY:
        limit = min(limit, soft)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    except (ValueError, OSError):
        yield None
        return
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, previous)
