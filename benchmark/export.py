"""``bench data export``: synthetic tracklets as real files (a folder of PNG frames each, optionally an MP4
video each) with a CSV of their true labels, so ``bench predict`` can be tried without any dataset."""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.config import SEED_LIMIT
from benchmark.lock import Busy, FileLock
from benchmark.memory import ALLOCATION_ERRORS, out_of_memory
from benchmark.results import CHECKPOINT, RESULT, unfinished_run
from benchmark.signals import CommandStopped, Terminated
from benchmark.writes import (
    DISK_FULL,
    WriteError,
    atomic_write_text,
    atomic_write_with,
    carries_mark,
    check_writable_folder,
)
from vtfpar.backbone import input_size
from vtfpar.data.synthetic import SYNTHETIC_ATTRIBUTES, SyntheticPedestrians
from vtfpar.data.video import write_video
from vtfpar.errors import UserError

MAX_COUNT = 100_000
MAX_FRAMES = 100_000  # per tracklet: a MARS tracklet has at most about a thousand


def export_synthetic(out: Path, *, split: str, count: int, frames: int, seed: int, backbone: str = "clip-tiny",
                     video: bool = False) -> list[Path]:
    """Write ``count`` clips of ``split`` (the same draws a run with ``seed`` uses) under ``out``; returns
    the frame folders. ``labels.csv`` holds each tracklet's name and its 0/1 attributes."""
    if split not in ("train", "test"):
        raise UserError(f"--split {split!r}: choose train or test")
    if count < 1 or frames < 1:
        raise UserError(f"--count and --frames must be >= 1, got {count} and {frames}")
    if count > MAX_COUNT:  # files on disk, one tracklet after another: bounded here, not by a full disk
        raise UserError(f"--count {count}: an export holds at most {MAX_COUNT:,} tracklets (exports with other "
                        "--seed values give more)")
    if frames > MAX_FRAMES:  # numpy refuses a clip of 2^64 frames before any memory is asked for
        raise UserError(f"--frames {frames}: a tracklet of an export has at most {MAX_FRAMES:,} frames")
    if not 0 <= seed < SEED_LIMIT:  # the seeds bench run takes (run.seed)
        raise UserError(f"--seed must be >= 0 and < {SEED_LIMIT}, as bench run's run.seed, got {seed}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    header = ["tracklet", *SYNTHETIC_ATTRIBUTES.names]
    if (out / "labels.csv").is_dir():
        raise UserError(f"{out / 'labels.csv'} is a folder, where the export writes its labels; move it away or "
                        "choose another --out")
    _earlier_rows(out / "labels.csv", header)  # a labels.csv that is not an export's is refused before any work
    if (out / RESULT).is_file() or unfinished_run(out) is not None:
        raise UserError(f"--out {out} is a run's folder; give the export a folder of its own")
    runs = sorted({path.parent.name for marker in (RESULT, CHECKPOINT) for path in out.glob(f"*/{marker}")})
    if runs:  # results/runs: its tracklets would sit among the runs that bench report and bench predict read there
        raise UserError(f"--out {out} holds runs ({runs[0]}{', ...' if len(runs) > 1 else ''}); give the export a "
                        "folder of its own")
    for i in range(count):  # what it would replace or remove, before any work
        _check_replaceable(out, f"{split}_{seed}_{i:04d}")
    check_writable_folder(out, "choose another --out")
    data = SyntheticPedestrians(count, frames, input_size(backbone), seed, split)
    folders = []
    rows = []
    i = 0
    try:  # the whole loop: a signal may land between two tracklets as well as inside one
        for i in range(count):
            name = f"{split}_{seed}_{i:04d}"
            folders.append(_write_tracklet(out, name, data.raw(i), frames, video))
            rows.append([name, *(str(int(v)) for v in data.labels[i])])
    except WriteError as exc:  # the tracklets written so far stay (the one it stopped in, in part); no labels.csv
        fix = "free space and rerun" if exc.errno in DISK_FULL else "mend that and rerun"
        raise UserError(f"{exc.what}: the export stopped at tracklet {i + 1} of {count}, {_kept(i, out)}; {fix} the "
                        "same command (it writes every tracklet again), or choose another --out") from None
    except ALLOCATION_ERRORS as exc:  # one tracklet's frames are rendered in memory at once
        if not out_of_memory(exc):
            raise
        raise UserError(f"out of memory rendering tracklet {i + 1} of {count} ({frames} frames): {_kept(i, out)}; "
                        "lower --frames") from None
    except (KeyboardInterrupt, Terminated) as exc:  # the same: the written tracklets stay, without labels
        i = len(rows)  # where it stopped: the first tracklet without its row
        raise CommandStopped(exc, f" at tracklet {i + 1} of {count}: {_kept(i, out)}; rerun the same command to export "
                             "them all (it writes every tracklet again)") from None
    written = {row[0] for row in rows}  # an earlier export's rows stay, those written again are replaced
    # Read again and replaced under a lock: another export into this folder (another split) that finished since
    # this one started keeps its rows, rather than the last to write winning.
    with FileLock(out / ".labels.lock", lambda who: Busy(f"another export is writing {out / 'labels.csv'} ({who})"),
                  f"{out / 'labels.csv'}", wait=True, log=lambda *_: None, poll_seconds=0.1):
        earlier = _earlier_rows(out / "labels.csv", header)
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows([header, *(r for r in earlier if r[0] not in written), *rows])
        atomic_write_text(out / "labels.csv", text.getvalue())
    return folders


EXPORT_MARK = "vtfpar-bench data export"  # in each exported video's metadata: how a later export knows it
# an exported frame, or the temporary file a killed export left while writing one (``atomic_write_with``)
FRAME_NAME = re.compile(r"frame_\d{3,}\.png|\.frame_\d{3,}\.png\.[^.]{8}\.tmp")


def _check_replaceable(out: Path, name: str) -> None:
    """Refuse a tracklet folder or video that an export would write or remove but no export wrote: a folder
    holding other files than an export's frames (predict would read them as frames of the tracklet), a file
    where the folder goes, a video without ``EXPORT_MARK``."""
    folder, video = out / name, out / f"{name}.mp4"
    fix = "move it away or choose another --out"
    if os.path.lexists(folder):
        if not folder.is_dir():
            raise UserError(f"{folder} is a file, where the export writes the frames of tracklet {name}; {fix}")
        other = next((p.name for p in sorted(folder.iterdir()) if not FRAME_NAME.fullmatch(p.name)), None)
        if other is not None:
            raise UserError(f"{folder} holds {other}, which no export wrote: predict would read it as a frame of "
                            f"tracklet {name}; {fix}")
    if os.path.lexists(video) and (video.is_dir() or os.path.getsize(video) > 2**30
                                   or not carries_mark(video, EXPORT_MARK)):
        raise UserError(f"{video} is not a video of an earlier export: the export would replace or remove it; {fix}")


def _write_tracklet(out: Path, name: str, raw: np.ndarray, frames: int, video: bool) -> Path:
    """One tracklet's PNG frames in ``out/name`` (and ``out/name.mp4`` with ``video``); returns the folder."""
    clip = np.clip(np.rint(raw * 255.0), 0, 255).astype(np.uint8)  # [T,S,S,3]
    folder = out / name
    for t, img in enumerate(clip):
        atomic_write_with(folder / f"frame_{t:03d}.png", lambda tmp, img=img: Image.fromarray(img).save(tmp, "PNG"))
    _drop_frames_after(folder, frames)
    if video:
        atomic_write_with(out / f"{name}.mp4", lambda tmp: write_video(Path(tmp), clip, fmt="mp4", comment=EXPORT_MARK))
    else:  # an earlier --video export's video of this tracklet would be predicted as its old clip
        (out / f"{name}.mp4").unlink(missing_ok=True)
    return folder


def _drop_frames_after(folder: Path, frames: int) -> None:
    """Remove the frames an earlier, longer export of this tracklet left beyond ``frames`` (a reader takes
    every image in the folder, so they would make it that earlier clip's length again)."""
    for old in folder.glob("frame_*.png"):
        index = old.stem.removeprefix("frame_")
        if index.isdigit() and int(index) >= frames:
            old.unlink()


def _kept(done: int, out: Path) -> str:
    """What an export that stopped before its labels.csv leaves: the ``done`` tracklets written before."""
    if not done:
        return "labels.csv is not written"
    return f"the {done} before it are in {out} and labels.csv is not written for them"


def _earlier_rows(path: Path, header: list[str]) -> list[list[str]]:
    """The rows of an earlier export's ``labels.csv`` in the same folder (another split or seed), to keep."""
    if not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} cannot be read ({exc}); move it away or choose another --out") from None
    if not rows or rows[0] != header:
        raise UserError(f"{path} is not the labels.csv of a synthetic export; move it away or choose another --out")
    return rows[1:]
