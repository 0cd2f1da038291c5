"""``bench predict``: a finished run's model on a person's frames or video, as a user points it at data.

An input is a folder of one person's frames (JPEG/PNG, in name order), a video file of a cropped
person, or a folder holding several of those (batch mode). Frames are sampled and prepared exactly as
evaluation does (T even segments, the middle frame of each, the backbone's input size and CLIP's
normalisation: ``vtfpar.data.tracklets``), and the model runs in its deployment form under
``inference_mode``. A run evaluated on every consecutive T-frame clip of a tracklet (``data.eval_all_clips``)
predicts from every such clip of the input and averages their probabilities, as its evaluation did. Detecting
and tracking people in raw footage is out of scope: give it the crops of one tracklet (from any multi-object
tracker).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmark.memory import ALLOCATION_ERRORS, out_of_memory
from benchmark.results import RESULT, WEIGHTS
from benchmark.step import autocast_for, compute_dtype, inference
from benchmark.task import checked_batch_size, load_model
from vtfpar.attributes import AttributeSet
from vtfpar.data.tracklets import (
    IMAGE_SUFFIXES,
    clip_frames,
    clip_starts,
    eval_clip,
    image_files,
    mars_tracklets,
    nearest_readable,
    segment_indices,
    unread_said,
)
from vtfpar.data.video import VIDEO_SUFFIXES, read_images, read_video
from vtfpar.errors import UserError, first_few, why_missing


@dataclass
class Prediction:
    input: str
    clips: int  # how many T-frame clips were predicted and averaged (1 unless the run set data.eval_all_clips)
    frame_indices: list[int]  # which of the input's frames were used: the clip's, or all the clips' in order
    frame_files: list[str]  # their file names, for a folder of frames ([] for a video)
    frames: list[torch.Tensor]  # what a contact sheet shows, uint8 [3,H,W] each, as decoded (crops may differ in
    #   size): the clip's T frames, or T of all those used, spread evenly
    frame_titles: list[str]  # their labels: a folder's file names, a video's frame numbers
    probabilities: np.ndarray  # [M]


def _printable(name: str) -> str:
    """A file name to show: bytes in it that are not UTF-8 (held by Python as surrogates) as replacement marks."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _is_tracklet(path: Path) -> bool:
    """A video file, or a folder of frames; a folder this user may not list counts as one, so that a batch holding
    it says so on a line of its own when it comes to predict it, and goes on."""
    if path.is_file():
        return path.suffix.lower() in VIDEO_SUFFIXES
    return path.is_dir() and _listed(path) != []


def _listed(folder: Path) -> list[Path] | None:
    """The frames in ``folder``, or None where it cannot be listed (permission denied)."""
    try:
        return image_files(folder)
    except OSError:
        return None


def _batch(folder: Path) -> list[Path]:
    """The videos and frame folders in ``folder``, a batch if it holds any; hidden entries (``.thumbs/``, the
    ``._clip.mp4`` a macOS copy leaves) are not inputs. What else in it looks like a person is said in one
    warning, not dropped silently: its own frames (a batch's inputs are the videos and folders in it) and
    folders without frames predict reads (``.bmp`` ones); other files (an export's labels.csv) are not."""
    entries = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]
    inside = [p for p in entries if _is_tracklet(p)]
    if inside:
        frames = [p.name for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        folders = [f"{p.name}/" for p in entries if p.is_dir() and p not in inside]
        said = ([f"its {len(frames)} frame{'s' * (len(frames) != 1)} ({first_few(frames)}), as a folder holding "
                 "videos or frame folders is a batch of those"] if frames else [])
        said += [f"{first_few(folders)}, no folder{'s' * (len(folders) != 1)} of frames "
                 f"({', '.join(IMAGE_SUFFIXES)})"] if folders else []
        if said:
            warnings.warn(f"{folder}: not predicted: {'; '.join(said)}", stacklevel=2)
    return inside


def resolve_inputs(inputs: list[Path]) -> list[Path]:
    """Every tracklet the inputs name, once each: videos and frame folders as given, and the videos and frame
    folders inside a batch folder (``_batch``)."""
    found = []
    for path in inputs:
        if not path.exists():
            raise UserError(f"{path}: {why_missing(path)}")
        if path.is_file():
            if not _is_tracklet(path):
                kind = "a single image" if path.suffix.lower() in IMAGE_SUFFIXES else f"a '{path.suffix}' file"
                raise UserError(f"{path}: {kind} is not supported; give a folder of one person's frames "
                                f"({', '.join(IMAGE_SUFFIXES)}) or a video ({', '.join(VIDEO_SUFFIXES)})")
            found.append(path)
            continue
        inside = _batch(path)
        if inside:
            found += inside
        elif image_files(path):
            found.append(path)
        else:
            raise UserError(f"{path}: no frames ({', '.join(IMAGE_SUFFIXES)}), videos ({', '.join(VIDEO_SUFFIXES)}) or "
                            f"folders of frames in it{unread_said(path)}")
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(Path(os.path.abspath(p)), p)  # each path once, where first named (links are inputs too)
    for p in unique.values():
        if p.is_dir() and (said := unread_said(p, lead="not among its frames: ")):  # a .bmp among .png frames
            warnings.warn(f"{p}: {said}", stacklevel=2)
        if p.is_dir() and len(tracklets := mars_tracklets(_listed(p) or [])) > 1:
            warnings.warn(f"{p}: its frames are of {len(tracklets)} MARS tracklets ({first_few(tracklets)}), which are "
                          "predicted as one sequence (MARS keeps each person's tracklets in one folder); give a folder "
                          "of one tracklet's frames", stacklevel=2)
    return list(unique.values())


def check_outputs_spare_inputs(outputs: list[tuple[str, Path]], tracklets: list[Path], run_dir: Path) -> None:
    """Refuse, before any prediction, an output (``("--csv", path)``) that would go into the run's folder (its
    result and weights), replace an input video or frame, or put an image into an input's frame folder (the
    next prediction would read it as a frame)."""
    folders = {t.resolve(): t for t in tracklets if t.is_dir()}
    files = {t.resolve(): t for t in tracklets if t.is_file()}
    run = run_dir.resolve() if any((run_dir / f).is_file() for f in (RESULT, WEIGHTS)) else None
    for option, out in outputs:
        target = out.resolve()
        if run is not None and target.is_relative_to(run):
            raise UserError(f"{option} {out} is inside the run folder {run_dir}, beside its result and weights; "
                            "write it elsewhere")
        if target in files:
            raise UserError(f"{option} {out} is the input {files[target]}: it would be overwritten; write it "
                            "elsewhere")
        if target.parent in folders and target.suffix.lower() in IMAGE_SUFFIXES:
            raise UserError(f"{option} {out} is inside the input frame folder {folders[target.parent]}: it would "
                            "be read as one of its frames next time; write it elsewhere")


class Predictor:
    """A finished run's model, ready for inputs."""

    def __init__(self, run_dir: Path, device: str = "auto", pretrained: str | None = None,
                 batch_size: int | None = None):
        """``batch_size``: an input's clips predicted at once (default: the run's ``train.eval_batch_size``; each
        clip is scored on its own, so it changes memory, not predictions, up to float rounding)."""
        if batch_size is not None:
            checked_batch_size(batch_size)  # before the model is built
        self.model, self.cfg, self.attributes, self.device = load_model(run_dir, device, pretrained)
        self.autocast, _ = autocast_for(self.device, self.cfg.train.amp)
        self.dtype = compute_dtype(self.device, self.cfg.train.amp)
        self.frames, self.size = self.cfg.data.frames, self.model.encoder.clip.image_size[0]
        self.all_clips = self.cfg.data.eval_all_clips and self.cfg.run.dataset != "synthetic"
        self.batch = self.cfg.train.eval_batch_size if batch_size is None else batch_size

    def clips(self, n: int) -> list[list[int]]:
        """The clips evaluation makes of an n-frame input, as frame indices: the middles of T even segments, or
        every consecutive T-frame clip for a run evaluated that way (``data.eval_all_clips``)."""
        if self.all_clips:
            return [clip_frames(n, self.frames, start).tolist() for start in clip_starts(n, self.frames)]
        return [segment_indices(n, self.frames, None).tolist()]

    def decoded(self, path: Path) -> tuple[list[list[int]], list[str], dict[int, torch.Tensor], int]:
        """The input's clips (``clips``), its file names (a folder's; none for a video), the frames the clips
        use, each decoded once (a short input's clip repeats frames; consecutive clips share none), and how many
        frames it has. A frame of a folder that does not decode is replaced in its clips by the nearest one that
        does, as evaluation replaces it (``TrackletDataset``), with a warning that names it."""
        if path.is_file():
            made: list[list[int]] = []
            count = 0

            def choose(n: int) -> list[int]:  # asked for the header's count, then for the count that decodes
                nonlocal count
                made[:], count = self.clips(n), n
                return sorted({i for clip in made for i in clip})

            indices, frames = read_video(path, choose)
            return made, [], dict(zip(indices, frames, strict=True)), count
        try:
            files = image_files(path)
        except OSError as exc:  # a frame that does not read is replaced by its neighbour; the folder has none then
            raise UserError(f"{path}: cannot list its frames ({(exc.strerror or str(exc)).lower()}): fix its "
                            "permissions, or give another path") from None
        read: dict[int, torch.Tensor | UserError] = {}  # each file decoded once, or why it does not decode

        def load(k: int) -> torch.Tensor | None:
            if k not in read:
                try:
                    read[k] = read_images([files[k]])[0]
                except UserError as exc:
                    read[k] = exc
            return read[k] if isinstance(read[k], torch.Tensor) else None

        def readable(i: int) -> int:
            if found := nearest_readable(len(files), i, load):
                return found[0]
            raise UserError(f"{path}: none of its {len(files)} frames can be decoded ({read[i]}); replace them")

        clips = [[readable(i) for i in clip] for clip in self.clips(len(files))]
        if bad := [k for k, frame in read.items() if isinstance(frame, UserError)]:
            warnings.warn(f"{path}: {first_few([files[k].name for k in sorted(bad)])} cannot be decoded, so the "
                          f"nearest frame that can is used instead, as evaluation does ({read[bad[0]]})", stacklevel=2)
        used = sorted({i for clip in clips for i in clip})
        return clips, [f.name for f in files], {i: read[i] for i in used}, len(files)

    def predict(self, path: Path) -> Prediction:
        """The input's attribute probabilities: its clip's, or the mean of its clips' (``clips``), batched by the
        run's ``train.eval_batch_size`` as evaluation batches them (or by the ``batch_size`` given)."""
        summed = None
        with self._reading(path):
            clips, names, decoded, n = self.decoded(path)
        if n < self.frames:  # as evaluation samples a short tracklet, said: the motion cues are not there
            warnings.warn(f"{path}: {n} frame{'' if n == 1 else 's'}, fewer than the {self.frames} a clip of this run "
                          f"takes: {'it is' if n == 1 else 'they are'} repeated to make one, as evaluation does with a "
                          "short tracklet (frames_used says which)", stacklevel=2)
        for first in range(0, len(clips), self.batch):
            with self._reading(path):
                batch = torch.stack([eval_clip([decoded[i] for i in clip], self.size)
                                     for clip in clips[first:first + self.batch]])
            with self.model.deployed(self.dtype):  # entered once when called inside predict_all
                logits = inference(self.model, batch.to(self.device), self.autocast)
            probs = torch.sigmoid(logits.float()).cpu().double().sum(0)
            summed = probs if summed is None else summed + probs
        if len(clips) == 1:  # the clip, as it was sampled (a short input's repeats included)
            used = shown = clips[0]
        else:  # every frame the clips use, and T of them spread evenly for a contact sheet
            used = sorted(decoded)
            shown = [used[k] for k in segment_indices(len(used), self.frames, None)]
        return Prediction(str(path), len(clips), used, [names[i] for i in used] if names else [],
                          [decoded[i] for i in shown], [names[i] if names else f"frame {i}" for i in shown],
                          (summed / len(clips)).numpy())

    @contextlib.contextmanager
    def _reading(self, path: Path):
        """Out of memory decoding or resizing an input's frames: one line naming it (a batch goes on)."""
        try:
            yield
        except ALLOCATION_ERRORS as exc:
            if not out_of_memory(exc):
                raise
            raise UserError(f"{path}: out of memory reading and resizing its frames to {self.size} px (frames this "
                            "large need downscaling first)") from None

    def predict_all(self, paths: list[Path], on_done: Callable[[Path, Prediction | None, str | None], None]
                    ) -> list[Prediction]:
        """Each input in turn, in one deployment form; a failing input is reported through ``on_done``
        and the others go on."""
        out = []
        with self.model.deployed(self.dtype):
            for path in paths:
                try:
                    prediction = self.predict(path)
                except UserError as exc:
                    on_done(path, None, str(exc))
                    continue
                out.append(prediction)
                on_done(path, prediction, None)
        return out


def describe(prediction: Prediction, attributes: AttributeSet, threshold: float) -> dict:
    """JSON-able: per attribute probability and decision, per multi-valued group the argmax class."""
    names, p = attributes.names, prediction.probabilities
    groups = []
    for g in attributes.groups:
        if g.multiclass:
            best = g.start + int(np.argmax(p[g.start:g.stop]))
            groups.append({"group": g.name, "kind": "multi-valued", "class": names[best].split(": ", 1)[-1],
                           "probability": float(p[best]),
                           "classes": {names[j].split(": ", 1)[-1]: float(p[j]) for j in range(g.start, g.stop)}})
        else:
            groups.append({"group": g.name, "attribute": names[g.start], "kind": "binary",
                           "probability": float(p[g.start]), "predicted": bool(p[g.start] >= threshold)})
    return {"input": prediction.input, "clips": prediction.clips, "frames_used": prediction.frame_indices,
            **({"frame_files": prediction.frame_files} if prediction.frame_files else {}), "threshold": threshold,
            "groups": groups, "probabilities": {n: float(v) for n, v in zip(names, p, strict=True)}}


RENDER_DPI = 100


def render_size(frames: int) -> tuple[int, int]:
    """Width and height in pixels of ``render``'s contact sheet for ``frames`` frames."""
    return int(RENDER_DPI * (1.4 * frames + 3.0)), int(RENDER_DPI * 3.2)


RENDER_FORMATS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".svg": "svg", ".pdf": "pdf"}
# Written into every contact sheet's metadata (PNG Software, PDF and SVG Creator, JPEG comment), uncompressed in
# each format: how ``check_sheet_target`` tells a sheet it may replace from a file of the user's.
SHEET_MARK = "vtfpar-bench predict contact sheet"


CSV_HEADER = "input"  # the first column of the CSV ``bench predict --csv`` writes: one row per input


def check_csv_target(path: Path) -> None:
    """Refuse, before any prediction, a ``--csv`` that would replace what bench predict did not write: a file
    named as a video or image, or an existing file whose first line is not a predictions header (an export's
    ``labels.csv``, the true labels, which nothing could make again)."""
    from benchmark.writes import check_writable, write_target, writes_through

    check_writable(path, "--csv", "predictions.csv")
    if writes_through(path):  # /dev/stdout and such: written into, nothing replaced
        return
    if path.suffix.lower() in (*VIDEO_SUFFIXES, *IMAGE_SUFFIXES):
        raise UserError(f"--csv {path}: a {path.suffix} file name; give the predictions a file ending in .csv")
    target = write_target(path)
    if not os.path.isfile(target) or os.path.getsize(target) == 0:  # nothing there to lose
        return
    try:
        with open(target, "rb") as f:
            first = f.readline(4096).decode("utf-8-sig", errors="ignore")
    except OSError as exc:
        raise UserError(f"--csv {path}: cannot read what is there ({exc.strerror or exc}) to tell whether it is "
                        "an earlier predictions CSV; move it away or choose another --csv") from None
    if not first.startswith(f"{CSV_HEADER},"):
        raise UserError(f"--csv {path} exists and is not a predictions CSV of bench predict (its first column is not "
                        f"'{CSV_HEADER}'): it would be replaced; move it away or choose another --csv")


def render_target(path: Path) -> Path:
    """``--render``'s file: a .png, .jpg, .svg or .pdf (written in that format); no suffix: .png added.
    Refused before any prediction when it could not be written (``check_writable``)."""
    from benchmark.writes import check_writable

    check_writable(path, "--render", "sheet.png")
    if not path.suffix:
        path = path.with_suffix(".png")
    if path.suffix.lower() not in RENDER_FORMATS:
        raise UserError(f"--render {path}: give a file ending in .png, .jpg, .jpeg, .svg or .pdf")
    check_writable(path, "--render", "sheet.png")
    return path


def check_sheet_target(path: Path) -> None:
    """Refuse, before any prediction, a contact sheet that would replace a file bench predict did not write (a
    photo, a paper's figure): one that is there must carry ``SHEET_MARK``."""
    from benchmark.writes import carries_mark, write_target, writes_through

    if writes_through(path):
        return
    target = write_target(path)
    if not os.path.isfile(target) or os.path.getsize(target) == 0:  # nothing there to lose
        return
    try:
        marked = carries_mark(target, SHEET_MARK, limit=64 * 2**20)
    except OSError as exc:
        raise UserError(f"--render {path}: cannot read what is there ({exc.strerror or exc}) to tell whether it is "
                        "an earlier contact sheet; move it away or choose another --render") from None
    if not marked:
        raise UserError(f"--render {path} exists and is not a contact sheet of bench predict: it would be replaced; "
                        "move it away or choose another --render")


def render_targets(render_path: Path, inputs: list[Path]) -> dict[Path, Path]:
    """Batch mode's contact sheets, ``<stem>_<input>.<suffix>`` beside ``render_path``, one distinct file per
    input: inputs of the same name (``a/clip.mp4``, ``b/clip.mp4``) take as many of their parent folders'
    names as tell them apart (``sheet_a_clip_mp4.png``), and a number after the input's own name where
    even those agree (folders ``a.b`` and ``a_b``)."""
    inputs = list(dict.fromkeys(inputs))
    parts = {p: [q.replace(".", "_") for q in p.absolute().parts[1:]] or ["root"] for p in inputs}
    depth = dict.fromkeys(inputs, 1)
    while True:
        names: dict[str, list[Path]] = {}
        for p in inputs:
            names.setdefault("_".join(parts[p][-depth[p]:]), []).append(p)
        clashes = [same for same in names.values() if len(same) > 1]
        grow = [p for same in clashes for p in same if depth[p] < len(parts[p])]
        if not grow:
            break
        for p in grow:
            depth[p] += 1
    labels, used = {}, {name for name, same in names.items() if len(same) == 1}
    for name, same in names.items():
        for i, p in enumerate(same):
            label, k = name, i
            while len(same) > 1 and (label == name or label in used):  # a number no other input's name has
                k += 1
                label = f"{parts[p][-1]}_{k}"
            used.add(label)
            labels[p] = label
    return {p: render_path.with_name(f"{render_path.stem}_{labels[p]}{render_path.suffix}") for p in inputs}


def render(prediction: Prediction, attributes: AttributeSet, threshold: float, path: Path) -> Path:
    """A contact sheet: the T frames sampled (T of those used, where several clips were averaged), and beside
    them what the model sees in them (in the format ``path``'s suffix names: ``render_target``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmark.writes import atomic_write_with

    t = len(prediction.frames)
    width, height = render_size(t)
    fig = plt.figure(figsize=(width / RENDER_DPI, height / RENDER_DPI), dpi=RENDER_DPI)
    grid = fig.add_gridspec(1, t + 1, width_ratios=[1.4] * t + [3.0], wspace=0.05, left=0.02, right=0.99)
    for j in range(t):
        ax = fig.add_subplot(grid[0, j])
        ax.imshow(prediction.frames[j].permute(1, 2, 0).numpy())
        ax.set_title(_printable(prediction.frame_titles[j]), fontsize=8)
        ax.axis("off")
    text = fig.add_subplot(grid[0, t:])
    text.axis("off")
    lines = []
    for g in describe(prediction, attributes, threshold)["groups"]:
        if g["kind"] == "binary":
            lines.append((f"{g['attribute']}: {'yes' if g['predicted'] else 'no'}", g["probability"],
                          g["predicted"]))
        else:
            lines.append((f"{g['group']}: {g['class']}", g["probability"], True))
    step = min(0.085, 0.95 / max(len(lines), 1))
    for i, (label, prob, positive) in enumerate(lines):
        text.text(0.02, 0.97 - i * step, f"{label}  ({prob:.2f})", fontsize=min(9, 700 * step / 6.5),
                  va="top", color="black" if positive else "0.55", transform=text.transAxes)
    averaged = f"  ({prediction.clips} clips of {t} frames, averaged)" if prediction.clips > 1 else ""
    fig.suptitle(_printable("/".join(Path(prediction.input).parts[-3:])) + averaged, fontsize=10)  # a/x.mp4, b/x.mp4

    def save(tmp: str) -> None:
        form = RENDER_FORMATS[path.suffix.lower()]
        mark = ({"pil_kwargs": {"comment": SHEET_MARK}} if form == "jpg" else
                {"metadata": {"Software" if form == "png" else "Creator": SHEET_MARK}})
        fig.savefig(tmp, dpi=RENDER_DPI, format=form, **mark)

    try:
        atomic_write_with(path, save)
    finally:
        plt.close(fig)
    return path
