"""Loader throughput on a real-format MARS tree: does decoding keep up with training?

``measure_loader`` writes a MARS-2019 release tree (``build_mars_tree``: JPEG tracklets of MARS'
256x128 crops, ids and labels from the first rows of the public MARS-Attribute CSV) into a
temporary folder, loads it with the project's own readers (``vtfpar.data.build_datasets``), and
times decoded clips per second through a real ``torch.utils.data.DataLoader`` over the training
split (random segments, pad / crop / flip, normalisation: what training runs) for each worker
count. ``workers_needed`` turns the single-worker rate and a method's measured step time into the
number of workers that keep up at a batch size. Each path is measured in the same run, so the
comparison between them is a ratio on one machine:

* ``default``: ``TrackletDataset`` as training builds it (libjpeg-turbo decode, one antialiased
  bilinear resize call, pad / crop / flip and normalisation as separate tensor operations);
* ``fast_transform``: the same clips up to float rounding (about 1e-6 after normalisation): a
  two-pass resize and fused pad / crop / flip / normalisation; no disk, no first-epoch cost;
* ``frame_cache`` (later epochs): frames already decoded and resized to the model input, read from
  float32 ``.npy`` files (bit-identical to what they replace); measured with every frame of the
  tracklets in use cached, as in an epoch after the cache has filled;
* ``frame_cache_first_epoch``: the same with an empty cache and every timed tracklet visited once,
  as in the first epoch: each frame is decoded, resized and written;
* ``handoff``: no loading at all, each item a freshly written clip of the same shape: what allocating
  clips, collating them and handing batches from a worker to the main process cost alone, the
  ceiling of any loading path that delivers float32 clips from worker processes.

Trade-off of the cache: 3 x S x S x 4 bytes per frame (588 KiB at 224 px against the 6.5 KiB JPEGs
of this tree) and a slower first epoch; see ``vtfpar.data.tracklets``.

On CPU, at 224 px and 6 frames, a profile of ``TrackletDataset.__getitem__`` puts about 45% of the time
in the antialiased resize (``_upsample_bilinear2d_aa``), about 30% in the pad / crop / flip /
normalise temporaries and stacking, and about 12% in reading and decoding the JPEGs (about 0.15 ms
a frame); batched ``torchvision.io.decode_jpeg`` on CPU decodes one image after another, so it
does not change the decode time. Decoding is not what limits the loader on CPU.

Worker rates: a worker is one process with one intra-op thread, so the single-worker rate is the
per-worker rate; rows for more workers show how it scales on this machine's cores (the main
process also needs a core to train). With 0 workers the main process loads with one thread: that
row is the loading cost alone, without moving each batch from a worker to the main process (a
worker collates into shared memory: at 224 px a clip of 6 float32 frames is 3.6 MB).
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.io import savemat
from torch.utils.data import DataLoader, RandomSampler

from benchmark.signals import quiet_worker, start_loader
from vtfpar.data.layouts import MARS2019_COLUMNS, reading
from vtfpar.data.tracklets import TrackletDataset
from vtfpar.errors import UserError, require_file
from vtfpar.seeding import cpu_draws

# Where the public MARS-Attribute CSV sits next to a checkout of this repository.
DEFAULT_ANNOTATION = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "mars_attributes.csv"
PATHS = ("default", "fast_transform", "frame_cache", "frame_cache_first_epoch", "handoff")
LABELS = {"default": "default decode", "fast_transform": "fast transform", "frame_cache": "frame cache, later epochs",
          "frame_cache_first_epoch": "frame cache, first epoch", "handoff": "hand-off only (ceiling)"}
TRAIN_SHARE = 0.8  # share of the tree's tracklets in the training split

# Rough RGB of the CSV's colour classes (Tops.c 0..8, Bottoms.c 0..9, in the README's order) for the
# figure's clothes, so that tracklets differ as their labels do.
TOP_RGB = [(20, 20, 20), (110, 40, 130), (40, 130, 60), (40, 70, 160), (128, 128, 128), (230, 230, 230),
           (220, 200, 40), (190, 30, 30), (150, 110, 80)]
BOTTOM_RGB = [(230, 230, 230), (110, 40, 130), (20, 20, 20), (40, 130, 60), (90, 90, 90), (230, 140, 170),
              (220, 200, 40), (40, 70, 160), (110, 70, 40), (150, 110, 80)]


def _read_rows(annotation: Path, tracklets: int) -> tuple[list[str], list[list[str]]]:
    """Header and the first ``tracklets`` rows of the MARS-Attribute CSV."""
    require_file(annotation, "MARS-Attribute annotation file", "the public mars_attributes.csv, header "
                 f"person-id,camera,tracklet,...; expected at {DEFAULT_ANNOTATION}; pass another path as the "
                 "annotation argument")
    with reading(annotation, "MARS-Attribute CSV"), open(annotation, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        if [h.strip() for h in header] != MARS2019_COLUMNS:
            raise UserError(f"{annotation}: not a MARS-Attribute CSV; expected the header "
                            + ",".join(MARS2019_COLUMNS))
        rows = [r for _, r in zip(range(tracklets), reader, strict=False)]
    if len(rows) < tracklets:
        raise UserError(f"{annotation}: {len(rows)} tracklet rows, the loader measurement builds its tree from "
                        f"{tracklets}; pass --annotation a MARS-Attribute CSV with at least {tracklets} rows (the "
                        f"public one, {DEFAULT_ANNOTATION.name}, has over 16,000)")
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header) or not all(v.strip().lstrip("-").isdigit() for v in row):
            raise UserError(f"{annotation}:{line}: expected {len(header)} integers, found {','.join(row)}")
    return header, rows


def _person(rng: np.random.Generator, row: list[str], size: tuple[int, int]) -> np.ndarray:
    """A float [H, W, 3] image: smooth background and a pedestrian-like figure."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / h, xx / w
    base = rng.uniform(60, 190, 3)
    grad = rng.uniform(-50, 50, (2, 3))
    img = base + yy[..., None] * grad[0] + xx[..., None] * grad[1]
    for _ in range(3):  # soft blobs: background clutter
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.3)
        m = np.exp(-((yy - cy) ** 2 + ((xx - cx) * w / h) ** 2) / (2 * r * r))
        img += m[..., None] * rng.uniform(-60, 60, 3)

    def soft(inside: np.ndarray) -> np.ndarray:  # signed distance -> anti-aliased mask
        return 1.0 / (1.0 + np.exp(-np.clip(inside, -30, 30) * 0.8))

    cx = 0.5 + rng.uniform(-0.05, 0.05)
    top = np.array(TOP_RGB[int(row[3]) % len(TOP_RGB)], np.float32)
    bottom = np.array(BOTTOM_RGB[int(row[4]) % len(BOTTOM_RGB)], np.float32)
    skin = np.array((200, 160, 130), np.float32)
    parts = [  # (mask, colour): head, torso, legs
        (soft(0.1 * w - np.hypot((xx - cx) * w, (yy - 0.13) * h)), skin),
        (soft(np.minimum(0.18 * w - np.abs(xx - cx) * w, np.minimum((yy - 0.2) * h, (0.55 - yy) * h))), top),
        (soft(np.minimum(0.065 * w - np.abs(np.abs(xx - cx) - 0.08) * w,
                         np.minimum((yy - 0.55) * h, (0.95 - yy) * h))), bottom),
    ]
    for mask, colour in parts:
        shade = colour * (0.85 + 0.3 * xx[..., None])
        img = img * (1 - mask[..., None]) + shade * mask[..., None]
    return img


def build_mars_tree(root: Path, annotation: Path, tracklets: int, frames_per_tracklet: int = 24,
                    size: tuple[int, int] = (256, 128), seed: int = 0) -> Path:
    """Write a MARS-2019 release tree under ``root`` and return ``root``.

    Tracklets are the first ``tracklets`` rows of ``annotation`` (real person / camera / tracklet ids
    and labels); the first ``round(0.8 * tracklets)`` go to ``bbox_train`` and the rest to
    ``bbox_test`` (at least one each), with ``info/{train,test}_name.txt``,
    ``info/tracks_{train,test}_info.mat`` and the rows as ``mars_attributes.csv`` (CRLF, as released).
    Frames are JPEG (quality 90) of ``size`` (H, W): a smooth background with soft clutter, a
    pedestrian figure in the row's top and bottom colours, a small sway between frames and sensor
    noise, so their file size (about 6-7 KiB) and decode cost are those of MARS crops rather than
    of tiny or flat test images. The same ``seed`` gives the same bytes.
    """
    root = Path(root)
    if tracklets < 2:
        raise UserError(f"a MARS tree needs at least 2 tracklets (train and test), got {tracklets}")
    if frames_per_tracklet < 1:
        raise UserError(f"frames_per_tracklet must be >= 1, got {frames_per_tracklet}")
    header, rows = _read_rows(Path(annotation), tracklets)
    n_train = min(len(rows) - 1, max(1, round(TRAIN_SHARE * len(rows))))
    (root / "info").mkdir(parents=True, exist_ok=True)
    with open(root / "mars_attributes.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\r\n").writerows([header, *rows])
    for split, chosen, offset in (("train", rows[:n_train], 0), ("test", rows[n_train:], n_train)):
        names, info = [], []
        for k, row in enumerate(chosen):
            pid, cam, tid = int(row[0]), int(row[1]), int(row[2])
            rng = np.random.default_rng([seed, offset + k])
            base = _person(rng, row, size)
            start = len(names) + 1
            folder = root / f"bbox_{split}" / f"{pid:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            for fno in range(1, frames_per_tracklet + 1):
                name = f"{pid:04d}C{cam}T{tid:04d}F{fno:03d}.jpg"
                names.append(name)
                frame = np.roll(base, int(round(2 * np.sin(fno / 3))), axis=1) * rng.uniform(0.95, 1.05)
                frame = np.clip(frame + rng.normal(0, 4, frame.shape), 0, 255).astype(np.uint8)
                Image.fromarray(frame).save(folder / name, quality=90)
            info.append([start, len(names), pid, cam])
        (root / "info" / f"{split}_name.txt").write_text("\n".join(names) + "\n")
        savemat(root / "info" / f"tracks_{split}_info.mat",
                {f"track_{split}_info": np.array(info, dtype=np.float64).reshape(-1, 4)})
    return root


def load_mars(root: Path, frames: int, image_size: int, seed: int = 0):
    """(train, test, attributes) of a MARS tree through the project's readers, as training loads it."""
    from vtfpar.data import DataSpec, build_datasets

    return build_datasets("mars", DataSpec(str(root), frames=frames), image_size=image_size, seed=seed)


def variant(dataset: TrackletDataset, **options) -> TrackletDataset:
    """The same tracklets, split and settings with other loading options (``fast_transform``, ``frame_cache``)."""
    return TrackletDataset(dataset.tracklets, dataset.attributes, dataset.frames, dataset.size, dataset.train,
                           **options)


def loader_rate(dataset, batch: int, workers: int, batches: int, seed: int = 0) -> dict:
    """Decoded clips/s and frames/s through a ``DataLoader`` with ``workers`` worker processes.

    Items are drawn at random without repeats while the dataset has enough of them. One warm-up
    batch per worker (one for the main process) is excluded from the timing: with W workers the
    first W batches are prepared in parallel from start-up, so timing from the arrival of the W-th
    batch measures the steady state. Their time, worker start-up included, is ``warmup_s``. With 0
    workers the main process loads with one intra-op thread, as a worker does: the difference
    between the 0- and 1-worker rows is then the cost of handing batches between processes.
    """
    if batch < 1 or batches < 1 or workers < 0:
        raise ValueError(f"batch and batches must be >= 1 and workers >= 0, got {batch}, {batches}, {workers}")
    warmup = max(1, workers)
    sampler = RandomSampler(dataset, num_samples=(warmup + batches) * batch,
                            generator=torch.Generator().manual_seed(seed))
    dl = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
                    generator=torch.Generator().manual_seed(seed + 1), worker_init_fn=quiet_worker)
    threads = torch.get_num_threads()
    try:
        with cpu_draws(seed):  # with 0 workers the augmentation draws from the global generator
            if workers == 0:
                torch.set_num_threads(1)  # as in a worker process
            t0 = time.perf_counter()
            it = start_loader(dl)
            for _ in range(warmup):
                next(it)
            t1 = time.perf_counter()
            clips = sum(x.shape[0] for x, _ in it)
            t2 = time.perf_counter()
            del it
    finally:
        torch.set_num_threads(threads)
    seconds = t2 - t1
    frames = getattr(dataset, "frames", 1)
    return {"workers": workers, "batch": batch, "batches": batches, "warmup_batches": warmup, "clips": clips,
            "seconds": seconds, "clips_per_s": clips / seconds, "frames_per_s": clips * frames / seconds,
            "warmup_s": t1 - t0}


def per_worker(rates: list[dict]) -> float:
    """Clips/s one worker sustains: the 1-worker row, else the 0-worker row, else the fewest workers' rate / W."""
    by_workers = {r["workers"]: r["clips_per_s"] for r in rates}
    for w in (1, 0):
        if w in by_workers:
            return by_workers[w]
    w = min(by_workers)
    return by_workers[w] / w


def workers_needed(step_seconds: float, batch: int, clips_per_s_per_worker: float) -> int:
    """Loader workers that deliver ``batch`` clips every ``step_seconds``: ceil(batch / step / rate), at least 1.

    Assumes the workers scale linearly (one free core each beside the training process)."""
    if not (math.isfinite(step_seconds) and step_seconds > 0):
        raise ValueError(f"step_seconds must be a positive number, got {step_seconds}")
    if not (math.isfinite(clips_per_s_per_worker) and clips_per_s_per_worker > 0):
        raise ValueError(f"clips_per_s_per_worker must be a positive number, got {clips_per_s_per_worker}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    # rounded first so that an exact fit (16 clips / 0.1 s at 160 clips/s) is not pushed up by float error
    return max(1, math.ceil(round(batch / step_seconds / clips_per_s_per_worker, 9)))


class HandOff(torch.utils.data.Dataset):
    """Clips of ``dataset``'s shape without loading anything: each item is freshly written memory,
    as a loaded clip is, so a loader over it measures allocation, collation and hand-off alone."""

    def __init__(self, dataset: TrackletDataset):
        self.frames, self.size, self.n, self.m = dataset.frames, dataset.size, len(dataset), dataset.labels.shape[1]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        return torch.empty(self.frames, 3, self.size, self.size).fill_(float(index)), torch.zeros(self.m)


def _prepare(path: str, train: TrackletDataset, cache: Path, batch: int):
    """The dataset a path is timed on; a frame-cache path starts from an empty cache folder."""
    shutil.rmtree(cache, ignore_errors=True)
    if path == "default":
        return train
    if path == "handoff":
        return HandOff(train)
    if path == "fast_transform":
        return variant(train, fast_transform=True)
    if path == "frame_cache_first_epoch":  # every timed clip a tracklet not seen before: all misses
        return variant(train, fast_transform=True, frame_cache=cache)
    # later epochs: every frame of a subset of the tracklets cached, the loader cycling over them
    cached = TrackletDataset(train.tracklets[:2 * batch], train.attributes, train.frames, train.size, train.train,
                             fast_transform=True, frame_cache=cache)
    cached.cache_frames()
    return cached


def tracklets_needed(batch: int, workers: Iterable[int] = (0, 1, 2), batches: int = 8) -> int:
    """Tracklets ``measure_loader`` reads off the annotation: every timed clip a different training tracklet."""
    return math.ceil((max([1, *workers]) + batches) * batch / TRAIN_SHARE) + 1


def check_annotation(annotation: Path, batch: int) -> None:
    """Refuse, before any measurement, an annotation ``measure_loader`` could not build its tree from (its
    header, its first rows, enough of them): ``bench perf --loader`` measures every row first. A file with the
    tracklets of a smaller batch but not of ``batch`` is refused naming ``--batch`` and the largest it allows."""
    needed, least = tracklets_needed(batch), tracklets_needed(2)  # bench perf's smallest batch
    _, rows = _read_rows(Path(annotation), min(needed, least))
    if needed > least:
        # Rows counted as the csv reader splits them (any line ending), in a decoding that cannot fail: what they
        # hold is checked as rows are read.
        with open(annotation, newline="", encoding="latin-1") as f:
            available = sum(1 for _ in zip(range(needed + 1), csv.reader(f), strict=False)) - 1  # the header aside
        if available < needed:
            largest = max(b for b in range(2, batch) if tracklets_needed(b) <= available)
            raise UserError(f"--batch {batch}: the loader measurement builds its tree from {needed} tracklets at "
                            f"this batch and {annotation} has {available}; give --batch {largest} or less with "
                            "--loader")
    # What the project's MARS reader makes of those rows (labels in range, no tracklet twice, tracklets that are not
    # junk), read from a tree of one small frame per tracklet: what measure_loader reads, found before measuring.
    with tempfile.TemporaryDirectory(prefix="vtfpar-loader-check-") as tmp:
        root = build_mars_tree(Path(tmp) / "mars", annotation, needed, frames_per_tracklet=1, size=(8, 4))
        try:
            train, _, _ = load_mars(root, frames=1, image_size=8)
        except UserError as exc:  # it names the copy in the temporary tree: the rows are the user's, line for line
            raise UserError(str(exc).replace(str(root / "mars_attributes.csv"), str(annotation))) from None
    if len(train) == 0:
        raise UserError(f"{annotation}: none of the training tracklets the loader measurement makes of its first "
                        f"{needed} rows is one MARS trains on (person ids 0 and -1 are junk and distractors); give a "
                        "MARS-Attribute CSV of real tracklets, such as the public one")


def measure_loader(annotation: Path, frames: int, image_size: int, batch: int = 16, workers: Iterable[int] = (0, 1, 2),
                   batches: int = 8, frames_per_tracklet: int = 12, paths: Iterable[str] = PATHS, rounds: int = 1,
                   seed: int = 0, log: Callable[[str], None] | None = None) -> dict:
    """Loader rates of each path in ``paths`` for each worker count, on a MARS tree built in a temporary folder.

    The tree has enough training tracklets for every timed clip to be a different tracklet (so the
    first-epoch cache run never hits), ``frames_per_tracklet`` frames each (the per-clip cost does
    not depend on tracklet length: T frames are decoded whatever it is). With ``rounds`` > 1 every
    path is measured that many times, interleaved, and the best rate of each is kept (a shared
    machine's load only ever slows a run down). Returns per-path rows (``loader_rate``), the
    per-worker rate and its ratio to the default path's.
    """
    log = log or (lambda _msg: None)
    workers, paths = list(workers), list(paths)
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise ValueError(f"unknown loader paths {unknown}; choose from {', '.join(PATHS)}")
    tracklets = tracklets_needed(batch, workers, batches)
    out: dict = {"frames": frames, "image_size": image_size, "batch": batch, "batches": batches,
                 "tracklets": tracklets, "frames_per_tracklet": frames_per_tracklet, "torch": torch.__version__,
                 "cpus": os.cpu_count(), "paths": {}}
    with tempfile.TemporaryDirectory(prefix="vtfpar-loader-") as tmp:
        root, cache = Path(tmp) / "mars", Path(tmp) / "frame-cache"
        log(f"writing a MARS tree of {tracklets} tracklets x {frames_per_tracklet} JPEG frames ...")
        t0 = time.perf_counter()
        build_mars_tree(root, annotation, tracklets, frames_per_tracklet, seed=seed)
        out["tree_build_s"] = time.perf_counter() - t0
        jpegs = list(root.glob("bbox_*/*/*.jpg"))
        out["jpeg_bytes_per_frame"] = sum(p.stat().st_size for p in jpegs) / len(jpegs)
        train, _, _ = load_mars(root, frames, image_size, seed)
        out["train_tracklets"] = len(train)
        best: dict[str, dict[int, dict]] = {p: {} for p in paths}
        for r in range(rounds):
            for path in paths:
                for w in workers:
                    log(f"  round {r + 1}: {LABELS[path]}, {w} workers ...")
                    row = loader_rate(_prepare(path, train, cache, batch), batch, w, batches, seed)
                    entry = next(cache.glob("*.npy"), None) if path.startswith("frame_cache") else None
                    if entry is not None:
                        out["cache_bytes_per_frame"] = entry.stat().st_size
                    kept = best[path].get(w)
                    if kept is None or row["clips_per_s"] > kept["clips_per_s"]:
                        best[path][w] = row
    for path in paths:
        rows = [best[path][w] for w in workers]
        out["paths"][path] = {"label": LABELS[path], "rates": rows, "clips_per_s_per_worker": per_worker(rows)}
    if "default" in out["paths"]:
        base = out["paths"]["default"]["clips_per_s_per_worker"]
        for entry in out["paths"].values():
            entry["per_worker_over_default"] = entry["clips_per_s_per_worker"] / base
    return out


def markdown_loader(result: dict, step_seconds: dict[str, float] | None = None) -> str:
    """Markdown: rates per path and worker count; with ``step_seconds`` (method -> training step in
    seconds at the result's batch), the workers each path needs to keep up with each method."""
    batch = result["batch"]
    lines = [f"Loader on a MARS-format tree ({result['train_tracklets']} training tracklets of 256x128 JPEG, "
             f"{result['jpeg_bytes_per_frame'] / 1024:.1f} KiB per frame), {result['frames']} frames per clip at "
             f"{result['image_size']} px, batch {batch}, {result['cpus']} CPUs, torch {result['torch']}", "",
             "| path | workers | clips/s | frames/s | start-up + warm-up (s) |", "| --- | ---: | ---: | ---: | ---: |"]
    for entry in result["paths"].values():
        for row in entry["rates"]:
            lines.append(f"| {entry['label']} | {row['workers']} | {row['clips_per_s']:.1f} | "
                         f"{row['frames_per_s']:.0f} | {row['warmup_s']:.2f} |")
    lines += ["", "| path | clips/s per worker | vs default |", "| --- | ---: | ---: |"]
    for entry in result["paths"].values():
        ratio = entry.get("per_worker_over_default")
        lines.append(f"| {entry['label']} | {entry['clips_per_s_per_worker']:.1f} | "
                     f"{'' if ratio is None else f'{ratio:.2f}x'} |")
    if result.get("cache_bytes_per_frame"):
        lines += ["", f"frame cache: {result['cache_bytes_per_frame'] / 1024:.0f} KiB per frame on disk "
                      f"({result['cache_bytes_per_frame'] / result['jpeg_bytes_per_frame']:.0f}x the JPEG)"]
    if step_seconds:
        entries = [e for p, e in result["paths"].items() if p != "handoff"]
        heads = " | ".join(e["label"] for e in entries)
        lines += ["", f"Loader workers needed to keep up with each method's training step at batch {batch} "
                      "(from the clips/s per worker above; one core per worker):", "",
                  f"| method | step (ms) | {heads} |",
                  "| --- | ---: |" + " ---: |" * len(entries)]
        for method, step in step_seconds.items():
            need = [str(workers_needed(step, batch, e["clips_per_s_per_worker"])) for e in entries]
            lines.append(f"| {method} | {1000 * step:.1f} | {' | '.join(need)} |")
    return "\n".join(lines) + "\n"
