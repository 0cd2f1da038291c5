"""Readers for the on-disk layouts people have; each returns (train, test) lists of ``Tracklet``.

* ``mars2019``: the public MARS-Attribute CSV (``person-id,camera,tracklet,Tops.c,...``, one row per
  tracklet, CRLF line ends) joined to the MARS release: ``info/train_name.txt`` / ``test_name.txt``
  list frame names like ``0001C1T0001F001.jpg`` and ``info/tracks_train_info.mat`` /
  ``tracks_test_info.mat`` hold rows ``[start, end, person, camera]`` (1-based, inclusive) into
  them; frames are ``bbox_train|bbox_test/<person>/<name>``. The split is MARS'; junk and distractor
  ids (0, -1) have no labels and are skipped.
* ``release_csv``: the later MARS / Duke attribute release (``mars_attributes.csv``,
  ``duke_attributes.csv``): key columns ``person_id, camera_id, tracklets_id``, then one column per
  group in a fixed order (motion, pose, 7 quality flags, then colours, age and binary attributes),
  each holding a 0-based class index. MARS frames come from the MARS release as above; Duke frames
  sit in ``train|query|gallery/<person>/<tracklet>/<person>_C<cam>_F<frame>_X<n>.jpg`` (the
  DukeMTMC-VideoReID release); test = query + gallery, a tracklet in both counted once.
* ``tracklet_csv``: the preprocessed layout of the paper's code: a CSV whose first column is the
  tracklet name (``0001C2T0070``) followed by one 0/1 column per attribute (43 for MARS, 36 for
  Duke), the split as text files of tracklet names, and frames in ``<root>/<tracklet>/*.jpg``.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vtfpar.attributes import AttributeSet
from vtfpar.data.tracklets import Tracklet, image_files, mars_tracklets, unread_said
from vtfpar.errors import UserError, first_few, require_file, why_missing

NAME = re.compile(r"^(-?\d+)C(\d+)T(\d+)")


@contextlib.contextmanager
def reading(path: Path, what: str) -> Iterator[None]:
    """A file that cannot be read as text inside the block (binary, a folder, unreadable): one line naming it."""
    try:
        yield
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: the {what} is not UTF-8 text (byte {exc.start}); is it the right file?") from None
    except OSError as exc:
        raise UserError(f"cannot read the {what} {path} ({exc.strerror or exc})") from None


def require_root(root: str, fix: str = "pass an existing folder with --data-root") -> Path:
    """``root`` as an existing folder; else one line ending in ``fix`` (how to give one, in the caller's terms)."""
    if not root:
        raise UserError(f"no dataset root given ({fix})")
    path = Path(root).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"dataset root {path} is a file, not a folder ({fix})")
    if os.path.islink(path) and not path.exists():  # a link to nothing, or links in a loop: which, said
        raise UserError(f"dataset root {path}: {why_missing(path, 'folder')} ({fix})")
    if not path.is_dir():
        raise UserError(f"dataset root not found: {path} ({fix})")
    return path


# ------------------------------------------------------------------------------------ mars 2019
LABELS_READ = 3
"""Revision of how the annotation readers turn a file's codes into attribute labels, recorded with every run
(result.json ``data.labels_read``) so that a run whose labels were read otherwise is known: 1 (runs that record
none) read MARS-Attribute 2019's ``Tops.l`` and ``Bottoms.l`` with 0 as short; 2 reads 1 as short, the CSV's
Market-1501 code (``_BINARY``); 3 reads the later release's MARS ``btype`` with 0 as skirt or dress, as
``Bottoms.t`` (``RELEASE_TO_SET``). ``benchmark.results.stale_labels`` says which runs each concerns."""

MARS2019_COLUMNS = ["person-id", "camera", "tracklet", "Tops.c", "Bottoms.c", "Age", "Tops.l", "Bottoms.l",
                    "shoulder bag", "backpack", "hat", "handbag", "hair", "gender", "Bottoms.t"]
# (column, number of values) -> how a row becomes the binary labels of MARS2019_ATTRIBUTES, in order.
_BINARY = [("Tops.l", 1), ("Bottoms.l", 1), ("shoulder bag", 1), ("backpack", 1), ("hat", 1), ("handbag", 1),
           ("hair", 1), ("gender", 1), ("Bottoms.t", 0)]  # value that means "present"
_MULTI = [("Tops.c", 9), ("Bottoms.c", 10), ("Age", 4)]


def mars2019_labels(row: dict[str, str], where: str) -> np.ndarray:
    out = []
    for col, positive in _BINARY:
        v = _int(row, col, where, 2)
        out.append(1.0 if v == positive else 0.0)
    for col, size in _MULTI:
        v = _int(row, col, where, size)
        out += [1.0 if v == k else 0.0 for k in range(size)]
    return np.asarray(out, dtype=np.float32)


def _int(row: dict[str, str], col: str, where: str, size: int) -> int:
    raw = (row.get(col) or "").strip()
    try:
        v = int(raw)
    except ValueError:
        raise UserError(f"{where}: column '{col}' has '{raw}', expected an integer 0..{size - 1}") from None
    if not 0 <= v < size:
        raise UserError(f"{where}: column '{col}' has {v}, out of range 0..{size - 1}")
    return v


def read_mars2019_csv(path: Path) -> dict[tuple[int, int, int], np.ndarray]:
    """(person, camera, tracklet) -> labels, from the public MARS-Attribute CSV."""
    with reading(path, "MARS-Attribute CSV"), open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if header != MARS2019_COLUMNS:
            unknown = [h for h in header if h not in MARS2019_COLUMNS]
            missing = [h for h in MARS2019_COLUMNS if h not in header]
            raise UserError(f"{path}: not a MARS-Attribute CSV (unknown columns {unknown}, missing {missing}); "
                            "expected the header " + ",".join(MARS2019_COLUMNS))
        reader.fieldnames = header
        labels = {}
        for line, row in enumerate(reader, start=2):
            where = f"{path}:{line}"
            if any((v or "").strip() for v in row.get(None, [])):  # values beyond the header's (not a trailing comma)
                raise UserError(f"{where}: {len(header) + len(row[None])} values, expected {len(header)} as in the "
                                "header")
            key = tuple(_int(row, c, where, 10**6) for c in ("person-id", "camera", "tracklet"))
            if key in labels:
                raise UserError(f"{where}: duplicate tracklet person {key[0]} camera {key[1]} tracklet {key[2]}")
            labels[key] = mars2019_labels(row, where)
    return labels


# ------------------------------------------------------------------- later release (release_csv)
RELEASE_KEYS = ["person_id", "camera_id", "tracklets_id"]
QUALITY_FLAGS = ["occlusion", "cut", "multi-person", "back-dominant", "target-change", "target-miss", "wrong-target"]
_FLAGS = [(f, 2) for f in QUALITY_FLAGS]
# The group columns after the keys, in file order, with their number of values. Header names are
# not relied on (they differ between copies); positions and value ranges are checked.
RELEASE_COLUMNS = {
    "mars": [("action", 5), ("angle", 6), *_FLAGS, ("upcolor", 9), ("downcolor", 10), ("age", 4), ("up", 2),
             ("down", 2), ("bag", 2), ("backpack", 2), ("hat", 2), ("handbag", 2), ("hair", 2), ("gender", 2),
             ("btype", 2)],
    "duke": [("action", 5), ("angle", 6), *_FLAGS, ("backpack", 2), ("shoulder bag", 2), ("handbag", 2),
             ("boots", 2), ("gender", 2), ("hat", 2), ("shoes", 2), ("top", 2), ("downcolor", 8), ("topcolor", 9)],
}
# Which columns fill the attribute set (MARS43 / DUKE36), in the set's order: the binary columns, each with
# the value that means the attribute, then the multi-valued ones one-hot. The quality flags are not
# attributes and are dropped, as in the paper's preprocessing (which gives 43 and 36).
# Binary codes: each column is its Market-1501 / DukeMTMC-attribute code less one (the column names are those
# datasets'), so 1 is the attribute, except MARS ``btype``: Market codes the bottom's type dress 1, pants 2, so 0 is
# skirt or dress, as in the 2019 CSV's ``Bottoms.t``. The release's rows agree with the 2019 CSV's value for value
# on the same tracklets (0091 C1 T0004 has ``btype`` 0 and ``Bottoms.t`` 0, and its person wears a dress in
# Market-1501's annotation; 0646 C2 T0008 has 1, pants), and ``Bottoms.t`` 0 marks 13.7% of MARS tracklets, all of
# them female.
RELEASE_TO_SET = {
    "mars": ([("up", 1), ("down", 1), ("bag", 1), ("backpack", 1), ("hat", 1), ("handbag", 1), ("hair", 1),
              ("gender", 1), ("btype", 0)],
             ["angle", "action", "upcolor", "downcolor", "age"]),
    "duke": ([("backpack", 1), ("shoulder bag", 1), ("handbag", 1), ("boots", 1), ("gender", 1), ("hat", 1),
              ("shoes", 1), ("top", 1)],
             ["angle", "action", "topcolor", "downcolor"]),
}


def read_release_csv(path: Path, dataset: str, attributes: AttributeSet) -> dict[tuple[int, int, int], np.ndarray]:
    """(person, camera, tracklet) -> labels of ``attributes``, from a later-release attribute CSV."""
    columns = RELEASE_COLUMNS[dataset]
    binary, multi = RELEASE_TO_SET[dataset]
    sizes = dict(columns)
    labels: dict[tuple[int, int, int], np.ndarray] = {}
    with reading(path, "attribute CSV"), open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if [h.lower() for h in header[:3]] != RELEASE_KEYS:
            raise UserError(f"{path}: expected the key columns {','.join(RELEASE_KEYS)} first, found "
                            f"{','.join(header[:3]) or 'an empty file'}")
        if len(header) - 3 != len(columns):
            raise UserError(f"{path}: {len(header) - 3} columns after the keys, expected {len(columns)} for {dataset} "
                            f"({', '.join(c for c, _ in columns)})")
        for line, row in enumerate(reader, start=2):
            if not any(v.strip() for v in row):
                continue
            where = f"{path}:{line}"
            if len(row) != len(header):
                raise UserError(f"{where}: {len(row)} values, expected {len(header)} as in the header")
            values = dict(zip(RELEASE_KEYS + [c for c, _ in columns], row, strict=True))
            key = tuple(_int(values, k, where, 10**6) for k in RELEASE_KEYS)
            if key in labels:
                raise UserError(f"{where}: duplicate tracklet person {key[0]} camera {key[1]} tracklet {key[2]}")
            v = {c: _int(values, c, where, n) for c, n in columns}
            out = [float(v[c] == positive) for c, positive in binary]
            for c in multi:
                out += [1.0 if v[c] == k else 0.0 for k in range(sizes[c])]
            labels[key] = np.asarray(out, dtype=np.float32)
    width = len(binary) + sum(sizes[c] for c in multi)
    assert width == len(attributes), f"release columns give {width} labels, {attributes.name} has {len(attributes)}"
    return labels


def _named_columns(header: list[str], attributes: AttributeSet, ann: Path) -> list[int] | None:
    """The attribute each label column holds, where the tracklet CSV's header names them (bench's names, such as
    ``top colour: red``, or its labels, in any order, case aside): a CSV written with its columns in another order
    is read by name, not silently mislabelled. None where the header names none of them (the paper code's CSV,
    read by position)."""
    index = {}
    for k, (name, label) in enumerate(zip(attributes.names, attributes.labels, strict=True)):
        index[name.lower()], index[label.lower()] = k, k
    held = [index.get(h.strip().lower()) for h in header]
    if all(k is None for k in held):
        return None
    if len(held) != len(attributes):
        raise UserError(f"{ann}:1: {len(held)} label columns, expected {len(attributes)} for {attributes.name}")
    example = f"such as '{attributes.names[0]}'"
    unknown = next((j for j, k in enumerate(held) if k is None), None)
    if unknown is not None:
        raise UserError(f"{ann}:1: the header names attributes, but column {unknown + 2} ('{header[unknown].strip()}') "
                        f"names none of {attributes.name}'s; name every label column after its attribute ({example}, "
                        "any order) or none (read by position)")
    twice = next((k for j, k in enumerate(held) if k in held[:j]), None)
    if twice is not None:
        raise UserError(f"{ann}:1: the header names {attributes.names[twice]} twice; name each attribute's column once")
    return held


def _is_label(text: str) -> bool:
    """Whether a CSV cell reads as a label value, 0 or 1."""
    return _is_float(text) and float(text) in (0.0, 1.0)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


DUKE_FRAME = re.compile(r"^(\d+)_C(\d+)_F(\d+)")


def read_duke_release(root: Path, labels: dict) -> dict[str, list]:
    """DukeMTMC-VideoReID folders joined to the labels; test = query + gallery (each tracklet once).

    ``missing``: the labelled tracklets found in no folder (``<person>C<camera>T<tracklet>``), e.g. of a
    partly extracted release. They are not an error (the annotation may label tracklets a copy of the
    release lacks), but ``bench data check`` and a run say how many."""
    out: dict[str, list] = {"train": [], "test": []}
    found: set[tuple[int, int, int]] = set()
    seen: set[tuple[int, int]] = set()
    for split, folder in (("train", "train"), ("test", "query"), ("test", "gallery")):
        base = root / folder
        if not base.is_dir():
            raise UserError(f"Duke folder not found: {base} (extract DukeMTMC-VideoReID.zip into the dataset root)")
        # Hidden folders (.ipynb_checkpoints, .cache, ...) are a tool's, not the release's.
        for person_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for t_dir in sorted(p for p in person_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if not (person_dir.name.isdigit() and t_dir.name.isdigit()):
                    raise UserError(f"{t_dir}: expected <person>/<tracklet> folders of digits")
                person, tracklet = int(person_dir.name), int(t_dir.name)
                if split == "test" and (person, tracklet) in seen:
                    continue  # a gallery tracklet that is also a query
                frames = image_files(t_dir)
                if not frames:
                    raise UserError(f"tracklet {t_dir} has no frames on disk{unread_said(t_dir)}")
                m = DUKE_FRAME.match(frames[0].name)
                if not m:
                    raise UserError(f"{frames[0]}: not a Duke frame name like 0001_C2_F0001_X00001.jpg")
                key = (person, int(m.group(2)), tracklet)
                if split == "test":
                    seen.add((person, tracklet))
                if key in labels:
                    name = f"{person:04d}C{key[1]}T{tracklet:04d}"
                    if split == "test" and key in found:
                        raise UserError(f"{t_dir}: tracklet {name} is also in {root / 'train'}: a test tracklet must "
                                        "not be trained on; re-extract DukeMTMC-VideoReID.zip into the dataset root")
                    out[split].append(Tracklet(name, person, key[1], frames, labels[key]))
                    found.add(key)
    out["missing"] = [f"{p:04d}C{c}T{t:04d}" for p, c, t in sorted(set(labels) - found)]
    out["missing_from"] = ("no folder", "a partly extracted release? Runs use the tracklets found")
    return out


def _load_track_info(path: Path, key: str) -> np.ndarray:
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except Exception as exc:  # noqa: BLE001 - scipy raises several types for a bad file
        raise UserError(f"{path}: cannot read MATLAB file ({type(exc).__name__}); re-extract MARS' info/") from None
    if key not in mat or mat[key].ndim != 2 or mat[key].shape[1] < 4:
        raise UserError(f"{path}: expected a variable '{key}' of rows [start, end, person, camera]")
    values = mat[key]
    if not np.issubdtype(values.dtype, np.number):
        raise UserError(f"{path}: '{key}' holds {values.dtype} values, expected numbers; re-extract MARS' info/")
    if np.issubdtype(values.dtype, np.floating):
        # a whole number past 2^53 is no frame, person or camera index (and past 2^63 no int64 either)
        bad = ~np.isfinite(values[:, :4]) | (values[:, :4] != np.round(values[:, :4])) | (abs(values[:, :4]) > 2**53)
        if bad.any():
            row, col = map(int, np.argwhere(bad)[0])
            raise UserError(f"{path}: row {row + 1} of '{key}' has {values[row, col]:g} as its "
                            f"{('start', 'end', 'person', 'camera')[col]}, expected a whole number below 2^53; "
                            "re-extract MARS' info/")
    return values.astype(np.int64)


def read_mars_release(root: Path, labels: dict) -> dict[str, list]:
    """The labelled tracklets of MARS' ``info/`` lists and ``bbox_<split>/`` folders, per split. Also
    ``missing``: labelled tracklets in no row of the track info (``<person>C<camera>T<tracklet>``: a partial
    info file, or labels of another release), and ``frames_missing``: frames the info lists that are not on
    disk (a partly extracted ``bbox_*.zip``), e.g. ``bbox_train/0001/0001C1T0001F001.jpg``. A run uses what it
    finds and warns of both (``benchmark.datacheck.data_warnings``); a tracklet with no frame at all stops it."""
    out: dict[str, list] = {}
    found: dict[tuple[int, int, int], tuple[Path, int]] = {}  # where each labelled tracklet was read: info file, row
    frames_missing: list[str] = []
    for split in ("train", "test"):
        names_path = require_file(root / "info" / f"{split}_name.txt", "MARS frame list",
                                  "extract MARS' info/ folder (MARS-v160809) into the dataset root")
        info_path = require_file(root / "info" / f"tracks_{split}_info.mat", "MARS track info",
                                 "extract MARS' info/ folder (MARS-v160809) into the dataset root")
        with reading(names_path, "MARS frame list"):
            names = [n.strip() for n in names_path.read_text(encoding="utf-8-sig").splitlines() if n.strip()]
        tracklets = []
        info = _load_track_info(info_path, f"track_{split}_info")[:, :4]
        for row_no, (start, end, person, camera) in enumerate(info):
            if person in (0, -1):
                continue  # junk and distractors carry no attribute labels
            if not 1 <= start <= end <= len(names):
                raise UserError(f"{info_path}: row {row_no + 1} [{start}, {end}] is outside {names_path} "
                                f"({len(names)} names)")
            frame_names = names[start - 1:end]
            m = NAME.match(frame_names[0])
            if not m:
                raise UserError(f"{names_path}: line {start}: '{frame_names[0]}' is not a MARS frame name")
            if (int(m.group(1)), int(m.group(2))) != (person, camera):  # the labels are looked up by the row's ids
                raise UserError(f"{info_path}: row {row_no + 1} is person {person} camera {camera}, but its frames "
                                f"({names_path}, line {start}: {frame_names[0]}) are another's; the info file and the "
                                "frame list are of different copies: re-extract MARS' info/ (MARS-v160809)")
            key = (int(person), int(camera), int(m.group(3)))
            if key not in labels:
                continue
            if key in found:  # counted twice, or trained on and tested on: the metrics would say nothing true
                first, first_row = found[key]
                where = f"row {first_row}" if first == info_path else f"row {first_row} of {first}"
                why = ("a test tracklet must not be trained on" if first != info_path else
                       "a tracklet listed twice weighs twice in the metrics")
                raise UserError(f"{info_path}: row {row_no + 1} is tracklet {frame_names[0][:11]}, as {where} is: "
                                f"{why}; re-extract MARS' info/ (MARS-v160809)")
            folder = root / f"bbox_{split}" / frame_names[0][:4]
            on_disk = []
            for f in (folder / n for n in frame_names):  # one look at each frame
                if f.is_file():
                    on_disk.append(f)
                else:
                    frames_missing.append(f"bbox_{split}/{folder.name}/{f.name}")
            if not on_disk:
                raise UserError(f"tracklet {frame_names[0][:11]} has no frames on disk under {folder} "
                                f"(extract bbox_{split}.zip into the dataset root)")
            found[key] = (info_path, row_no + 1)
            tracklets.append(Tracklet(frame_names[0][:11], key[0], key[1], on_disk, labels[key]))
        out[split] = tracklets
    # junk (0) and distractors (-1) are in no info row that is read: never labelled, never missing
    out["missing"] = sorted(f"{p:04d}C{c}T{t:04d}" for p, c, t in labels if p > 0 and (p, c, t) not in found)
    out["missing_from"] = ("no row of info/tracks_train_info.mat or info/tracks_test_info.mat", "a partial info/ "
                           "folder, or labels of another release? Runs use the tracklets found")
    out["frames_missing"] = frames_missing
    return out


def _tracklet_key(name: str) -> tuple[int, ...]:
    """(person, camera, tracklet) of a tracklet name, padded or not (``0001C2T0070``, ``1C2T70``)."""
    m = NAME.match(name)
    return tuple(int(g) for g in m.groups()) if m else ()


# --------------------------------------------------------------------------------- tracklet csv
def read_tracklet_csv(root: Path, attributes: AttributeSet, annotation: str, train_list: str,
                      test_list: str, dataset: str) -> dict[str, list]:
    if annotation:
        ann = require_file(root / annotation, "annotation file", "set data.annotation to the label CSV")
    else:
        csvs = sorted(p for p in root.glob("*.csv") if p.is_file())
        if not csvs:  # most often a root one level off: the folder above the dataset, or bbox_train/ inside it
            frames = {"mars": "bbox_train/, bbox_test/ and info/", "duke": "train/, query/ and gallery/"}.get(
                dataset, "its frame folders")
            raise UserError(f"{root}: no annotation CSV in it; is it the dataset root? Give --data-root the folder "
                            f"that holds {dataset}_attributes.csv (with {frames}), or the paper code's tracklet CSV "
                            "with train.txt and test.txt; or set data.annotation")
        if len(csvs) != 1:
            names = first_few([c.name for c in csvs])
            raise UserError(f"{root}: expected one annotation CSV, found {len(csvs)} ({names}); set data.annotation to "
                            "the label CSV")
        ann = csvs[0]
    m = len(attributes)
    labels: dict[str, np.ndarray] = {}
    held = list(range(m))  # the attribute each label column holds: by position, unless a header names them
    with reading(ann, "annotation CSV"), open(ann, newline="", encoding="utf-8-sig") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            # a header row: its first cell no tracklet name and a label cell no 0 or 1 (a first row of labels under an
            # odd name is a tracklet, refused below, not a header dropped without a word; pandas' numbered columns,
            # ",0,1,2,...", are a header)
            if line == 1 and not NAME.match(row[0].strip()) and not all(_is_label(v) for v in row[1:]):
                held = _named_columns(row[1:], attributes, ann) or held
                continue
            name = row[0].strip()
            if not NAME.match(name):
                raise UserError(f"{ann}:{line}: '{name}' is not a tracklet name like 0001C2T0070")
            if len(row) - 1 != m:
                raise UserError(f"{ann}:{line}: {len(row) - 1} label columns, expected {m} for {attributes.name}")
            try:
                values = np.asarray([float(v) for v in row[1:]], dtype=np.float32)
            except ValueError:
                bad = next(j for j, v in enumerate(row[1:]) if not _is_float(v))
                raise UserError(f"{ann}:{line}: column {bad + 2} ({attributes.names[held[bad]]}) has "
                                f"'{row[bad + 1]}', expected 0 or 1") from None
            if not np.isin(values, (0.0, 1.0)).all():
                bad = int(np.flatnonzero(~np.isin(values, (0.0, 1.0)))[0])
                raise UserError(f"{ann}:{line}: column {bad + 2} ({attributes.names[held[bad]]}) has {row[bad + 1]}, "
                                "expected 0 or 1")
            if name in labels:
                raise UserError(f"{ann}:{line}: duplicate tracklet {name} (labelled on an earlier line); keep one row "
                                "per tracklet")
            labels[name] = np.empty_like(values)
            labels[name][held] = values
    out: dict[str, list] = {}
    lists: dict[str, Path] = {}
    mixed: list[str] = []
    for split, listed in (("train", train_list), ("test", test_list)):
        path = require_file(root / listed, f"{split} split list", f"set data.{split}_list to the file of names")
        lists[split] = path
        tracklets = []
        with reading(path, f"{split} split list"):
            listed_names = path.read_text(encoding="utf-8-sig").splitlines()
        for name in dict.fromkeys(n.strip() for n in listed_names if n.strip()):
            if name not in labels:
                raise UserError(f"{path}: tracklet {name} has no labels in {ann}")
            folder = root / name
            frames = image_files(folder) if folder.is_dir() else []
            if not frames:
                raise UserError(f"tracklet {name} has no frames on disk under {folder}{unread_said(folder)}")
            m_ = NAME.match(name)
            tracklets.append(Tracklet(name, int(m_.group(1)), int(m_.group(2)), frames, labels[name]))
            own = _tracklet_key(name)
            if any(_tracklet_key(t) != own for t in mars_tracklets(frames)):  # another tracklet's frames: copied in?
                mixed.append(name)
        out[split] = tracklets
    both = {t.name for t in out["train"]} & {t.name for t in out["test"]}
    if both:
        raise UserError(f"{lists['test']}: {len(both)} tracklet(s) also in {lists['train']} (e.g. {min(both)}): a test "
                        "tracklet must not be trained on; give split lists without common names")
    out["mixed"] = mixed  # folders holding frames named as another tracklet's (MARS names): warned of
    return out

