"""Ending a ``bench`` process as soon as its work is done.

Python's own shutdown takes apart, object by object, every module that torch, torchvision, open_clip and
transformers loaded: about 1.6 s after a command's last line on a 2-core machine, with nothing left to write
(and a Ctrl-C in that time kills the process without a word). ``end_process`` does what a normal exit does that
matters here and skips the rest: the exit handlers run (``atexit``: logging's flush, multiprocessing's loader
workers, Ray's shutdown, temporary folders), both streams are flushed, and the process ends with the code given
(``os._exit``). Every file bench writes is closed (and renamed into place) before its command returns, so the
buffers that Python's shutdown would otherwise flush are only those of the two streams.
"""

from __future__ import annotations

import atexit
import os
import sys


def end_process(code: int) -> None:
    """End this process now with ``code``, after its exit handlers and with both streams flushed. A stream that
    cannot be flushed (full, gone or closed) raises ``SystemExit(code)`` instead: the ordinary way out, whose
    last flush reports it as before."""
    atexit._run_exitfuncs()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        raise SystemExit(code) from None
    os._exit(code)
