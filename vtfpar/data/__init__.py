"""Datasets by name. Each yields ``(frames[T,3,H,W], labels[M])`` and exposes ``labels`` [N,M]
(numpy, for positive ratios and prior baselines) and ``attributes`` (an ``AttributeSet``)."""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset

from vtfpar.attributes import AttributeSet
from vtfpar.errors import UserError


@dataclass
class DataSpec:
    root: str
    frames: int
    image_size: int
    seed: int
    train_clips: int = 1200
    test_clips: int = 400


def _synthetic(spec: DataSpec) -> tuple[Dataset, Dataset, AttributeSet]:
    from vtfpar.data.synthetic import SYNTHETIC_ATTRIBUTES, SyntheticPedestrians

    # The split salt keeps train and test draws disjoint for the same seed.
    train = SyntheticPedestrians(spec.train_clips, spec.frames, spec.image_size, spec.seed, "train", flip=True)
    test = SyntheticPedestrians(spec.test_clips, spec.frames, spec.image_size, spec.seed, "test")
    return train, test, SYNTHETIC_ATTRIBUTES


DATASETS = {"synthetic": _synthetic}


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def build_datasets(name: str, spec: DataSpec) -> tuple[Dataset, Dataset, AttributeSet]:
    if name not in DATASETS:
        raise UserError(f"unknown dataset '{name}': choose one of {', '.join(list_datasets())}")
    if spec.frames < 1:
        raise UserError(f"data.frames must be >= 1, got {spec.frames}")
    return DATASETS[name](spec)
