"""Files written so that nothing already written is lost: the one owner of how bench writes a file.

A file is written to a temporary file beside it and renamed onto it (``atomic_write_with``), so readers never see
half a file and a failed write (disk full, quota) leaves the previous file whole and says so in one line. Before a
run starts, ``check_writable`` and ``check_writable_folder`` say in one line why a path cannot be written (a file
in the way, a dangling link, no permission, a name too long), naming the option that chose it. A symbolic link is
written through: its target is replaced, the link stays. Files get the permissions the umask gives, so that others
on a shared file system can read them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from vtfpar.errors import LOOP, UserError, one_line, why_missing
from vtfpar.files import new_temporary, remove_temporaries, temporary_pattern


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give: results stay readable on a shared file system


NAME_MAX = 255  # bytes in one file or folder name: what Linux's and macOS's file systems take


def left_temporaries(folder: Path, names: tuple[str, ...]) -> list[Path]:
    """The temporary files in ``folder`` that ``atomic_write_with`` makes while it writes one of ``names`` there
    (``.<name>.<8 random characters>.tmp``, regular files only), sorted. Only the writer's own: a caller that
    removes them must know that no process is writing there now (``bench run`` holds the run's lock)."""
    pattern = temporary_pattern(names)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    return sorted(Path(e.path) for e in entries if pattern.fullmatch(e.name) and e.is_file(follow_symlinks=False))


def check_name_lengths(path: Path, what: str) -> None:
    """Refuse, before any work, a path with a file or folder name longer than a file system takes (one line
    naming ``what``), which would otherwise be found only when the output is written, after the work."""
    for part in Path(path).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise UserError(f"{what} {path}: the name {part[:24]}... is {len(os.fsencode(part))} bytes long, longer "
                            f"than a file system takes ({NAME_MAX}); choose a shorter name")


def check_writable(path: Path, option: str, example: str) -> None:
    """Refuse, before any work, an output file ``option`` names that ``atomic_write_with`` could not write:
    a folder, or one whose nearest existing folder above is a file or is not writable.

    These checks ask ``os.path``, which answers False where Python 3.11's ``pathlib`` raises (a path under a
    folder this user may not search), so that such a path too ends in the one-line error. A symbolic link is
    checked as its target, and a FIFO or device (``/dev/stdout``) only for permission to write to it."""
    check_name_lengths(path, option)
    if writes_through(path):
        if not os.access(path, os.W_OK):
            raise UserError(f"{option} {path}: cannot write to it (permission denied); choose a writable file")
        return
    path = write_target(path)
    if os.path.isdir(path):
        raise UserError(f"{option} {path} is a folder; give a file name such as {path / example}")
    parent = _nearest_existing(path.parent)
    if parent is not None and not os.path.isdir(parent):
        raise UserError(f"{option} {path}: {parent} is a file, not a folder; choose another folder")
    if parent is None or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot create or write to {parent or path.parent}; choose a writable "
                        "folder")


def write_target(path: Path) -> Path:
    """Where a write to ``path`` lands: a symbolic link's target (the link stays a link, as with a shell's
    ``>``; a link to nothing yet makes its target), else ``path`` itself."""
    if not os.path.islink(path):
        return Path(path)
    try:
        return Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:
        return Path(os.path.realpath(path))
    except OSError:  # ELOOP
        raise UserError(f"{path} is a loop of symbolic links; remove it, or write elsewhere") from None


# A path that names a stream of a process, not a file: /dev/stdout, /dev/fd/3, /proc/<pid or self>/fd/3.
_STREAM_PATH = re.compile(r"/dev/(?P<std>stdin|stdout|stderr)|(?:/dev|/proc/(?P<process>[^/]+))/fd/(?P<fd>\d+)")


def carries_mark(path: Path, mark: str, limit: int | None = None) -> bool:
    """Whether the file at ``path`` holds ``mark`` (within its first ``limit`` bytes, if given): how bench tells a
    file it wrote and marked (a contact sheet, an exported video: the mark is in their metadata) from a file of the
    user's of that name, before replacing it. Read in chunks: a large file costs one chunk of memory."""
    needle, tail, seen = mark.encode(), b"", 0
    with open(path, "rb") as f:
        while chunk := f.read(2**20 if limit is None else min(2**20, limit - seen)):
            if needle in tail + chunk:
                return True
            tail, seen = chunk[-(len(needle) - 1):], seen + len(chunk)
    return False


def writes_through(path: Path) -> bool:
    """Written into, never replaced: a stream path (``/dev/stdout``, ``/dev/fd/N``, ``/proc/<pid>/fd/N``, whatever
    the stream is: a terminal, a pipe, or a file the shell redirected to) or an existing file that is neither
    regular nor a folder (a FIFO, a device such as /dev/null, a socket)."""
    if _STREAM_PATH.fullmatch(os.path.abspath(path)):
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left, or the user's quota spent: freeing space is the fix


class WriteError(UserError):
    """A file that could not be written: ``what`` failed and why, ``then`` what was kept and the fix; ``errno``
    the OS's error number (None where it gave none)."""

    def __init__(self, what: str, then: str, errno_: int | None):
        super().__init__(f"{what}; {then}")
        self.what, self.errno = what, errno_


def atomic_write_with(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp_path)`` to a temporary file in the same folder, then rename it onto ``path``.

    Readers never see half a file, and a failed write (disk full, permissions) leaves the previous file
    as it was: the error says so in one line. Through a symbolic link the link's target is replaced, not the
    link; a FIFO or device (``--csv /dev/stdout``) is written through, from a temporary file elsewhere, and
    never replaced.
    """
    if writes_through(path):
        _write_through(Path(path), write)
        return
    path = write_target(path)
    made: list[str] = []
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = new_temporary(path.parent, path.name, made)
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.isdir(path):
            raise WriteError(f"could not write {path}: it is a folder", "give a file name", exc.errno) from None
        if not os.path.isdir(path.parent):
            file = _file_in_the_way(path.parent)
            why = f"{file} is a file, not a folder" if file else exc.strerror or str(exc)
            raise WriteError(f"could not write {path}: its folder {path.parent} cannot be created ({why})",
                             "nothing was written", exc.errno) from None
        kept = "the previous file is intact" if os.path.exists(path) else "nothing was written"
        fix = "; free space there or write elsewhere" if exc.errno in DISK_FULL else ""
        raise WriteError(f"could not write {path} ({exc.strerror or exc})", kept + fix, exc.errno) from None
    finally:
        remove_temporaries(made)


def _write_through(path: Path, write: Callable[[str], None]) -> None:
    """``write`` into a temporary file in the temporary folder, then append its bytes to the stream, FIFO or
    device ``path`` (which cannot be renamed onto, and may not take ``fsync``; appended, so that a file a shell
    redirected stdout to keeps what was printed before)."""
    made: list[str] = []
    try:
        tmp = new_temporary(Path(tempfile.gettempdir()), path.name, made)
        write(tmp)
        fd = _own_stream(path)
        if fd is not None:  # this process's stdout (or another of its descriptors): written at its own position
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            with open(tmp, "rb") as src:
                while chunk := src.read(1 << 20):
                    while chunk:
                        chunk = chunk[os.write(fd, chunk):]
            return
        with open(tmp, "rb") as src, open(path, "ab") as dst:
            shutil.copyfileobj(src, dst)
    except OSError as exc:
        raise UserError(f"could not write {path} ({exc.strerror or exc})") from None
    finally:
        remove_temporaries(made)


def _own_stream(path: Path) -> int | None:
    """The descriptor number ``/dev/stdout``, ``/dev/stderr``, ``/dev/fd/N`` or ``/proc/self/fd/N`` names in this
    process (None for any other path): written through the descriptor itself, so that a file the shell opened
    for stdout gets the bytes where the process's own prints go, not at an offset of a second opening."""
    match = _STREAM_PATH.fullmatch(os.path.abspath(path))
    if match is None or match["process"] not in (None, "self", str(os.getpid())):
        return None
    return {"stdin": 0, "stdout": 1, "stderr": 2}[match["std"]] if match["std"] else int(match["fd"])


def _nearest_existing(path: Path) -> Path | None:
    """``path``, or the nearest folder above it, that exists (``os.path``: never raises, as pathlib can)."""
    return next((p for p in (Path(path), *Path(path).parents) if os.path.exists(p)), None)


def _file_in_the_way(folder: Path) -> Path | None:
    """The file where ``folder`` or the nearest existing folder above it should be, if that is why it cannot be
    created."""
    nearest = _nearest_existing(folder)
    return nearest if nearest is not None and not os.path.isdir(nearest) else None


def dangling_link(folder: Path) -> str | None:
    """Why ``folder`` cannot be created, and what would mend it, if a symbolic link (it, or one above it) leads
    nowhere: "L is a symbolic link to T, which does not exist; create that folder", or, for links that lead back
    to themselves, "the symbolic links of L lead back to themselves; mend them"."""
    link = next((p for p in (Path(folder), *Path(folder).parents) if os.path.islink(p) and not os.path.exists(p)),
                None)
    if link is None:
        return None
    if why_missing(link) == LOOP:
        return f"the symbolic links of {link} lead back to themselves; mend them"
    return f"{link} is a symbolic link to {os.readlink(link)}, which does not exist; create that folder"


def probe_folder(folder: Path) -> None:
    """Create ``folder`` if needed and write (and remove) a file in it; OSError if either fails. Tried twice: a run
    failing at the same moment removes the empty folders it made (``kept_only_if_used``), which may be this one's
    parents, between their creation here and this folder's."""
    for attempt in (1, 2):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe."):
                pass
            return
        except FileNotFoundError:
            if attempt == 2:
                raise


@contextlib.contextmanager
def kept_only_if_used(folder: Path) -> Iterator[None]:
    """Folders up to ``folder`` that do not exist yet and that the block creates (``check_writable_folder`` does)
    are removed again if the block fails and leaves them empty: a command refused after checking its output folder
    leaves no trace."""
    folder = Path(os.path.abspath(folder))  # "new/../runs" is ./runs: an existing one is not removed
    missing = [p for p in (folder, *folder.parents) if not os.path.lexists(p)]
    try:
        yield
    except BaseException:
        for p in missing:  # deepest first; one that holds anything stays, and so does every folder above it
            try:
                p.rmdir()
            except OSError:
                break
        raise


def check_writable_folder(folder: Path, fix: str) -> None:
    """``folder`` exists or can be created, and a file can be written in it: checked before long work
    whose output goes there; ``fix`` ends the one-line error (e.g. "choose another --out")."""
    check_name_lengths(folder, "cannot write in")
    try:
        probe_folder(folder)
    except OSError as exc:
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise UserError(f"cannot write in {folder}: it is a file, not a folder; {fix}") from None
        if file := _file_in_the_way(folder):
            raise UserError(f"cannot write in {folder}: {file} is a file, not a folder; {fix}") from None
        if why := dangling_link(folder):
            raise UserError(f"cannot write in {folder}: {why}, or {fix}") from None
        nearest = _nearest_existing(folder)
        if nearest is not None and nearest != Path(folder):  # creating it failed: say where
            raise UserError(f"cannot write in {folder}: it cannot be created in {nearest} ({exc.strerror or exc}); "
                            f"{fix}") from None
        raise UserError(f"cannot write in {folder} ({exc.strerror or exc}); {fix}") from None


def atomic_write_text(path: Path, text: str) -> None:
    """``text`` as UTF-8; a file name in it that is not UTF-8 (bytes of another system's encoding, which Python holds
    as surrogates) is written back as the bytes it was, as the file system names the file."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    atomic_write_with(path, write)


def json_from(text: str) -> Any:
    """``json.loads(text)``; JSON nested deeper than the parser's recursion limit (no file bench writes) is raised as
    the ValueError of any other text that is not bench's JSON, not as a RecursionError its readers do not expect."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply to be read") from None


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=json_default) + "\n")


def atomic_torch_save(path: Path, obj: Any) -> None:
    def write(tmp: str) -> None:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:  # torch's writer reports a failed write as "unexpected pos ..."
            if _free_bytes(Path(tmp).parent) < (1 << 20):  # the usual cause, said as the OS says it
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
            raise OSError(one_line(exc)[:120]) from None

    atomic_write_with(path, write)


def _free_bytes(folder: Path) -> int:
    """Bytes this user can still write in ``folder``'s file system (a large number if it cannot be asked)."""
    try:
        fs = os.statvfs(folder)
    except OSError:
        return 1 << 62
    return fs.f_bavail * fs.f_frsize


def load_torch_file(path: Path, keys: tuple[str, ...] = (), fix: str = "delete it, or rerun with --force") -> dict:
    """A checkpoint or weights file saved by this suite, with ``keys`` present; one line naming the file
    and ending in ``fix`` if it is truncated, corrupt or of another kind."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:  # a whole file this user may not read: not one to delete (bench's top level says so)
        raise
    except Exception as exc:  # noqa: BLE001 - EOFError, UnpicklingError, RuntimeError...: all mean a bad file
        raise UserError(f"{path} is unreadable ({type(exc).__name__}: {one_line(exc)[:120]}); it is truncated or "
                        f"not written by bench: {fix}") from None
    missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}: it was not written by this version of bench; {fix}")
    return obj


def json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
