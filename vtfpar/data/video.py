"""Frames of one person from disk: a folder of images or a video file, as uint8 ``[N,3,H,W]``.

Videos are decoded with PyAV: its wheels carry their own FFmpeg, so decoding works on any machine
the suite installs on (torchcodec needs a system FFmpeg of a matching version, and torchvision's video
reader is deprecated). Every decoding failure becomes a one-line ``UserError`` naming the file.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vtfpar.data.tracklets import decode_rgb8
from vtfpar.errors import UserError, clipped, native_reason

# PyAV's FFmpeg reads them all: cameras' and phones' (.mov, .m4v, .3gp, AVCHD's .mts / .m2ts), MPEG-1/2 (.mpg),
# Windows' and Flash's (.wmv, .flv) besides the web's; not .ts (MPEG transport streams share it with TypeScript)
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".mts", ".m2ts", ".3gp", ".flv",
                  ".wmv")


def read_images(files: list[Path]) -> list[torch.Tensor]:
    """uint8 RGB frames [3,H,W] of image files, each at its own size (a tracker's crops of one person differ
    in size from frame to frame; ``eval_clip`` brings each to the model's input)."""
    frames = []
    for f in files:
        try:
            frames.append(decode_rgb8(f))
        except (RuntimeError, OSError) as exc:
            raise UserError(f"{f}: cannot decode this image ({clipped(native_reason(exc).split('. ')[0], 120)})") \
                from None
    return frames


def _declared_frames(container) -> int:
    """How many frames the first video stream's header says it has: its frame count (MP4 and AVI write one), else
    its duration times its average frame rate (``_declared_seconds``); 0 where the header says neither. Only a
    guess of which frames to keep while decoding: a variable frame rate makes the second count wrong."""
    stream = container.streams.video[0]
    if stream.frames:
        return int(stream.frames)
    rate = stream.average_rate
    return round(_declared_seconds(container) * float(rate)) if rate else 0


def _declared_seconds(container) -> float:
    """How long the first video stream's header says it lasts: the stream's duration, or the ``DURATION`` tag
    Matroska writes per stream, or the file's where the video is its only stream (a file's duration is its longest
    stream's, and an audio track may outlast the video); 0 where the header says none of these."""
    stream = container.streams.video[0]
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if seconds := _tag_seconds(stream.metadata.get("DURATION", "")):
        return seconds
    if container.duration and len(container.streams) == 1:
        return container.duration / 1_000_000
    return 0.0


def _tag_seconds(tag: str) -> float:
    """Seconds in a Matroska ``DURATION`` tag (``00:01:02.500000000``); 0 where it is not one."""
    parts = tag.split(":")
    try:
        hours, minutes, seconds = (float(x) for x in parts) if len(parts) == 3 else (0.0, 0.0, 0.0)
    except ValueError:
        return 0.0
    return 3600 * hours + 60 * minutes + seconds


def _display_matrix(frame) -> np.ndarray | None:
    """The frame's display matrix, nine int32 (``a b u c d v x y w``, ``a``-``d`` in 16.16 fixed point), or None.
    PyAV's side data container is looked up by name; where it does not take one, its entries are searched (a
    container iterates over its entries in some releases, over their types in others)."""
    side = frame.side_data
    try:
        data = side.get("DISPLAYMATRIX")
    except (KeyError, TypeError, ValueError, AttributeError):
        entries = side.values() if hasattr(side, "values") else side
        data = next((e for e in entries if getattr(getattr(e, "type", None), "name", "") == "DISPLAYMATRIX"), None)
    return None if data is None else np.frombuffer(bytes(data), "<i4")


def _upright(frame) -> np.ndarray:
    """RGB ``[H,W,3]`` of a decoded frame as a player shows it: a phone held upright stores its frames sideways and a
    display matrix in the header that turns them (and may mirror them). The matrix is applied as FFmpeg's own
    players apply it: the angle it turns by, to the nearest quarter turn, and the flips the signs of its entries
    add (a 90-degree turn whose ``c`` is positive is a transpose; at 180 degrees ``a`` < 0 flips left-right and
    ``d`` < 0 upside down, at 0 degrees ``d`` < 0 flips upside down)."""
    rgb = frame.to_ndarray(format="rgb24")
    m = _display_matrix(frame)
    if m is None or len(m) < 9:
        return rgb
    a, b, c, d = (float(v) / 65536 for v in (m[0], m[1], m[3], m[4]))
    if not math.hypot(a, c) or not math.hypot(b, d):
        return rgb
    theta = round(math.degrees(math.atan2(b / math.hypot(b, d), a / math.hypot(a, c)))) % 360  # clockwise
    if theta == 90:
        return np.ascontiguousarray(rgb.transpose(1, 0, 2) if m[3] > 0 else np.rot90(rgb, -1))
    if theta == 270:
        return np.ascontiguousarray(np.rot90(rgb, -1)[::-1] if m[3] < 0 else np.rot90(rgb, 1))
    if theta == 180:
        return np.ascontiguousarray(rgb[::-1 if m[4] < 0 else 1, ::-1 if m[0] < 0 else 1])
    return np.ascontiguousarray(rgb[::-1]) if theta == 0 and m[4] < 0 else rgb


class _Decoded:
    """The frames of a file's first video stream, in order, until the file ends or stops decoding: a copy cut
    short (an MP4 written index first, as web and phone exports are) decodes its first frames and then fails.
    ``failure`` is that failure, after at least one frame; with none, the failure is raised as it is."""

    def __init__(self, container):
        self.frames, self.failure, self.count, self.last_seconds, self.last_end, self.longest_gap = \
            container.decode(video=0), None, 0, None, None, 0.0

    def __iter__(self):
        while True:
            try:
                frame = next(self.frames)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - av.error.*: what decoding stopped at
                if not self.count:
                    raise
                self.failure = exc
                return
            if frame.time is not None:
                if self.last_seconds is not None:
                    self.longest_gap = max(self.longest_gap, frame.time - self.last_seconds)
                self.last_seconds = frame.time
                shown = float(frame.duration * frame.time_base) if getattr(frame, "duration", 0) and frame.time_base \
                    else 0.0
                self.last_end = frame.time + shown  # when the next frame would be shown
            self.count += 1
            yield frame


def _cut_short(container, decoded: _Decoded, declared: int) -> str:
    """Why ``decoded`` looks like the start of a longer file (a copy cut short, or damaged), in words; "" where it
    looks whole. A header's frame count is compared with the frames that decode; a header's duration (Matroska
    writes no count) with the time the last frame that decodes ends, which a variable frame rate does not fool as a
    count estimated from the duration would."""
    stream = container.streams.video[0]
    reason = f" ({type(decoded.failure).__name__})" if decoded.failure is not None else ""
    if stream.frames:
        if decoded.failure is not None or decoded.count < declared - max(1, declared // 20):
            return f"{decoded.count} frames decode of the {declared} its header declares{reason}"
        return ""
    seconds, end, rate = _declared_seconds(container), decoded.last_end, stream.average_rate
    one_frame = 1 / float(rate) if rate else 0.0  # a frame's time at the average rate
    if seconds and end is not None and seconds - end > max(0.05 * seconds, 2 * max(decoded.longest_gap, one_frame)):
        return f"{decoded.count} frames decode, up to {end:.2f} s of the {seconds:.2f} s its header declares{reason}"
    return f"{decoded.count} frames decode before it fails{reason}" if reason else ""


def read_video(path: Path, choose: Callable[[int], list[int]] | None = None) -> tuple[list[int], torch.Tensor]:
    """uint8 RGB frames [K,3,H,W] of a video file, upright as a player shows them (``_upright``): those
    ``choose(frame_count)`` picks (all by default), and their indices. Only the chosen frames are converted and
    kept, so a long video costs no memory. The file is decoded once where its header declares the frame count
    (``_declared_frames``) and that many decode; where it declares none, or fewer frames decode (a file cut short:
    said in a warning, and the frames that decode are used) and others are chosen, a second pass converts them.
    ``choose`` may be asked twice (for the declared count and for the count that decodes), so it must give the
    same frames for the same count."""
    import av

    def pick(n: int) -> list[int]:
        return list(range(n)) if choose is None else list(choose(n))

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UserError(f"{path}: has no video stream (is it a sound file?): give a video file, or a folder "
                                "of its frames")
            declared = _declared_frames(container)
            # the frames chosen if the header is right (a header declaring more than a million frames, about nine
            # hours at 30 frames/s, is not taken at its word: a damaged one would otherwise ask for all of them)
            guess = set(pick(declared)) if 0 < declared <= 1_000_000 else set()
            decoded = _Decoded(container)
            kept = {i: _upright(frame) for i, frame in enumerate(decoded) if i in guess}
            count, cut = decoded.count, _cut_short(container, decoded, declared)
        if count == 0:
            raise UserError(f"{path}: the video has no frames")
        if cut:
            warnings.warn(f"{path}: {cut}: the file is cut short or damaged; the frames used are sampled from those "
                          "that decode", stacklevel=2)
        wanted = pick(count)
        if not set(wanted) <= kept.keys():  # the header declared no count, or another one
            keep = set(wanted)
            with av.open(str(path)) as container:
                kept = {}
                for i, frame in enumerate(_Decoded(container)):
                    if i in keep:
                        kept[i] = _upright(frame)
                    if i >= max(keep):
                        break
            if not keep <= kept.keys():
                raise UserError(f"{path}: fewer frames decode on a second reading than on the first: is the file "
                                "still being written or copied? give it once it is whole")
    except (UserError, PermissionError):  # a file this user may not read: said by bench's top level
        raise
    except Exception as exc:  # noqa: BLE001 - av.error.* and friends: the file is not a readable video
        # FFmpeg's reason (av's errors carry it apart from the file name, which leads the message already)
        said = " ".join(str(getattr(exc, "strerror", None) or exc).replace(f": '{path}'", "").split())
        raise UserError(f"{path}: cannot decode this video ({type(exc).__name__}: {clipped(said, 120)}); check that "
                        "it is a whole video file (ffprobe FILE says), or give a folder of its frames") from None
    chosen = [kept[i] for i in wanted]  # not the others the header's count chose
    if len({a.shape for a in chosen}) > 1:
        raise UserError(f"{path}: its frame size changes within the video; give a video of one cropped person")
    return wanted, torch.from_numpy(np.stack(chosen)).permute(0, 3, 1, 2).contiguous()


def write_video(path: Path, frames: np.ndarray, fps: int = 10, fmt: str | None = None, comment: str = "") -> None:
    """uint8 RGB frames [N,H,W,3] as an MPEG-4 Part 2 video (FFmpeg's own encoder, in every PyAV build);
    ``fmt`` names the container when ``path``'s suffix does not (a temporary file); ``comment`` goes into the
    container's metadata (uncompressed)."""
    import av

    n, h, w, _ = frames.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format=fmt) as container:
        if comment:
            container.metadata["comment"] = comment
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
        stream.options = {"qscale": "2"}  # high quality (1 best .. 31 worst)
        for img in frames:
            if w % 2 or h % 2:
                img = np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
