"""A ceiling on a ``bench`` process's private memory, so that settings too large for the machine end in one line.

Linux overcommits: an allocation larger than what is free still succeeds, and a command whose settings
need more memory than the machine has (``--set data.frames=100000`` builds a temporal side network of
100,000 blocks) then pushes the page cache and every other process out of memory for minutes until the
kernel kills something. Under ``memory_ceiling`` the process may map at most what it maps when the command
starts, plus what the machine (or its container, cgroup v2 ``memory.max``) has available then, plus a
margin for the address space that torch's libraries and threads map without ever touching (about 1 GB on
import, and a stack per thread), as private writable memory (``RLIMIT_DATA``, which counts exactly that
since Linux 4.7). Past it an allocation fails at once; torch raises "can't allocate memory" (the interpreter a
``MemoryError``, or for some of its own allocations a ``SystemError``), and ``bench`` answers with one line naming
the settings to lower. Swap is not counted as available: a run that needs it
would spend its time swapping.

The limit is per process: each process ``bench`` starts (loader workers, compile workers, Ray's) inherits
the same ceiling, and each torchrun rank, itself a ``bench`` process, sets its own.

Linux only. Without ``VTFPAR_MEMORY_LIMIT``, only without a GPU driver (no ``/dev/nvidiactl``, ``/dev/kfd`` or
``/dev/dxg``): a GPU driver maps memory of its own into the process, and a GPU run keeps its tensors on the
device anyway; a limit that is set applies on a GPU machine too. The environment variable
``VTFPAR_MEMORY_LIMIT`` sets what a process may map beyond what it maps when the command starts (and the
margins) instead of what the machine has available (``16G``, ``1.5G`` ...; at least ``MIN_BYTES``), or turns
the ceiling off (``0``).

Before any data is read, ``check_batch_fits`` refuses a batch of clips that alone would not fit (``--set
data.frames=100000``): one line at once rather than minutes of rendering frames up to the ceiling.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vtfpar.errors import UserError

ENV = "VTFPAR_MEMORY_LIMIT"
GPU_DRIVER_FILES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")
MIN_BYTES = 2**30  # the least VTFPAR_MEMORY_LIMIT: less leaves no room for a model and a batch
IMPORT_MARGIN = 2**30  # mapped by the imports and never touched (CUDA libraries' zeroed data, even on a CPU)
THREAD_MARGIN = 32 * 2**20  # per CPU: a thread's stack and its malloc arena's first heap
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


@dataclass(frozen=True)
class Ceiling:
    bytes: int
    source: str  # "env" (VTFPAR_MEMORY_LIMIT), "available" (what the machine had), "ulimit" (lower, already set)
    asked: int = 0  # source "env": VTFPAR_MEMORY_LIMIT's bytes, on top of what the process maps to start

    def describe(self) -> str:
        why = {"env": f"set by {ENV}, {self.asked / 2**30:.1f} GiB beyond what bench maps to start",
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
        raise UserError(f"{ENV}={text!r} is below {MIN_BYTES // 2**30} GiB, too little for a model and a batch: use "
                        "at least 1G, or 0 for no ceiling")
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


def available_bytes() -> int | None:
    """What the machine (or this process's cgroup) has available now, swap not counted; None if unknown."""
    available = read_kib("/proc/meminfo", ("MemAvailable",)).get("MemAvailable")
    room = _cgroup_room()
    return room if available is None else available if room is None else min(available, room)


def asked_limit() -> int | None:
    """``VTFPAR_MEMORY_LIMIT`` in bytes, 0 where it turns the ceiling off, None where it is not set; a malformed
    value is a one-line error on every platform (``parse_size``)."""
    text = os.environ.get(ENV, "").strip()
    return (parse_size(text) or 0) if text else None


def find_ceiling() -> Ceiling | None:
    """The ceiling to set: what this process maps now plus the margins plus ``VTFPAR_MEMORY_LIMIT`` if set, else
    plus what the machine has available; None where there is none to set (0, a GPU driver, not Linux)."""
    asked = asked_limit()
    if not sys.platform.startswith("linux") or asked == 0:
        return None
    if asked is None and any(os.path.exists(f) for f in GPU_DRIVER_FILES):
        return None
    mapped = read_kib("/proc/self/status", ("VmData",)).get("VmData")
    if mapped is None and asked is not None:
        mapped = 0  # the limit asked for, without what the process maps to start
    room = asked if asked is not None else available_bytes()
    if mapped is None or room is None:
        return None
    margin = IMPORT_MARGIN + THREAD_MARGIN * (os.cpu_count() or 1)
    return Ceiling(mapped + room + margin, "env", asked) if asked else Ceiling(mapped + room + margin, "available")


def check_batch_fits(batch: int, frames: int, size: int, batch_setting: str = "train.batch_size (--batch-size)",
                     fix: str | None = None, fewer: Callable[[int], str] | None = None) -> None:
    """Refuse, before any data is read, settings whose one batch of float clips ([batch, frames, 3, size, size])
    is more than a process may use: ``VTFPAR_MEMORY_LIMIT`` if set (``0``: no check), else what the machine has
    available. A lower bound of what training needs, but one that a typo in the frames or batch breaks at once.
    ``fix`` ends the error (default: lower the frames or ``batch_setting``); ``fewer``, where one clip fits, ends
    it instead, given the most clips that fit (fewer than ``batch``)."""
    asked = asked_limit()
    if asked == 0:
        return
    need = batch * frames * 3 * size * size * 4
    room = asked if asked is not None else available_bytes()
    if room is not None and need > room:
        where = f"{ENV} allows" if asked is not None else "this machine has available"
        fitting = room // (need // batch)
        raise UserError(f"one batch of {batch} clips x {frames} frames at {size} px is {need / 2**30:.1f} GiB, more "
                        f"than the {room / 2**30:.1f} GiB {where}: " +
                        (fewer(fitting) if fewer and fitting else fix or
                         f"lower data.frames (--frames) or {batch_setting}"))


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


# what a failed allocation surfaces as (torch's CPU allocator: RuntimeError; the interpreter at the data-size limit, at
# times: SystemError; a size past 64 bits, as torch reads it: TypeError): caught, then told from other errors by
# ``out_of_memory``
ALLOCATION_ERRORS = (MemoryError, RuntimeError, SystemError, TypeError)
AT_LIMIT_MARGIN = 64 * 2**20  # within this of the data-size limit, the next small allocation may already fail
_INTERPRETER_FAILURE = "an allocation inside Python failed"


def at_data_limit(limit: int | None = None) -> bool:
    """Whether this process maps (``VmData``) within ``AT_LIMIT_MARGIN`` of ``limit`` bytes, by default its
    data-size limit in force (``RLIMIT_DATA``, ``memory_ceiling``'s); False where there is none or it cannot tell."""
    if limit is None:
        try:
            import resource

            limit = resource.getrlimit(resource.RLIMIT_DATA)[0]
            if limit == resource.RLIM_INFINITY:
                return False
        except (ImportError, ValueError, OSError):
            return False
    mapped = read_kib("/proc/self/status", ("VmData",)).get("VmData")
    return mapped is not None and mapped >= limit - AT_LIMIT_MARGIN


_NO_EXCEPTION_SET = ("without setting an exception", "error return without exception set")


def _interpreter_out_of_memory(exc: BaseException, limit: int | None) -> bool:
    """A ``SystemError`` that a failed call raised in place of an exception it did not set ("<function ...>
    returned NULL without setting an exception"), at the data-size limit: an allocation the interpreter made for
    itself failed without becoming a ``MemoryError``. Where the limit lands among the many small allocations of
    building a large model decides which of the two it is. Any other ``SystemError`` is a bug, whatever memory is
    mapped. ``limit``: the ceiling that was in force, where it no longer is (``at_data_limit``)."""
    return isinstance(exc, SystemError) and any(s in str(exc) for s in _NO_EXCEPTION_SET) and at_data_limit(limit)


# torch's answers to a tensor size past what any allocator takes (a setting of 10**20 channels, say)
_SIZE_OVERFLOW = ("overflow when unpacking long long", "storage size calculation overflowed",
                  "integer multiplication overflow")
_SIZE_FAILURE = "a tensor size past what torch can allocate"


def _size_overflow(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(s in text for s in _SIZE_OVERFLOW)


def out_of_memory(exc: BaseException, limit: int | None = None) -> bool:
    """An allocation that failed (host: MemoryError, torch's CPU allocator, the interpreter's own at the data-size
    limit, ``limit`` where it is no longer in force; GPU: torch.OutOfMemoryError), or a size torch cannot even
    compute: settings too large for the machine, not a bug."""
    text = str(exc).lower()  # a loader worker's error comes back as its message (type named in it)
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or any(
        s in text for s in ("can't allocate memory", "out of memory", "memoryerror", "unable to allocate",
                            "can't start new thread",  # a thread's stack too
                            *_SIZE_OVERFLOW)) or _interpreter_out_of_memory(exc, limit)


def allocation_failure(exc: BaseException) -> str:
    """The last line of an allocation error, without torch's source location ("[enforce fail at ...] err == 0.");
    an interpreter's ``SystemError`` (``_interpreter_out_of_memory``) is said as what it was, not as its text."""
    if isinstance(exc, SystemError):
        return _INTERPRETER_FAILURE
    if _size_overflow(exc):  # its text goes on with torch's C++ frames
        return _SIZE_FAILURE
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]  # a loader worker's: its traceback
    text = re.sub(r"\[enforce fail at [^\]]*\]\s*(err == 0\.\s*)?", "", lines[-1]) if lines else type(exc).__name__
    return text[:160]


def out_of_memory_message(exc: BaseException, command: str = "") -> str:
    """The one line an allocation failure (``out_of_memory``) ends in: what failed and what to lower, in the options
    of ``command`` where it is one with options of its own (``bench perf`` has no settings file)."""
    if command == "bench perf":
        return (f"out of memory ({allocation_failure(exc)}): lower --batch or --frames, leave the largest rows out "
                "of --methods, or use a device with more memory")
    if command in ("bench eval", "bench predict"):
        return (f"out of memory ({allocation_failure(exc)}): lower --batch-size (clips evaluated at once; by default "
                "the run's train.eval_batch_size), or use a device with more memory (--device)")
    if command == "bench pretrain-clip":
        return (f"out of memory ({allocation_failure(exc)}): lower --batch-size, --images or --heldout (the pairs "
                "are drawn in memory), or --threads")
    return (f"out of memory ({allocation_failure(exc)}): lower the batch (train.batch_size, train.eval_batch_size, "
            "--batch), the frames (data.frames, --frames) or the model's size (model.fusion_width, the method's "
            "methods.<method>.* sizes such as lora.rank or side_tuning.width), or use a device with more memory")
