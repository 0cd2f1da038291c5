"""Synthetic pedestrian tracklets: procedurally drawn people in short clips, deterministic per seed.

Each clip shows one pedestrian, centred as a tracker's crop would be, over a textured street.
The attribute groups mirror the real sets (sleeve and leg length, hat, shoulder bag, backpack,
long hair, orientation, upper and lower colour) and one group is **visible only across frames**:
motion. Standing, walking and running people are drawn with the same, randomly phased gait in a
single frame; what differs is how fast the background scrolls past the crop and how fast the
gait phase advances from frame to frame. A single frame cannot tell them apart.

Single frames are randomly occluded (a block over part of the body) or blurred, as in real
surveillance video, so that pooling evidence over frames matters.

Clips are generated on the fly from ``(seed, split, index)``: no files, thousands of frames per
second on one core at 64 px.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from vtfpar.attributes import AttributeSet, expand_groups

TOP_COLOURS = {"black": (0.1, 0.1, 0.1), "white": (0.92, 0.92, 0.9), "red": (0.8, 0.12, 0.12),
               "blue": (0.15, 0.25, 0.8), "green": (0.15, 0.6, 0.2), "yellow": (0.9, 0.8, 0.15)}
BOTTOM_COLOURS = {"black": (0.08, 0.08, 0.1), "white": (0.9, 0.9, 0.88), "blue": (0.2, 0.3, 0.65),
                  "gray": (0.5, 0.5, 0.52), "brown": (0.45, 0.3, 0.15)}
ORIENTATIONS = ["front", "back", "side"]
MOTIONS = ["standing", "walking", "running"]
# (background pixels per frame as a fraction of the image width, gait phase step per frame)
_MOTION_SPEED = {"standing": (0.0, 0.0), "walking": (0.05, 0.9), "running": (0.14, 1.8)}

SYNTHETIC_GROUPS = [
    ("top length", ["short"]), ("bottom length", ["short"]), ("hat", ["yes"]), ("shoulder bag", ["yes"]),
    ("backpack", ["yes"]), ("hair", ["long"]),
    ("orientation", ORIENTATIONS), ("motion", MOTIONS),
    ("top colour", list(TOP_COLOURS)), ("bottom colour", list(BOTTOM_COLOURS)),
]
SYNTHETIC_ATTRIBUTES = AttributeSet("synthetic", expand_groups(SYNTHETIC_GROUPS))

# Priors chosen to be imbalanced like the real sets.
_BINARY_P = [0.35, 0.25, 0.2, 0.25, 0.3, 0.35]
_ORIENT_P = [0.4, 0.3, 0.3]
_MOTION_P = [0.3, 0.45, 0.25]
_TOP_P = [0.3, 0.2, 0.12, 0.18, 0.1, 0.1]
_BOTTOM_P = [0.35, 0.1, 0.3, 0.15, 0.1]

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
_SPLIT_SALT = {"train": 1, "test": 2, "val": 3, "pretrain": 4}


def sample_labels(rng: np.random.Generator) -> dict:
    return {
        "binary": rng.random(6) < np.array(_BINARY_P),
        "orientation": int(rng.choice(3, p=_ORIENT_P)),
        "motion": int(rng.choice(3, p=_MOTION_P)),
        "top": int(rng.choice(len(TOP_COLOURS), p=_TOP_P)),
        "bottom": int(rng.choice(len(BOTTOM_COLOURS), p=_BOTTOM_P)),
    }


def label_vector(lab: dict) -> np.ndarray:
    v = [*lab["binary"].astype(np.float32)]
    for value, size in ((lab["orientation"], 3), (lab["motion"], 3), (lab["top"], len(TOP_COLOURS)),
                        (lab["bottom"], len(BOTTOM_COLOURS))):
        onehot = [0.0] * size
        onehot[value] = 1.0
        v += onehot
    return np.asarray(v, dtype=np.float32)


def _rect(img, y0, y1, x0, x1, colour):
    s = img.shape[0]
    y0, y1 = max(int(round(y0 * s)), 0), min(int(round(y1 * s)), s)
    x0, x1 = max(int(round(x0 * s)), 0), min(int(round(x1 * s)), s)
    if y1 > y0 and x1 > x0:
        img[y0:y1, x0:x1] = colour


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A horizontally periodic street texture [size, 2*size, 3] that can scroll without seams."""
    width = 2 * size
    x = np.arange(width) / width
    base = rng.uniform(0.25, 0.65, 3)
    band = np.zeros(width)
    for _ in range(3):
        k = rng.integers(2, 9)
        band += rng.uniform(0.05, 0.15) * np.sin(2 * np.pi * k * x + rng.uniform(0, 2 * np.pi))
    bg = np.empty((size, width, 3), dtype=np.float32)
    bg[:] = np.clip(base[None, None, :] + band[None, :, None] * rng.uniform(0.5, 1.5, 3), 0, 1)
    ground = int(size * 0.9)
    bg[ground:] *= 0.7
    return bg


def draw_person(img: np.ndarray, lab: dict, style: dict, phase: float, dx: float) -> None:
    """Draw the pedestrian into ``img`` (in place) at gait ``phase`` with horizontal jitter ``dx``."""
    cx = 0.5 + dx
    side = lab["orientation"] == 2
    back = lab["orientation"] == 1
    top = TOP_COLOURS[list(TOP_COLOURS)[lab["top"]]]
    bottom = BOTTOM_COLOURS[list(BOTTOM_COLOURS)[lab["bottom"]]]
    skin, hair = style["skin"], style["hair"]
    short_top, short_bottom, hat, bag, backpack, long_hair = lab["binary"]
    tw = 0.11 if side else 0.16  # half torso width
    # backpack behind the body (side view) or over the back
    if backpack and side:
        _rect(img, 0.25, 0.5, cx - tw - 0.09 * style["facing"] - 0.045, cx - tw - 0.09 * style["facing"] + 0.045,
              style["pack"])
    # legs: stride follows the gait phase; shorts end at the knee
    stride = style["stride"] * np.sin(phase)
    for sgn in (-1, 1):
        lx = cx + sgn * 0.06 + sgn * stride
        _rect(img, 0.55, 0.92, lx - 0.045, lx + 0.045, skin if short_bottom else bottom)
        _rect(img, 0.55, 0.7 if short_bottom else 0.92, lx - 0.045, lx + 0.045, bottom)
        _rect(img, 0.92, 0.95, lx - 0.05, lx + 0.06, (0.1, 0.1, 0.1))
    # torso and arms (sleeves in the top colour)
    _rect(img, 0.23, 0.56, cx - tw, cx + tw, top)
    for sgn in (-1, 1):
        if side and sgn == 1:
            continue
        ax = cx + sgn * (tw + 0.035) - (0.0 if not side else 0.0)
        swing = -sgn * 0.5 * stride if not side else 0.0
        _rect(img, 0.24, 0.52, ax - 0.03 + swing, ax + 0.03 + swing, skin)
        _rect(img, 0.24, 0.32 if short_top else 0.5, ax - 0.03 + swing, ax + 0.03 + swing, top)
    if backpack and back:
        _rect(img, 0.26, 0.48, cx - 0.11, cx + 0.11, style["pack"])
    elif backpack and not side:
        for sgn in (-1, 1):
            _rect(img, 0.23, 0.4, cx + sgn * 0.09 - 0.015, cx + sgn * 0.09 + 0.015, style["pack"])
    if bag:
        bx = cx + style["bag_side"] * (tw + 0.05)
        _rect(img, 0.45, 0.58, bx - 0.05, bx + 0.05, style["bag"])
        for k in range(8):  # the strap, diagonally over the torso
            t = k / 7
            y = 0.24 + t * 0.21
            x = cx - style["bag_side"] * tw * 0.8 + t * (bx - (cx - style["bag_side"] * tw * 0.8))
            _rect(img, y, y + 0.02, x - 0.012, x + 0.012, style["bag"])
    # head, long hair and hat
    if long_hair:
        _rect(img, 0.1, 0.34, cx - 0.085, cx + 0.085, hair)
    _rect(img, 0.08, 0.23, cx - 0.065, cx + 0.065, hair if back else skin)
    if not back:
        _rect(img, 0.08, 0.12, cx - 0.065, cx + 0.065, hair)
        eyes = (-1, 1) if not side else (style["facing"],)
        for sgn in eyes:
            ex = cx + sgn * 0.03
            _rect(img, 0.14, 0.165, ex - 0.012, ex + 0.012, (0.05, 0.05, 0.05))
    if hat:
        _rect(img, 0.04, 0.11, cx - 0.08, cx + 0.08, style["hat"])
        _rect(img, 0.1, 0.12, cx - 0.11, cx + 0.11, style["hat"])


def _blur(img: np.ndarray, k: int) -> np.ndarray:
    """Box blur by summed shifts (fast, no dependency)."""
    out = np.zeros_like(img)
    pad = np.pad(img, ((k, k), (k, k), (0, 0)), mode="edge")
    n = 2 * k + 1
    for dy in range(n):
        for dx in range(n):
            out += pad[dy:dy + img.shape[0], dx:dx + img.shape[1]]
    return out / (n * n)


def render_clip(rng: np.random.Generator, lab: dict, frames: int, size: int,
                p_occlude: float = 0.15, p_blur: float = 0.15) -> np.ndarray:
    """Render a clip [T,H,W,3] float32 in [0,1]."""
    style = {
        "skin": rng.uniform([0.45, 0.3, 0.2], [0.95, 0.8, 0.7]),
        "hair": rng.uniform(0.02, 0.25, 3),
        "hat": rng.uniform(0.1, 0.9, 3),
        "bag": rng.uniform(0.1, 0.6, 3),
        "pack": rng.uniform(0.05, 0.45, 3),
        "stride": rng.uniform(0.0, 0.045),
        "bag_side": rng.choice([-1, 1]),
        "facing": rng.choice([-1, 1]),
    }
    bg = _background(rng, size)
    speed, phase_step = _MOTION_SPEED[MOTIONS[lab["motion"]]]
    direction = rng.choice([-1, 1])
    offset = rng.uniform(0, 2 * size)
    phase = rng.uniform(0, 2 * np.pi)
    light = rng.uniform(0.8, 1.15)
    clip = np.empty((frames, size, size, 3), dtype=np.float32)
    for k in range(frames):
        shift = int(offset + direction * k * speed * size) % (2 * size)
        img = np.roll(bg, -shift, axis=1)[:, :size].copy()
        draw_person(img, lab, style, phase + k * phase_step * rng.uniform(0.85, 1.15), rng.uniform(-0.02, 0.02))
        if rng.random() < p_occlude:  # an occluder (pole, car, other pedestrian) over part of the body
            h, w = rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.6)
            y0, x0 = rng.uniform(0, 1 - h), rng.uniform(0, 1 - w)
            _rect(img, y0, y0 + h, x0, x0 + w, rng.uniform(0.1, 0.9, 3))
        if rng.random() < p_blur:
            img = _blur(img, max(1, size // 32))
        img = img * light + rng.normal(0, 0.02, img.shape).astype(np.float32)
        clip[k] = np.clip(img, 0, 1)
    return clip


class SyntheticPedestrians(Dataset):
    """``n`` clips of ``frames`` frames at ``size`` px; item i is a pure function of (seed, split, i)."""

    attributes = SYNTHETIC_ATTRIBUTES

    def __init__(self, n: int, frames: int, size: int, seed: int = 0, split: str = "train",
                 flip: bool = False, p_occlude: float = 0.15, p_blur: float = 0.15):
        if split not in _SPLIT_SALT:
            raise ValueError(f"split must be one of {list(_SPLIT_SALT)}")
        self.n, self.frames, self.size, self.seed, self.split = n, frames, size, seed, split
        self.flip, self.p_occlude, self.p_blur = flip, p_occlude, p_blur
        # Labels are drawn up front (cheap) so positive ratios are known without rendering.
        self._labels = [sample_labels(self._rng(i, 0)) for i in range(n)]
        self.labels = np.stack([label_vector(lab) for lab in self._labels]) if n else np.zeros((0, 23))

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, _SPLIT_SALT[self.split], index, stream])

    def __len__(self) -> int:
        return self.n

    def raw(self, index: int) -> np.ndarray:
        return render_clip(self._rng(index, 1), self._labels[index], self.frames, self.size,
                           self.p_occlude, self.p_blur)

    def __getitem__(self, index: int):
        clip = self.raw(index)
        if self.flip and torch.rand(()) < 0.5:  # per-epoch augmentation, seeded by the loader
            clip = clip[:, :, ::-1]
        clip = (clip - CLIP_MEAN) / CLIP_STD
        frames = torch.from_numpy(np.ascontiguousarray(clip.transpose(0, 3, 1, 2)))
        return frames, torch.from_numpy(self.labels[index])
