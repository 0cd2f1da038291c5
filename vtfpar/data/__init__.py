"""Datasets by name. Each yields ``(frames[T,3,H,W], labels[M])`` and exposes ``labels`` [N,M]
(numpy, for positive ratios and prior baselines) and ``attributes`` (an ``AttributeSet``)."""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset

from vtfpar.attributes import AttributeSet
from vtfpar.errors import UserError, require_file
from vtfpar.settings import check_settings, setting

# Synthetic clips are drawn on the fly, their labels up front: a million take about a minute and 2-3 GB.
MAX_SYNTHETIC_CLIPS = 1_000_000
MAX_WORKERS = 256  # loader processes: each holds a copy of the dataset index and decodes frames


@dataclass
class DataSpec:
    """What to read and how (config section ``[data]``); the run's seed and the backbone's input size
    are passed to ``build_datasets`` beside it."""

    root: str = ""  # dataset root (mars, duke)
    frames: int = setting(6, ge=1)  # frames per tracklet (paper: 6)
    image_size: int = setting(0, ge=0)  # 0 = the backbone's input size (224 for ViT-B/16)
    num_workers: int = setting(2, ge=0, le=MAX_WORKERS)  # DataLoader workers (never more than batches)
    train_clips: int = setting(1200, ge=1, le=MAX_SYNTHETIC_CLIPS)  # synthetic only: clips in the training split
    test_clips: int = setting(400, ge=1, le=MAX_SYNTHETIC_CLIPS)  # synthetic only: clips in the test split
    format: str = setting("auto", choices=("auto", "mars2019", "release_csv", "tracklet_csv"))  # mars / duke
    annotation: str = ""  # label file relative to root ("" = the layout's default)
    train_list: str = "train.txt"  # tracklet_csv: split lists relative to root
    test_list: str = "test.txt"
    eval_all_clips: bool = False  # evaluate every consecutive T-frame clip, average per tracklet
    fast_transform: bool = False  # mars / duke: separable resize and one fused pad-crop-flip-normalise pass
    frame_cache: str = ""  # mars / duke: folder of decoded, resized frames ("" = off; see TrackletDataset)

    def __post_init__(self):
        check_settings(self, "data")


def _synthetic(spec: DataSpec, size: int, seed: int) -> tuple[Dataset, Dataset, AttributeSet]:
    from vtfpar.data.synthetic import SYNTHETIC_ATTRIBUTES, SyntheticPedestrians

    # The split salt keeps train and test draws disjoint for the same seed.
    train = SyntheticPedestrians(spec.train_clips, spec.frames, size, seed, "train", flip=True)
    test = SyntheticPedestrians(spec.test_clips, spec.frames, size, seed, "test")
    return train, test, SYNTHETIC_ATTRIBUTES


def default_attributes(dataset: str) -> AttributeSet:
    """The attribute set a dataset uses by default: MARS and Duke the 43 / 36 of the paper's layout
    (the 2019 MARS CSV has its own 32), anything else the synthetic set."""
    from vtfpar.data.duke import DUKE_ATTRIBUTES
    from vtfpar.data.mars import MARS43_ATTRIBUTES
    from vtfpar.data.synthetic import SYNTHETIC_ATTRIBUTES

    return {"mars": MARS43_ATTRIBUTES, "duke": DUKE_ATTRIBUTES}.get(dataset, SYNTHETIC_ATTRIBUTES)


def attributes_for(dataset: str, names: list[str]) -> AttributeSet:
    """The attribute set of ``dataset`` with these attribute ``names`` (MARS: the 2019 CSV's 32 or the 43 of the
    paper's layout), for reloading a trained model without its data."""
    from vtfpar.data.mars import MARS2019_ATTRIBUTES

    for attrs in (default_attributes(dataset), MARS2019_ATTRIBUTES):
        if attrs.names == list(names):
            return attrs
    raise UserError(f"no attribute set of dataset {dataset} has the run's {len(names)} attributes "
                    f"({', '.join(names[:3])}, ...)")


class OtherDatasetTree(UserError):
    """A dataset root that holds the other dataset's annotation and not this one's (a Duke tree given for MARS): the
    message suggests ``--dataset``; a command that cannot change the dataset (``bench eval``) says it its way."""

    def __init__(self, root, dataset: str, other: str):
        super().__init__(f"{root} holds {other}_attributes.csv, the {other} attribute annotation, and no "
                         f"{dataset}_attributes.csv: did you mean --dataset {other}? (or set data.annotation and "
                         "data.format)")
        self.root, self.dataset, self.other = root, dataset, other

    def __reduce__(self):  # rebuilt from its parts (a DataLoader worker, Ray)
        return type(self), (self.root, self.dataset, self.other)


def annotation_path(root, dataset: str, annotation: str):
    return root / (annotation or f"{dataset}_attributes.csv")


def detect_format(root, dataset: str, annotation: str = "") -> str:
    """From the header of ``<dataset>_attributes.csv``: ``person_id,...`` is the later release,
    ``person-id,...`` the MARS 2019 CSV (MARS only); otherwise a MARS root holding the official
    ``info/tracks_train_info.mat`` is read as the 2019 release, and anything else as the paper code's tracklet CSV
    layout (``data.format`` says it where this guesses wrong)."""
    path = annotation_path(root, dataset, annotation)
    other = {"mars": "duke", "duke": "mars"}.get(dataset)
    if not annotation and not path.is_file() and other and (root / f"{other}_attributes.csv").is_file():
        raise OtherDatasetTree(root, dataset, other)
    if path.is_file():
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            first = f.readline().strip().lower()
        if not first:  # no layout has an empty first line; read as the tracklet CSV it would blame its split lists
            raise UserError(f"{path}: the attribute annotation is empty (no header line); give the {dataset} "
                            "attribute CSV, whose first line names its columns")
        if first.startswith("person_id"):
            return "release_csv"
        if first.startswith("person-id") and dataset == "mars":
            return "mars2019"
    if dataset == "mars" and (root / "info" / "tracks_train_info.mat").is_file():
        return "mars2019"
    return "tracklet_csv"


def _real(dataset: str):
    def build(spec: DataSpec, size: int, seed: int) -> tuple[Dataset, Dataset, AttributeSet]:
        from vtfpar.data.layouts import (
            read_duke_release,
            read_mars2019_csv,
            read_mars_release,
            read_release_csv,
            read_tracklet_csv,
            require_root,
        )
        from vtfpar.data.mars import MARS2019_ATTRIBUTES
        from vtfpar.data.tracklets import TrackletDataset

        root = require_root(spec.root)
        fmt = detect_format(root, dataset, spec.annotation) if spec.format == "auto" else spec.format
        if fmt == "mars2019":
            if dataset != "mars":
                raise UserError(f"data.format mars2019 is for --dataset mars, not {dataset}")
            ann = require_file(root / (spec.annotation or "mars_attributes.csv"), "MARS-Attribute annotation file",
                               "get mars_attributes.csv from github.com/VisualComputingInstitute/MARS-Attribute and "
                               "put it in the dataset root, or set data.annotation")
            attributes = MARS2019_ATTRIBUTES
            splits = read_mars_release(root, read_mars2019_csv(ann))
        elif fmt == "release_csv":
            attributes = default_attributes(dataset)
            ann = require_file(annotation_path(root, dataset, spec.annotation), f"{dataset} attribute annotation file",
                               f"put {dataset}_attributes.csv of the MARS/Duke attribute release in the dataset root, "
                               "or set data.annotation")
            labels = read_release_csv(ann, dataset, attributes)
            splits = read_mars_release(root, labels) if dataset == "mars" else read_duke_release(root, labels)
        elif fmt == "tracklet_csv":
            attributes = default_attributes(dataset)
            splits = read_tracklet_csv(root, attributes, spec.annotation, spec.train_list, spec.test_list, dataset)
        else:
            raise UserError(f"unknown data.format '{spec.format}': choose auto, mars2019, release_csv or tracklet_csv")
        speed = {"fast_transform": spec.fast_transform, "frame_cache": spec.frame_cache or None}
        train = TrackletDataset(splits["train"], attributes, spec.frames, size, train=True, **speed)
        train.labelled_not_found = splits.get("missing", [])  # labelled, not in the tree (read_duke/mars_release)
        train.labelled_not_found_in = splits.get("missing_from")  # where they are not, and the likely cause
        train.frames_not_found = splits.get("frames_missing", [])  # MARS: listed, not on disk (read_mars_release)
        train.mixed_folders = splits.get("mixed", [])  # tracklet_csv: frames of other tracklets (read_tracklet_csv)
        train.annotation_format = fmt  # recorded with the run (result.json data.format)
        return (train, TrackletDataset(splits["test"], attributes, spec.frames, size, train=False,
                                       eval_all_clips=spec.eval_all_clips, **speed),
                attributes)

    return build


DATASETS = {"synthetic": _synthetic, "mars": _real("mars"), "duke": _real("duke")}


def check_root(name: str, root: str, fix: str) -> None:
    """Before any work: the root of a dataset read from disk (every one but synthetic) is an existing folder."""
    if name in DATASETS and name != "synthetic":
        from vtfpar.data.layouts import require_root

        require_root(root, fix)


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def build_datasets(name: str, spec: DataSpec, *, image_size: int, seed: int) -> tuple[Dataset, Dataset, AttributeSet]:
    """Train and test split of dataset ``name`` with frames of ``image_size`` px; ``seed`` draws synthetic clips."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset '{name}': choose one of {', '.join(list_datasets())}")
    return DATASETS[name](spec, image_size, seed)
