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
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, read_file

from vtfpar.attributes import AttributeSet
from vtfpar.data.synthetic import CLIP_MEAN, CLIP_STD


@dataclass
class Tracklet:
    name: str  # e.g. 0001C2T0058
    person: int
    camera: int
    frames: list[Path]
    labels: np.ndarray  # [M] float32 0/1


def segment_indices(n: int, t: int, rng: np.random.Generator | None) -> np.ndarray:
    """T frame indices from T even segments of ``range(n)``: random in each (rng) or the middles."""
    edges = np.linspace(0, n, t + 1)
    lo = np.floor(edges[:-1]).astype(int)
    hi = np.maximum(np.ceil(edges[1:]).astype(int), lo + 1)
    if rng is None:
        return np.minimum((lo + hi - 1) // 2, n - 1)
    return np.minimum(lo + (rng.random(t) * (hi - lo)).astype(int), n - 1)


class TrackletDataset(Dataset):
    """Items are ``(frames [T,3,S,S] float, labels [M] float)``."""

    def __init__(self, tracklets: list[Tracklet], attributes: AttributeSet, frames: int, size: int,
                 train: bool, eval_all_clips: bool = False):
        self.tracklets = tracklets
        self.attributes = attributes
        self.frames, self.size, self.train = frames, size, train
        self.labels = np.stack([t.labels for t in tracklets]) if tracklets else np.zeros((0, len(attributes)))
        self._bad = multiprocessing.Value("i", 0)  # shared with fork-started DataLoader workers
        self.items: list[tuple[int, int]] = [(i, -1) for i in range(len(tracklets))]
        if eval_all_clips and not train:
            self.items = [(i, s) for i, t in enumerate(tracklets)
                          for s in range(0, max(len(t.frames) - frames, 0) + 1, frames)]
        self.item_tracklet = np.array([i for i, _ in self.items], dtype=np.int64)

    @property
    def bad_frames(self) -> int:
        return self._bad.value

    def __len__(self) -> int:
        return len(self.items)

    def _indices(self, tracklet: Tracklet, start: int) -> np.ndarray:
        n = len(tracklet.frames)
        if start >= 0:
            return np.minimum(np.arange(start, start + self.frames), n - 1)
        if self.train:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())  # follows the loader's seeded generator
            return segment_indices(n, self.frames, np.random.default_rng(seed))
        return segment_indices(n, self.frames, None)

    def _decode(self, tracklet: Tracklet, index: int) -> torch.Tensor:
        """Decode frame ``index``, or the nearest readable neighbour (counted) if it is unreadable."""
        n = len(tracklet.frames)
        for k in sorted(range(n), key=lambda j: (abs(j - index), j)):
            try:
                img = decode_image(read_file(str(tracklet.frames[k])), mode=ImageReadMode.RGB)
            except (RuntimeError, OSError):
                continue
            if k != index:
                with self._bad.get_lock():
                    self._bad.value += 1
            return img
        raise RuntimeError(f"no readable frame in tracklet {tracklet.name} ({tracklet.frames[0].parent})")

    def __getitem__(self, index: int):
        ti, start = self.items[index]
        tracklet = self.tracklets[ti]
        clip = torch.stack([self._decode(tracklet, int(i)) for i in self._indices(tracklet, start)])
        clip = F.interpolate(clip.float(), size=(self.size, self.size), mode="bilinear", antialias=True,
                             align_corners=False) / 255.0
        if self.train:  # one pad-crop-flip for the whole clip
            pad = 10
            clip = F.pad(clip, (pad, pad, pad, pad))
            y, x = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,)))
            clip = clip[..., y:y + self.size, x:x + self.size]
            if torch.rand(()) < 0.5:
                clip = clip.flip(-1)
        mean = torch.from_numpy(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.from_numpy(CLIP_STD).view(1, 3, 1, 1)
        return (clip - mean) / std, torch.from_numpy(self.labels[ti])
