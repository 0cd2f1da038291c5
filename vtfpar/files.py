"""Temporary files that become another file by a rename: the one owner of their names.

A file written atomically is first written to a temporary file beside it (``.<name>.<8 random characters>.tmp``,
as ``tempfile.mkstemp`` names them) and then renamed onto it, so readers never see half a file. The run files
(``benchmark.writes``), the frame cache (``vtfpar.data.tracklets``) and pretrained weights
(``benchmark.pretrain``) all make them here.
"""

from __future__ import annotations

import errno
import os
import random
import re
from pathlib import Path

TEMP_RANDOM = r"[a-z0-9_]{8}"  # what ``new_temporary`` puts between the prefix and the suffix
_TEMP_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"  # what tempfile.mkstemp draws the random part from
_NAMES = random.SystemRandom()  # not the global generator, which seeded runs draw from


def temp_prefix(name: str) -> str:
    """The prefix of a temporary file written beside ``name`` and renamed onto it: hidden, and short enough that a
    name near the file system's limit (255 bytes) still leaves room for the random part and the suffix: at most
    64 bytes of ``name``, whole characters only."""
    start = name[:64]
    while len(os.fsencode(start)) > 64:
        start = start[:-1]
    return f".{start}."


def temporary_pattern(names: tuple[str, ...], suffix: str = ".tmp") -> re.Pattern:
    """What the names of ``new_temporary``'s files for any of ``names`` (and ``suffix``) match."""
    return re.compile("|".join(re.escape(temp_prefix(name)) + TEMP_RANDOM + re.escape(suffix) for name in names))


def new_temporary(folder: Path, name: str, made: list[str], suffix: str = ".tmp") -> str:
    """Make an empty temporary file for ``name`` in ``folder`` (private to this user until it is renamed), named
    ``temp_prefix(name)``, 8 random characters and ``suffix``, and return its path. Each path goes into ``made``,
    for the caller's cleanup (``remove_temporaries``), *before* the file is made: a stop (SIGTERM's handler
    raises at any point) landing inside ``tempfile.mkstemp``, after the file was made and before its name was
    returned, would leave a file the writer's cleanup did not know of."""
    for _ in range(1000):
        made.append(str(Path(folder) / f"{temp_prefix(name)}{''.join(_NAMES.choices(_TEMP_CHARS, k=8))}{suffix}"))
        try:
            os.close(os.open(made[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:  # another writer's: never this one's to remove
            made.pop()
            continue
        return made[-1]
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(folder))


def remove_temporaries(made: list[str]) -> None:
    """Remove what ``new_temporary`` made and was not renamed away since."""
    for tmp in made:
        Path(tmp).unlink(missing_ok=True)
