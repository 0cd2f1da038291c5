"""The one exception type for problems the user can fix (bad config, missing file, bad data).

The CLI prints these as a single line and exits with code 2; anything else is a bug and keeps
its traceback.
"""

import errno
import os
import re


class UserError(Exception):
    """A problem with the user's input; the message names the file or setting and the fix."""


# "decode_png, /__w/vision/.../csrc/io/image/cpu/decode_png.cpp:62, " : where in a C++ library a check failed
_NATIVE_SOURCE = re.compile(r"^[^,\s]+, \S+\.(?:cpp|cc|cu|h|hpp|c):\d+, ")  # "operator(), .../decode_png.cpp:79, "


def native_reason(exc: BaseException) -> str:
    """What a native library (torchvision's image decoders, torch's C++ checks) says went wrong, on one
    line and without the source file and line of the check, which say nothing to the user."""
    return _NATIVE_SOURCE.sub("", one_line(exc))


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line. An error raised inside a DataLoader worker comes back wrapped
    with the worker's traceback in its message; only its last line (the original message) is kept."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())


LOOP = "its symbolic links lead back to themselves"  # why_missing's answer for a loop of links


def why_missing(path, what: str = "file or folder") -> str:
    """Why ``path`` does not exist as far as ``Path.exists`` says: no such file, a symbolic link to nothing, or
    links that lead back to themselves (``exists`` answers False for both of those too)."""
    if not os.path.islink(path):
        return f"no such {what}"
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return LOOP
        if exc.errno != errno.ENOENT:  # a folder on the way that may not be searched
            return f"a symbolic link to {os.readlink(path)}, which cannot be reached ({exc.strerror})"
    return f"a symbolic link to {os.readlink(path)}, which leads to nothing"


def not_a_file(path) -> str:
    """What ``path``, which is not a regular file, is instead, said after its name: "is a folder, not a file", "is
    not a regular file" (a device, a pipe), "is missing", or "is missing (a symbolic link to T, which leads to
    nothing)" and the like (``why_missing``)."""
    if os.path.isdir(path):
        return "is a folder, not a file"
    if os.path.exists(path):
        return "is not a regular file"
    return f"is missing ({why_missing(path, 'file')})" if os.path.islink(path) else "is missing"


def file_problem(path) -> str:
    """Why ``path`` is not a regular file, for "<option> <path>: <why>; <fix>": what ``not_a_file`` says of a path
    that exists ("a folder, not a file", "not a regular file"), else "no such file" or what a symbolic link leads to
    (``why_missing``)."""
    return not_a_file(path).removeprefix("is ") if os.path.exists(path) else why_missing(path, "file")


def require_file(path, what: str, fix: str):
    """``path`` if it is a regular file; otherwise a ``UserError`` "<what> not found: <path> (<fix>)" (or "is a
    folder, not a file", "is not a regular file": ``not_a_file``), or "<what> <path>: <why> (<fix>)" for a link that
    leads nowhere."""
    if os.path.isfile(path):
        return path
    if os.path.exists(path):
        raise UserError(f"{what} {not_a_file(path)}: {path} ({fix})")
    if os.path.islink(path):  # a link to nothing, or links in a loop: which, said
        raise UserError(f"{what} {path}: {why_missing(path, 'file')} ({fix})")
    raise UserError(f"{what} not found: {path} ({fix})")


def clipped(text: str, limit: int = 160) -> str:
    """``text`` of at most ``limit`` characters: cut after a whole word, with "..." where it was cut."""
    if len(text) <= limit:
        return text
    cut = text[:limit - 3]
    words = cut.rsplit(" ", 1)[0]  # a whole word, unless that leaves less than half (a long path after a space)
    return (words if len(words) >= limit // 2 else cut).rstrip(",;:") + "..."


def first_few(items: list[str], shown: int = 3) -> str:
    """``a, b, c and 4 more``: the first ``shown`` of ``items`` for a one-line message, and how many are left."""
    return ", ".join(items[:shown]) + (f" and {len(items) - shown} more" if len(items) > shown else "")
