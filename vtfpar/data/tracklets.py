"""Tracklet datasets on disk: frame sampling, JPEG decoding, transforms.

Sampling protocol (VTFPAR++ uses 6 frames per tracklet):
* training: the tracklet is cut into T evenly sized segments and one frame is drawn at random
  from each (temporal segment sampling, seeded through the DataLoader's generator);
* evaluation: the middle frame of each segment, deterministic (the paper's code samples test
  frames at random, so its test scores move between evaluations);
* ``eval_all_clips``: every consecutive T-frame clip of the tracklet is an item; predictions are
  averaged per tracklet (``item_tracklet`` maps items to tracklets);
* tracklets shorter than T repeat frames (segments then share frames).

Frames are decoded with torchvision's libjpeg-turbo decoder, resized to the backbone's square
input (the paper's code resizes MARS' 256x128 crops to 224x224), augmented for training with a
10-pixel pad, random crop and horizontal flip shared by all frames of a clip, and normalised with
CLIP's mean and std. An unreadable frame is replaced by its nearest readable neighbour and counted
(``bad_frames``); a tracklet without frames on disk is a structural error found at load time.

Two opt-in speed-ups (constructor arguments; the default path is unchanged):

* ``fast_transform``: the resize runs as two one-axis passes (rows first when that gives the smaller
  intermediate), and pad, crop, flip and normalisation are fused into one write into the output
  instead of building a padded copy and three full-size temporaries. Profiling ``__getitem__`` on
  CPU at 224 px and 6 frames of 256x128 JPEG put about 45% of the time in the single-call
  antialiased resize, about 30% in the pad / crop / flip / normalise temporaries and stacking, and
  about 12% in reading and decoding the JPEGs. The clips differ from the default path only by
  float rounding (about 1e-6 after normalisation); no extra disk, no first-epoch cost.
* ``frame_cache``: a folder of frames already decoded and resized to the model input, one float32
  ``.npy`` per (source file path, its size and mtime, target size, resize method), written
  atomically (temporary file, then rename), so concurrent workers and interrupted runs never leave
  a partial entry, and an edited source file gets a new entry. A hit skips decoding and resizing.
  Entries are float32 because the resized values are not integers: storing them as uint8 would
  change the clips by up to 0.5/255 before normalisation. The cost is disk: 3 x S x S x 4 bytes per
  frame (588 KiB at 224 px, about 90 times a 256x128 JPEG of 6.5 KiB; the 509,914 frames of MARS'
  training split would take about 290 GiB once all are touched), and each first touch of a frame
  pays decode + resize + write (the first epoch loads more slowly than without the cache).
  Training draws new frames every epoch, so hits grow over epochs; ``cache_frames`` fills a
  cache ahead of time. With the default transform the cached path gives bit-identical clips.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vtfpar.attributes import AttributeSet
from vtfpar.data.synthetic import CLIP_MEAN, CLIP_STD
from vtfpar.errors import UserError, first_few
from vtfpar.files import new_temporary, remove_temporaries

T = TypeVar("T")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# images that frames are not read from (torchvision does not decode them): a folder holding them says so
UNREAD_IMAGE_SUFFIXES = (".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jp2")


def frame_order(path: Path) -> tuple:
    """The sort key of a frame file: its name with every run of digits compared as a number, so that frames
    named without zero padding (``2.png``, ``10.png``) come in the order they were taken, not as text sorts them
    (``10.png`` before ``2.png``). Zero-padded names (MARS's ``F001``) keep the order text gives them."""
    parts = re.split(r"(\d+)", path.name)  # text, number, text, ...: each position holds one kind
    return [int(part) if i % 2 else part for i, part in enumerate(parts)], path.name


MARS_FRAME = re.compile(r"(\d{4}|00-1)C\d+T\d{4}F\d{3}")  # 0002C2T0019F001.jpg: person, camera, tracklet, frame


def mars_tracklets(files: list[Path]) -> list[str]:
    """The MARS tracklets (``0002C2T0019``) whose frames ``files`` holds, by their names; [] for other names."""
    return sorted({m.group(0)[:-4] for f in files if (m := MARS_FRAME.match(f.name))})


def image_files(folder: Path) -> list[Path]:
    """The frames in ``folder``: its image files in frame order (``frame_order``). A folder named like an image is
    not one, and neither is a hidden file (``._0001.jpg``, the metadata a macOS copy leaves beside each file)."""
    return sorted((p for p in folder.iterdir()
                   if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()),
                  key=frame_order)


def unread_images(folder: Path) -> list[str]:
    """The names of the images in ``folder`` in a format frames are not read from (``UNREAD_IMAGE_SUFFIXES``),
    hidden files aside; [] where it cannot be listed."""
    try:
        return sorted(p.name for p in folder.iterdir()
                      if p.suffix.lower() in UNREAD_IMAGE_SUFFIXES and not p.name.startswith("."))
    except OSError:
        return []


def unread_said(folder: Path, lead: str = "; it holds ") -> str:
    """``"; it holds a.bmp, b.bmp, in a format ..."`` for a frame folder holding images that are not read as
    frames (an error or a warning about its frames adds it), "" where it holds none."""
    if not (others := unread_images(folder)):
        return ""
    return (f"{lead}{first_few(others)}, in a format frames are not read from ({', '.join(IMAGE_SUFFIXES)} are): "
            "convert them to PNG or JPEG")


def nearest_readable(n: int, index: int, load: Callable[[int], T | None]) -> tuple[int, T] | None:
    """``(k, load(k))`` for frame ``index`` of ``n``, or for its nearest neighbour that loads (the earlier of two
    as near), where ``load`` returns None for a frame it cannot read; None if no frame loads. How evaluation, and
    ``bench predict`` as it, replace an unreadable frame."""
    for k in sorted(range(n), key=lambda j: (abs(j - index), j)):
        if (value := load(k)) is not None:
            return k, value
    return None


def decode_rgb8(path: Path) -> torch.Tensor:
    """uint8 RGB [3,H,W] of an image file, upright: a camera or phone that stores a frame sideways with an EXIF
    orientation tag has it turned as every image viewer shows it (read as stored, a person would be lying on their
    side). A 16-bit PNG decodes to uint16; its top byte is the 8-bit image (a value v stored as 257 v gives v back
    exactly), which is what every transform after this expects. An animated GIF saved under a frame's name gives
    its first frame, as an animated PNG does. WebP is read by Pillow (``_webp_rgb8``): torchvision does not apply a
    WebP's orientation tag, nor read an animated one.

    The bytes are read by Python, which takes any path the file system holds (torchvision's ``read_file`` takes
    only paths that encode in the locale's charset, so a C locale refuses a folder named ``Müller``)."""
    from torchvision.io import ImageReadMode, decode_image  # here: torchvision's import takes seconds

    with open(path, "rb") as f:
        data = bytearray(f.read())
    if not data:
        raise RuntimeError("empty file")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_rgb8(data)
    image = decode_image(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB,
                         apply_exif_orientation=True)
    if image.ndim == 4:  # [frames,3,H,W]: an animated GIF
        image = image[0]
    if image.dtype != torch.uint8:
        image = (image.to(torch.int32) >> 8).to(torch.uint8)
    return image


def _webp_rgb8(data: bytearray) -> torch.Tensor:
    """uint8 RGB [3,H,W] of WebP bytes, turned by its EXIF orientation tag; an animated one's first frame. Pillow's
    failures are ``RuntimeError``s, as torchvision's are."""
    import io

    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, ValueError, SyntaxError... for a damaged file
        raise RuntimeError(str(exc) or type(exc).__name__) from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


# How decode_rgb8 reads a file, in the frame cache's keys: a cache filled by an earlier way of reading (frames with
# an EXIF orientation tag read as stored) is not served as if read this way.
DECODING = "upright"
PAD = 10  # training augmentation: zero padding before the random crop back to the input size


@dataclass
class Tracklet:
    name: str  # e.g. 0001C2T0058
    person: int
    camera: int
    frames: list[Path]
    labels: np.ndarray  # [M] float32 0/1


def segment_indices(n: int, t: int, rng: np.random.Generator | None) -> np.ndarray:
    """T frame indices of ``range(n)``, one per even segment: random in each (training, ``rng``) or a fixed middle
    frame (evaluation, None).

    Training's segment j is the frames from ``j n/T`` up to ``(j+1) n/T``, each boundary rounded down: the segments
    partition the tracklet (their sizes differ by one at most), so a tracklet of at least T frames gives T different
    frames, in order. A shorter one gives every frame, some twice (a segment that would be empty takes the frame it
    starts at). Evaluation takes, per segment, the middle one of the frames its span touches (boundaries rounded
    out), which lies in the same segment and is the frame runs have always been evaluated on, so results recorded
    before the segments became a partition still reproduce."""
    edges = np.linspace(0, n, t + 1)
    lo = np.floor(edges[:-1]).astype(int)
    if rng is None:
        touched = np.maximum(np.ceil(edges[1:]).astype(int), lo + 1)  # the span's end, rounded out
        return np.minimum((lo + touched - 1) // 2, n - 1)
    hi = np.maximum(np.floor(edges[1:]).astype(int), lo + 1)
    return np.minimum(lo + (rng.random(t) * (hi - lo)).astype(int), n - 1)


def clip_starts(n: int, t: int) -> range:
    """``eval_all_clips``: the first frame of every consecutive T-frame clip of an n-frame tracklet. The frames
    after the last whole clip are left out; a tracklet shorter than T is one clip (``clip_frames``)."""
    return range(0, max(n - t, 0) + 1, t)


def clip_frames(n: int, t: int, start: int) -> np.ndarray:
    """The T frame indices of the clip of an n-frame tracklet that starts at ``start`` (``clip_starts``); past the
    tracklet's end the last frame repeats."""
    return np.minimum(np.arange(start, start + t), n - 1)


class TrackletDataset(Dataset):
    """Items are ``(frames [T,3,S,S] float, labels [M] float)``."""

    def __init__(self, tracklets: list[Tracklet], attributes: AttributeSet, frames: int, size: int,
                 train: bool, eval_all_clips: bool = False, fast_transform: bool = False,
                 frame_cache: str | Path | None = None):
        import torchvision.io  # noqa: F401  (decode_rgb8's, imported before DataLoader workers fork, not in each)

        self.tracklets = tracklets
        self.fast_transform = fast_transform
        self.frame_cache = Path(frame_cache) if frame_cache else None
        if self.frame_cache is not None:
            try:
                self.frame_cache.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                why = "it is a file, not a folder" if self.frame_cache.is_file() else exc.strerror or str(exc)
                raise UserError(f"data.frame_cache {self.frame_cache} cannot be made ({why}); {CACHE_FIX}") from None
        mean = torch.from_numpy(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.from_numpy(CLIP_STD).view(1, 3, 1, 1)
        self._scale, self._shift = 1.0 / (255.0 * std), (0.0 - mean) / std  # 0..255 -> normalised
        self.attributes = attributes
        self.frames, self.size, self.train = frames, size, train
        self.labels = np.stack([t.labels for t in tracklets]) if tracklets else np.zeros((0, len(attributes)))
        self._bad = multiprocessing.Value("i", 0)  # shared with fork-started DataLoader workers
        self.items: list[tuple[int, int]] = [(i, -1) for i in range(len(tracklets))]
        if eval_all_clips and not train:
            self.items = [(i, s) for i, t in enumerate(tracklets) for s in clip_starts(len(t.frames), frames)]
        self.item_tracklet = np.array([i for i, _ in self.items], dtype=np.int64)

    @property
    def bad_frames(self) -> int:
        return self._bad.value

    def __len__(self) -> int:
        return len(self.items)

    def _indices(self, tracklet: Tracklet, start: int) -> np.ndarray:
        n = len(tracklet.frames)
        if start >= 0:
            return clip_frames(n, self.frames, start)
        if self.train:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())  # follows the loader's seeded generator
            return segment_indices(n, self.frames, np.random.default_rng(seed))
        return segment_indices(n, self.frames, None)

    def _nearest_readable(self, tracklet: Tracklet, index: int, load) -> torch.Tensor:
        """``load(k)`` for frame ``index``, or for its nearest neighbour that loads (counted in ``bad_frames``);
        ``load`` returns None for a frame it cannot read."""
        n = len(tracklet.frames)
        if found := nearest_readable(n, index, load):
            k, value = found
            if k != index:
                with self._bad.get_lock():
                    self._bad.value += 1
            return value
        raise UserError(f"no readable frame in tracklet {tracklet.name} ({tracklet.frames[0].parent}): all {n} "
                        "files failed to decode; remove the tracklet or replace its files")

    @staticmethod
    def _read(frame: Path) -> torch.Tensor | None:
        try:
            return decode_rgb8(frame)
        except (RuntimeError, OSError):
            return None

    def _decode(self, tracklet: Tracklet, index: int) -> torch.Tensor:
        """Decode frame ``index``, or the nearest readable neighbour (counted) if it is unreadable."""
        return self._nearest_readable(tracklet, index, lambda k: self._read(tracklet.frames[k]))

    def _resize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 or float [N,3,H,W] in 0..255 -> float [N,3,S,S] in 0..255 (antialiased bilinear)."""
        x, s = frames.float(), self.size
        if not self.fast_transform:
            return F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        h, w = x.shape[-2:]
        first = (s, w) if w <= h else (h, s)  # the pass that leaves the smaller intermediate goes first
        x = F.interpolate(x, size=first, mode="bilinear", antialias=True, align_corners=False)
        return F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)

    def _cache_entry(self, frame: Path) -> Path:
        st = os.stat(frame)
        key = f"{os.path.abspath(frame)}|{st.st_size}|{st.st_mtime_ns}|{self.size}|{int(self.fast_transform)}" \
            f"|{DECODING}"
        return self.frame_cache / f"{hashlib.sha1(key.encode()).hexdigest()}.npy"

    def _cached(self, tracklet: Tracklet, index: int) -> torch.Tensor:
        """Frame ``index`` resized, float [3,S,S] in 0..255, through the frame cache; an unreadable
        frame is never stored, so it is replaced (and counted) on every visit as without the cache."""

        def load(k: int) -> torch.Tensor | None:
            try:
                entry = self._cache_entry(tracklet.frames[k])
            except OSError:
                return None
            try:
                # mapped copy-on-write: read straight from the page cache, never written back
                resized = torch.from_numpy(np.load(entry, mmap_mode="c", allow_pickle=False))
                if resized.shape != (3, self.size, self.size) or resized.dtype != torch.float32:
                    raise ValueError(f"{entry} holds {tuple(resized.shape)} {resized.dtype}")
                return resized
            except (OSError, ValueError):
                img = self._read(tracklet.frames[k])
                if img is None:
                    return None
                resized = self._resize(img[None])[0]
                _write_atomic(entry, resized.numpy())
                return resized

        return self._nearest_readable(tracklet, index, load)

    def cache_frames(self, tracklets: list[int] | None = None) -> int:
        """Store every frame of these tracklets (all by default) in the frame cache; returns how
        many frames were decoded and written (frames already cached are skipped)."""
        if self.frame_cache is None:
            raise ValueError("cache_frames needs a dataset built with frame_cache")
        written = 0
        for ti in range(len(self.tracklets)) if tracklets is None else tracklets:
            for frame in self.tracklets[ti].frames:
                entry = self._cache_entry(frame)
                if entry.is_file():
                    continue
                img = self._read(frame)
                if img is None:
                    continue  # replaced by a neighbour when sampled
                _write_atomic(entry, self._resize(img[None])[0].numpy())
                written += 1
        return written

    def _normalise(self, clip: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Fused pad / crop / flip / normalisation of resized frames (0..255, a [T,3,S,S] clip or T
        [3,S,S] frames, written frame by frame into the output without stacking them first), drawing
        the same random numbers in the same order as the default path."""
        t, s = len(clip), self.size
        out = self._shift.expand(t, 3, s, s).clone()  # the normalised zero padding
        oy = ox = iy = ix = 0
        h = w = s
        if self.train:
            y, x = (int(v) for v in torch.randint(0, 2 * PAD + 1, (2,)))
            h, w = s - abs(PAD - y), s - abs(PAD - x)  # output rows / columns that show the resized clip
            oy, ox, iy, ix = max(0, PAD - y), max(0, PAD - x), max(0, y - PAD), max(0, x - PAD)
        if h > 0 and w > 0:
            for j in range(t):
                torch.addcmul(self._shift[0], clip[j][:, iy:iy + h, ix:ix + w], self._scale[0],
                              out=out[j, :, oy:oy + h, ox:ox + w])
        if self.train and torch.rand(()) < 0.5:
            out = out.flip(-1)
        return out

    def __getitem__(self, index: int):
        ti, start = self.items[index]
        tracklet = self.tracklets[ti]
        if self.fast_transform or self.frame_cache is not None:
            indices = self._indices(tracklet, start)
            if self.frame_cache is not None:
                clip = [self._cached(tracklet, int(i)) for i in indices]
                if not self.fast_transform:
                    clip = torch.stack(clip)
            else:
                decoded = [self._decode(tracklet, int(i)) for i in indices]
                if _one_size(decoded):  # one copy does the HWC -> CHW layout change and the float conversion
                    clip = torch.empty((len(decoded), *decoded[0].shape))
                    for j, img in enumerate(decoded):
                        clip[j].copy_(img)
                    clip = self._resize(clip)
                else:  # a tracker's crops of several sizes (DukeMTMC-VideoReID): each resized from its own
                    clip = torch.cat([self._resize(img.unsqueeze(0)) for img in decoded])
            if self.fast_transform:
                return self._normalise(clip), torch.from_numpy(self.labels[ti])
            return self._augment_normalise(clip / 255.0), torch.from_numpy(self.labels[ti])
        decoded = [self._decode(tracklet, int(i)) for i in self._indices(tracklet, start)]
        return self._augment_normalise(_resize_frames(decoded, self.size)), torch.from_numpy(self.labels[ti])

    def _augment_normalise(self, clip: torch.Tensor) -> torch.Tensor:
        """The default pad / crop / flip (training) and normalisation of a resized clip in 0..1."""
        if self.train:  # one pad-crop-flip for the whole clip
            clip = F.pad(clip, (PAD, PAD, PAD, PAD))
            y, x = (int(v) for v in torch.randint(0, 2 * PAD + 1, (2,)))
            clip = clip[..., y:y + self.size, x:x + self.size]
            if torch.rand(()) < 0.5:
                clip = clip.flip(-1)
        return _normalise(clip)


CACHE_FIX = 'set data.frame_cache to a writable folder with space, or to "" (frames are then read directly)'


def _write_atomic(path: Path, array: np.ndarray) -> None:
    """np.save to a temporary file in the same folder, then rename: readers never see a partial file. A cache
    that cannot be written (disk full, read-only) is one line naming it, not a loader worker's traceback."""
    made: list[str] = []
    try:
        tmp = new_temporary(path.parent, path.name, made)
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"could not write the frame cache in {path.parent} ({exc.strerror or exc}); "
                        f"{CACHE_FIX}") from None
    finally:
        remove_temporaries(made)  # a stop (or a failed write) leaves none behind


def eval_clip(frames: torch.Tensor | Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """uint8 frames [T,3,H,W] (or T frames [3,H,W] of any sizes) -> the evaluation input [T,3,S,S]: each
    resized straight from its own size to the backbone's square input (antialiased bilinear), scaled to
    0..1 and normalised with CLIP's mean and std, exactly as the evaluation split of ``TrackletDataset``
    prepares a clip."""
    if not torch.is_tensor(frames):
        frames = list(frames)
        unique = list({id(f): f for f in frames}.values())
        if len(unique) < len(frames):  # a frame sampled twice (a short tracklet) is resized once
            where = {id(f): i for i, f in enumerate(unique)}
            return eval_clip(unique, size)[[where[id(f)] for f in frames]]
        return _normalise(_resize_frames(frames, size))
    return _normalise(_resize_unit(frames, size))


def _one_size(frames: Sequence[torch.Tensor]) -> bool:
    """Whether decoded frames [3,H,W] all have one size (and so resize as one batch)."""
    return len({tuple(f.shape) for f in frames}) == 1


def _resize_frames(frames: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """T uint8 frames [3,H,W] -> float [T,3,S,S] in 0..1: one batched resize where they have one size, else each
    from its own (a tracker's crops of several sizes, as DukeMTMC-VideoReID's are)."""
    if _one_size(frames):
        return _resize_unit(torch.stack(list(frames)), size)
    return torch.cat([_resize_unit(f.unsqueeze(0), size) for f in frames])


def _resize_unit(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 frames [T,3,H,W] -> float [T,3,S,S] in 0..1 (antialiased bilinear): the default path's resize."""
    return F.interpolate(frames.float(), size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False) / 255.0


def _normalise(clip: torch.Tensor) -> torch.Tensor:
    """CLIP's mean and std on a [T,3,S,S] clip in 0..1."""
    mean = torch.from_numpy(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.from_numpy(CLIP_STD).view(1, 3, 1, 1)
    return (clip - mean) / std
