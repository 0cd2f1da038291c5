"""``bench data check``: load a dataset exactly as a run would and summarise it (or say what is wrong)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from benchmark.config import Config, settings_named
from vtfpar.backbone import input_size
from vtfpar.data import build_datasets
from vtfpar.errors import UserError, first_few


@dataclass
class DataSummary:
    title: str
    splits: list[dict]  # split, tracklets, ids, frames, frames_per_tracklet (min, median, max) or None
    positive_ratio: list[tuple[str, float | None, float | None]]  # attribute, train, test
    unreadable: list[str] = field(default_factory=list)  # "<file>: unreadable (...)"
    unreadable_tracklets: list[str] = field(default_factory=list)  # tracklets none of whose frames decode
    warnings: list[str] = field(default_factory=list)  # what a run would warn of
    frames_verified: int | None = None  # frames decoded by verify_images (None: not asked, or clips drawn)
    format: str | None = None  # the annotation's format (mars2019, release_csv, tracklet_csv), for real datasets


def check_dataset(cfg: Config, verify_images: bool = False) -> DataSummary:
    """Summary of ``cfg``'s dataset; with ``verify_images`` every frame is decoded and failures listed."""
    d = cfg.data
    with settings_named(cfg):
        size = input_size(cfg.model.backbone, d.image_size)
    train, test, attrs = build_datasets(cfg.run.dataset, d, image_size=size, seed=cfg.run.seed)
    splits, unreadable, dead, verified = [], [], [], None
    for split, ds in (("train", train), ("test", test)):
        tracklets = getattr(ds, "tracklets", None)
        if tracklets is None:  # generated on the fly
            splits.append({"split": split, "tracklets": len(ds), "ids": None, "frames": len(ds) * d.frames,
                           "frames_per_tracklet": None})
            continue
        counts = np.array([len(t.frames) for t in tracklets]) if tracklets else np.zeros(1, int)
        splits.append({"split": split, "tracklets": len(tracklets), "ids": len({t.person for t in tracklets}),
                       "frames": int(counts.sum()),
                       "frames_per_tracklet": (int(counts.min()), int(np.median(counts)), int(counts.max()))})
        if verify_images:
            frames, tracklets_lost = _unreadable_frames(tracklets)
            unreadable += frames
            dead += tracklets_lost
            verified = (verified or 0) + splits[-1]["frames"]
    ratios = [(name, *(float(np.asarray(ds.labels)[:, j].mean()) if len(ds.labels) else None
                       for ds in (train, test))) for j, name in enumerate(attrs.names)]
    title = f"{cfg.run.dataset}: {len(attrs)} attributes in {len(attrs.groups)} groups"
    return DataSummary(title, splits, ratios, unreadable, dead, data_warnings(train, d.root, test), verified,
                       getattr(train, "annotation_format", None))


SPLIT_DECIDED_BY = {"mars": "the annotation file and the split's frames (bbox_train/ or bbox_test/, and info/)",
                    "duke": "the annotation file and the split's frames (train/, or query/ and gallery/)"}


def empty_splits(dataset: str, counts: dict[str, int], fmt: str | None) -> UserError | None:
    """The refusal of a dataset whose splits hold no tracklets (``counts``: tracklets per split), by a run and by
    ``bench data check`` alike, naming what decides a split in its format ``fmt``; None if none is empty."""
    empty = [split for split, n in counts.items() if n == 0]
    if not empty:
        return None
    decided = ("the split lists (data.train_list, data.test_list) and the annotation file" if fmt == "tracklet_csv"
               else SPLIT_DECIDED_BY.get(dataset, "the dataset's annotation and frames"))
    held = ", ".join(f"{split} {n}" for split, n in counts.items())
    splits = f"split of {dataset} has" if len(empty) == 1 else f"splits of {dataset} have"
    return UserError(f"the {' and '.join(empty)} {splits} no tracklets ({held}), so no run can use it: check "
                     f"{decided}")


def data_warnings(train, root: str, test=None) -> list[str]:
    """What a run on these data warns of before training: labelled tracklets that no folder holds, frames listed
    but not on disk, folders holding another tracklet's frames, and
    tracklets labelled with no value or several values of a one-of group (``one_of_warnings``)."""
    out = []
    missing = getattr(train, "labelled_not_found", [])
    if missing:
        where, cause = train.labelled_not_found_in  # the reader's words (read_duke_release, read_mars_release)
        out.append(f"warning: {len(missing)} labelled tracklet(s) are in {where} under {root} "
                   f"({first_few(missing)}): {cause}")
    if mixed := getattr(train, "mixed_folders", []):
        out.append(f"warning: {len(mixed)} tracklet folder(s) under {root} hold frames named as another tracklet's "
                   f"({first_few(mixed)}), which are read as one sequence: frames copied into the wrong folder?")
    if frames := getattr(train, "frames_not_found", []):
        out.append(f"warning: {len(frames)} frame(s) that MARS' info/ lists are not on disk under {root} "
                   f"({first_few(frames)}): a partly extracted bbox_*.zip? Runs use the frames found")
    for split, ds in (("train", train), ("test", test)):
        out += one_of_warnings(split, ds)
    return out


def one_of_warnings(split: str, dataset) -> list[str]:
    """A warning if tracklets of ``dataset`` do not carry exactly one value of a multi-valued group (age,
    colours, pose, motion): labels of the paper's preprocessed CSV (``tracklet_csv``) are one-hot per group.
    Such rows still count in every per-attribute figure, but the group-wise argmax accuracy and macro F1
    (``metrics.multiclass_groups``) leave them out, so a reader should know how many."""
    attributes, tracklets = getattr(dataset, "attributes", None), getattr(dataset, "tracklets", None)
    if dataset is None or attributes is None or tracklets is None or not len(tracklets):
        return []
    labels = np.asarray(dataset.labels)
    odd: dict[int, list[str]] = {}  # tracklet -> "group: k values"
    for g in attributes.groups:
        if g.multiclass:
            counts = labels[:, g.start:g.stop].sum(1)
            for i in np.flatnonzero(counts != 1):
                odd.setdefault(int(i), []).append(f"{g.name}: {int(counts[i])} values")
    if not odd:
        return []
    examples = [f"{tracklets[i].name} ({', '.join(why)})" for i, why in sorted(odd.items())]
    return [f"warning: {len(odd)} {split} tracklet(s) have no value or several values of a one-of group "
            f"({first_few(examples, 2)}): the group-wise argmax figures leave them out; check the annotation"]


def _unreadable_frames(tracklets) -> tuple[list[str], list[str]]:
    """``<file>: unreadable (why)`` for every frame that does not decode, and the tracklets none of whose
    frames decode (a run replaces a bad frame by a readable neighbour, and stops on a tracklet without one)."""
    from vtfpar.data.tracklets import decode_rgb8
    from vtfpar.errors import clipped, native_reason

    problems, dead = [], []
    for t in tracklets:
        bad = 0
        for f in t.frames:
            if f.is_dir():
                problems.append(f"{f}: a folder, not an image")
                bad += 1
                continue
            try:
                decode_rgb8(f)  # as a run reads it
            except (RuntimeError, OSError) as exc:
                problems.append(f"{f}: unreadable ({clipped(native_reason(exc).split('. ')[0], 120)})")
                bad += 1
        if t.frames and bad == len(t.frames):
            dead.append(t.name)
    return problems, dead
