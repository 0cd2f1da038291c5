"""MARS and Duke readers on small on-disk trees built from the real fixture's rows."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import loadmat, savemat

from tests.test_cli import BENCH, ROOT
from vtfpar.data import DataSpec, build_datasets
from vtfpar.data.duke import DUKE_ATTRIBUTES
from vtfpar.data.layouts import LABELS_READ, read_mars2019_csv
from vtfpar.data.mars import MARS2019_ATTRIBUTES
from vtfpar.data.tracklets import segment_indices
from vtfpar.errors import UserError

FIXTURE = ROOT.parent / "shared" / "fixtures" / "mars_attributes.csv"
if not FIXTURE.is_file():
    FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "mars_attributes.csv"
pytestmark = pytest.mark.skipif(not FIXTURE.is_file(), reason="shared/fixtures/mars_attributes.csv not found")


def _jpeg(path: Path, value: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)).save(path, quality=90)


def one_tracklet(root: Path, person: int, camera: int, tracklet: int, folder: Path) -> Path:
    """``folder`` holding the frames of one test tracklet of ``make_mars``'s tree (MARS keeps all of a person's
    tracklets in one folder), as a user would give ``bench predict``."""
    folder.mkdir()
    for f in sorted((root / "bbox_test" / f"{person:04d}").glob(f"{person:04d}C{camera}T{tracklet:04d}F*.jpg")):
        shutil.copy(f, folder / f.name)
    return folder


def _fixture_rows(n_persons: int) -> list[list[str]]:
    rows, persons = [], []
    with open(FIXTURE, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        for row in reader:
            if row[0] not in persons:
                if len(persons) == n_persons:
                    break
                persons.append(row[0])
            rows.append(row)
    return [header, *rows]


def make_mars(root: Path, frames_per_tracklet=(5, 2, 7)) -> dict:
    """A MARS release tree: person 1's first tracklets in train, person 2's in test, plus junk ids."""
    rows = _fixture_rows(2)
    header, body = rows[0], rows[1:]
    (root / "info").mkdir(parents=True)
    with open(root / "mars_attributes.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\r\n").writerows([header, *body])
    splits = {"train": [r for r in body if r[0] == "1"][:3], "test": [r for r in body if r[0] == "2"][:2]}
    for split, chosen in splits.items():
        names, info = [], []
        entries = [(int(r[0]), int(r[1]), int(r[2])) for r in chosen]
        if split == "test":
            entries += [(0, 1, 1), (-1, 3, 2), (2, 6, 999)]  # junk, distractor, unlabelled
        for k, (pid, cam, tid) in enumerate(entries):
            start = len(names) + 1
            for fno in range(1, frames_per_tracklet[k % len(frames_per_tracklet)] + 1):
                folder = "0000" if pid == 0 else "00-1" if pid == -1 else f"{pid:04d}"
                name = f"{folder}C{cam}T{tid:04d}F{fno:03d}.jpg"
                names.append(name)
                _jpeg(root / f"bbox_{split}" / folder / name, len(names))
            info.append([start, len(names), pid, cam])
        (root / "info" / f"{split}_name.txt").write_text("\n".join(names) + "\n")
        savemat(root / "info" / f"tracks_{split}_info.mat", {f"track_{split}_info": np.array(info, dtype=np.float64)})
    return splits


def load(dataset, root, **kw):
    return build_datasets(dataset, DataSpec(str(root), frames=4, **kw), image_size=32, seed=0)


def test_full_fixture_parses():
    labels = read_mars2019_csv(FIXTURE)
    assert len(labels) == 16360 and len({k[0] for k in labels}) == 1259
    assert all(v.shape == (32,) for v in labels.values())


def test_mars2019_length_columns_code_short_as_1():
    """Market-1501's codes less one (long 1, short 2 -> 0 long, 1 short). The data agree: the old wear long
    trousers, teenagers mostly shorts or skirts, and skirts and dresses are mostly short."""
    labels = np.stack(list(read_mars2019_csv(FIXTURE).values()))
    names = MARS2019_ATTRIBUTES.names
    col = {n: labels[:, names.index(n)] > 0 for n in names}
    short_bottoms = col["bottom length: short"]
    assert short_bottoms[col["age: old"]].mean() < 0.05 < 0.6 < short_bottoms[col["age: teenager"]].mean()
    assert short_bottoms[col["bottom type: skirt or dress"]].mean() > 0.8
    assert col["top length: short"].mean() > 0.9  # summer on the campus MARS was filmed on


def test_mars_release_tree(tmp_path):
    make_mars(tmp_path)
    train, test, attrs = load("mars", tmp_path)
    assert attrs is MARS2019_ATTRIBUTES and (len(train), len(test)) == (3, 2)
    assert [t.name for t in train.tracklets] == ["0001C2T0058", "0001C5T0165", "0001C5T0095"]
    # fixture row 1: 1,2,58, Tops.c 8, Bottoms.c 0, Age 1, Tops.l 1, Bottoms.l 1, bags 0 0 0 0,
    # hair 1, gender 1, Bottoms.t 0
    on = {attrs.names[j] for j in np.flatnonzero(train.labels[0])}
    assert on == {"top length: short", "bottom length: short", "hair: long", "gender: female",
                  "bottom type: skirt or dress", "top colour: complex", "bottom colour: white", "age: teenager"}
    frames, labels = test[0]
    assert frames.shape == (4, 3, 32, 32) and labels.shape == (32,)
    assert len(train.tracklets[1].frames) == 2  # shorter than T: frames repeat
    assert train[1][0].shape == (4, 3, 32, 32)


def test_sampling_is_segmental_and_deterministic(tmp_path):
    assert list(segment_indices(12, 4, None)) == [1, 4, 7, 10]
    assert list(segment_indices(2, 4, None)) == [0, 0, 1, 1]
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    a = segment_indices(60, 6, rng_a)
    assert list(a) == list(segment_indices(60, 6, rng_b))
    assert all(10 * k <= i < 10 * (k + 1) for k, i in enumerate(a))
    make_mars(tmp_path)
    train, test, _ = load("mars", tmp_path)
    torch.manual_seed(0)
    x1 = train[2][0]
    torch.manual_seed(0)
    assert torch.equal(x1, train[2][0])
    assert torch.equal(test[0][0], test[0][0])


def test_eval_all_clips_averages_per_tracklet(tmp_path):
    make_mars(tmp_path, frames_per_tracklet=(9, 4))
    _, test, _ = load("mars", tmp_path, eval_all_clips=True)
    assert len(test.labels) == 2 and list(test.item_tracklet) == [0, 0, 1]


def test_corrupt_jpeg_is_replaced_by_its_nearest_neighbour_and_counted(tmp_path):
    """An unreadable frame is read as the nearest frame that decodes (the earlier of two as near): the clip equals
    the clip of a tree where that frame's file holds its neighbour's bytes."""
    make_mars(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (_, test, _), (_, same, _) = load("mars", tmp_path / "a"), load("mars", tmp_path / "b")
    frames = test.tracklets[0].frames
    frames[1].write_bytes(b"\xff\xd8 not a jpeg")
    same.tracklets[0].frames[1].write_bytes(frames[0].read_bytes())  # frame 0, as near as frame 2 and earlier
    clip, _ = test[0]
    assert test.bad_frames == 1 and same.bad_frames == 0
    assert torch.equal(clip, same[0][0])
    same.tracklets[0].frames[1].write_bytes(frames[2].read_bytes())
    assert not torch.equal(clip, same[0][0])  # the neighbours differ: the comparison tells which was taken


def test_data_check_warns_of_labelled_duke_tracklets_in_no_folder(tmp_path, bench_proc):
    make_duke(tmp_path)
    shutil.rmtree(tmp_path / "gallery" / "0006" / "0002")  # a partly extracted release
    r = bench_proc("data", "check", "--dataset", "duke", "--data-root", tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"warning: 2 labelled tracklet(s) are in no folder under {tmp_path} (0006C4T0002, 0009C1T0001): a " \
        "partly extracted release?" in " ".join(r.stderr.split())


@pytest.mark.parametrize("breakage,fragment", [
    ("no_root", "dataset root not found"),
    ("no_csv", "MARS-Attribute annotation file not found"),
    ("bad_header", "not a MARS-Attribute CSV (unknown columns ['colour']"),
    ("out_of_range", "column 'Age' has 7, out of range 0..3"),
    ("no_frames", "tracklet 0001C2T0058 has no frames on disk"),
    ("no_info", "MARS track info not found"),
    ("info_folder", "MARS track info is a folder, not a file"),
    ("nan_info", "row 2 of 'track_test_info' has nan as its person, expected a whole number below 2^53"),
    ("huge_info", "row 2 of 'track_test_info' has 1e+30 as its person, expected a whole number below 2^53"),
    ("extra_value", "mars_attributes.csv:3: 16 values, expected 15 as in the header"),
    ("row_twice", "tracks_test_info.mat: row 6 is tracklet 0002C2T0019, as row 1 is: a tracklet listed twice"),
    ("in_both", "tracks_test_info.mat: row 6 is tracklet 0001C2T0058, as row 1 of"),
    ("other_ids", "tracks_test_info.mat: row 2 is person 2 camera 3, but its frames (")
])
def test_bad_mars_input_names_the_file(tmp_path, breakage, fragment):
    root = tmp_path / "mars"
    make_mars(root)
    ann = root / "mars_attributes.csv"
    if breakage == "no_root":
        root = tmp_path / "missing"
    elif breakage == "no_csv":
        ann.unlink()
    elif breakage == "bad_header":
        ann.write_text(ann.read_text().replace("Tops.c", "colour", 1))
    elif breakage == "out_of_range":
        lines = ann.read_text().splitlines()
        cells = lines[1].split(",")
        cells[5] = "7"
        lines[1] = ",".join(cells)
        ann.write_text("\r\n".join(lines))
    elif breakage == "extra_value":
        lines = ann.read_text().splitlines()
        lines[1] += ","  # a trailing comma is no value
        lines[2] += ",1"
        ann.write_text("\r\n".join(lines))
    elif breakage == "no_frames":
        for f in (root / "bbox_train" / "0001").glob("0001C2T0058*"):
            f.unlink()
    elif breakage in ("no_info", "info_folder"):
        (root / "info" / "tracks_test_info.mat").unlink()
        if breakage == "info_folder":
            (root / "info" / "tracks_test_info.mat").mkdir()
    elif breakage in ("row_twice", "in_both"):  # a test row repeated, or a train tracklet's frames copied to test
        path = root / "info" / "tracks_test_info.mat"
        info = loadmat(path)["track_test_info"]
        if breakage == "in_both":
            names = (root / "info" / "test_name.txt").read_text().split()
            first = (root / "info" / "train_name.txt").read_text().split()[:5]  # train row 1: 0001C2T0058's frames
            (root / "bbox_test" / "0001").mkdir()
            for name in first:
                shutil.copy(root / "bbox_train" / "0001" / name, root / "bbox_test" / "0001" / name)
            (root / "info" / "test_name.txt").write_text("\n".join(names + first) + "\n")
            info = np.vstack([info, [len(names) + 1, len(names) + 5, 1, 2]])
        else:
            info = np.vstack([info, info[:1]])
        savemat(path, {"track_test_info": info})
    elif breakage == "other_ids":  # row 2 (of person 2) given camera 3: its frames' labels would be another's
        path = root / "info" / "tracks_test_info.mat"
        info = loadmat(path)["track_test_info"]
        info[1, 3] = 3
        savemat(path, {"track_test_info": info})
    elif breakage in ("nan_info", "huge_info"):
        path = root / "info" / "tracks_test_info.mat"
        info = loadmat(path)["track_test_info"].astype(float)
        info[1, 2] = np.nan if breakage == "nan_info" else 1e30
        savemat(path, {"track_test_info": info})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said in the error, not in a numpy warning beside it
        with pytest.raises(UserError) as err:
            load("mars", root)
    assert fragment in str(err.value)


def one_hot_labels(attrs, rng) -> list[int]:
    """A label row as the paper's preprocessed CSV has them: 0/1 per binary attribute, one 1 per one-of group."""
    row = []
    for g in attrs.groups:
        row += np.eye(g.size, dtype=int)[rng.integers(g.size)].tolist() if g.multiclass else [int(rng.integers(2))]
    return row


def make_tracklet_csv(root: Path, attrs=DUKE_ATTRIBUTES) -> list[str]:
    names = ["0001C1T0001", "0001C2T0003", "0005C1T0002"]
    rng = np.random.default_rng(0)
    with open(root / "duke_labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", *attrs.names])
        for n in names:
            w.writerow([n, *one_hot_labels(attrs, rng)])
    for k, n in enumerate(names):
        for fno in range(1, 4 + k):
            _jpeg(root / n / f"{n}F{fno:03d}.jpg", 100 * k + fno)
    (root / "train.txt").write_text("0001C1T0001\n0001C2T0003\n")
    (root / "test.txt").write_text("0005C1T0002\n")
    return names


def test_a_tracklet_of_frames_in_a_format_not_read_says_so_and_webp_frames_are_read(tmp_path):
    """A tracklet folder of .bmp frames is not "no frames on disk" alone: the error names them and the fix. WebP
    frames (torchvision decodes them) are read as frames."""
    from PIL import Image

    names = make_tracklet_csv(tmp_path)
    for f in sorted((tmp_path / names[2]).iterdir()):
        Image.open(f).save(f.with_suffix(".webp"), lossless=True)
        f.unlink()
    assert [len(t.frames) for t in load("duke", tmp_path)[1].tracklets] == [5]
    for f in sorted((tmp_path / names[2]).iterdir()):
        Image.open(f).save(f.with_suffix(".bmp"))
        f.unlink()
    with pytest.raises(UserError, match=re.escape(
            f"tracklet {names[2]} has no frames on disk under {tmp_path / names[2]}; it holds {names[2]}F001.bmp, "
            f"{names[2]}F002.bmp, {names[2]}F003.bmp and 2 more, in a format frames are not read from (.jpg, .jpeg, "
            ".png, .webp are): convert them to PNG or JPEG")):
        load("duke", tmp_path)


def test_an_empty_annotation_is_said_not_read_as_a_layout_whose_split_lists_are_missing(tmp_path, bench_proc):
    """An empty file (a download cut off, a copy that failed) has no header to tell its layout by: read as the
    tracklet CSV layout, it was blamed for a train.txt nobody had asked for."""
    (tmp_path / "mars_attributes.csv").write_text("")
    r = bench_proc("data", "check", "--dataset", "mars", "--data-root", tmp_path)
    assert r.returncode == 2 and r.stderr == (
        f"error: {tmp_path / 'mars_attributes.csv'}: the attribute annotation is empty (no header line); give the "
        "mars attribute CSV, whose first line names its columns\n"), r.stderr


def test_the_other_datasets_annotation_suggests_that_dataset(tmp_path):
    make_mars(tmp_path / "mars")
    make_duke(tmp_path / "duke")
    for dataset, other in (("duke", "mars"), ("mars", "duke")):
        with pytest.raises(UserError, match=f"holds {other}_attributes.csv, the {other} attribute annotation, and "
                                            f"no {dataset}_attributes.csv: did you mean --dataset {other}?"):
            load(dataset, tmp_path / other)


def test_paper_layout_for_duke(tmp_path):
    make_tracklet_csv(tmp_path)
    train, test, attrs = load("duke", tmp_path)
    assert len(attrs) == 36 and (len(train), len(test)) == (2, 1)
    assert [t.person for t in train.tracklets] == [1, 1] and test.tracklets[0].person == 5
    assert test[0][0].shape == (4, 3, 32, 32)


def test_a_tracklet_csv_whose_header_names_the_attributes_is_read_by_name(tmp_path):
    """Columns written in another order under a header that names them are read by name, not by position (which
    would label every tracklet wrongly without a word); a header that names none is read by position."""
    make_tracklet_csv(tmp_path)

    def labels():
        train, test, _ = load("duke", tmp_path)
        return {t.name: t.labels.tolist() for t in train.tracklets + test.tracklets}

    in_order, path = labels(), tmp_path / "duke_labels.csv"
    rows = list(csv.reader(path.read_text().splitlines()))
    order = np.random.default_rng(1).permutation(len(DUKE_ATTRIBUTES))
    shuffled = [[row[0], *(row[1 + j] for j in order)] for row in rows]
    shuffled[0][1:] = [h.upper() for h in shuffled[0][1:]]  # case aside
    write = lambda rows_: path.write_text("".join(",".join(r) + "\n" for r in rows_))  # noqa: E731
    write(shuffled)
    assert labels() == in_order
    write([["name", *(f"c{j}" for j in range(len(DUKE_ATTRIBUTES)))], *rows[1:]])  # names of its own: by position
    assert labels() == in_order
    write([["name", *DUKE_ATTRIBUTES.labels], *rows[1:]])  # bench's labels, not names
    assert labels() == in_order
    for header, why in (([*rows[0][1:-1], "umbrella"], "column 37 ('umbrella') names none of duke's"),
                        ([*rows[0][1:-1], rows[0][1]], f"the header names {DUKE_ATTRIBUTES.names[0]} twice"),
                        (rows[0][1:-1], "35 label columns, expected 36 for duke")):
        write([["name", *header], *rows[1:]])
        with pytest.raises(UserError, match=re.escape(f"{path}:1: ") + ".*" + re.escape(why)):
            load("duke", tmp_path)


def test_a_first_row_of_labels_under_an_odd_name_is_refused_not_dropped_as_a_header(tmp_path):
    """Without a header, a first row whose label cells are all numbers is a tracklet, however it is named: an odd
    name there is refused on its line, as on any other, rather than the row dropped as a header and its tracklet
    then blamed on the split list."""
    make_tracklet_csv(tmp_path)
    path = tmp_path / "duke_labels.csv"
    rows = list(csv.reader(path.read_text().splitlines()))[1:]  # no header
    path.write_text("".join(",".join(r) + "\n" for r in rows))
    train, _, _ = load("duke", tmp_path)  # read by position
    assert train.tracklets[0].labels.tolist() == [float(v) for v in rows[0][1:]]
    for header in (["", *map(str, range(len(rows[0]) - 1))], ["tracklet", *map(str, range(1, len(rows[0])))]):
        path.write_text("".join(",".join(r) + "\n" for r in [header, *rows]))  # numbered columns (pandas' to_csv)
        assert load("duke", tmp_path)[0].tracklets[0].labels.tolist() == [float(v) for v in rows[0][1:]]
    rows[0][0] = "foo"
    path.write_text("".join(",".join(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=re.escape(f"{path}:1: 'foo' is not a tracklet name like 0001C2T0070")):
        load("duke", tmp_path)


def test_data_check_warns_of_tracklets_not_one_hot_in_a_group(tmp_path, bench_proc):
    """A row with two colours or no age is counted by the per-attribute figures and left out of the
    group-wise argmax ones: said before a run, naming the tracklets and groups."""
    make_tracklet_csv(tmp_path)
    r = bench_proc("data", "check", "--dataset", "duke", "--data-root", tmp_path)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr  # one-hot rows: nothing to say
    path = tmp_path / "duke_labels.csv"
    rows = list(csv.reader(path.read_text().splitlines()))
    groups = {g.name: g for g in DUKE_ATTRIBUTES.groups}
    top, down = groups["top colour"], groups["bottom colour"]
    rows[1][1 + top.start:1 + top.stop] = ["1"] * 2 + ["0"] * (top.size - 2)  # train: two top colours
    rows[1][1 + down.start:1 + down.stop] = ["0"] * down.size  # and no bottom colour
    rows[3][1 + top.start:1 + top.stop] = ["0"] * top.size  # test: no top colour
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    r = bench_proc("data", "check", "--dataset", "duke", "--data-root", tmp_path)
    assert r.returncode == 0, r.stderr
    said = " ".join(r.stderr.split())
    assert "warning: 1 train tracklet(s) have no value or several values of a one-of group (0001C1T0001 (top " \
        "colour: 2 values, bottom colour: 0 values)): the group-wise argmax figures leave them out" in said, said
    assert "warning: 1 test tracklet(s) have no value or several values of a one-of group (0005C1T0002 (top " \
        "colour: 0 values))" in said, said


def test_verify_images_lists_unreadable_frames_and_names_tracklets_a_run_would_stop_on(tmp_path, bench_proc):
    make_tracklet_csv(tmp_path)
    for dataset, root, said in (("duke", ["--data-root", tmp_path], "all 12 frames decode"),
                                ("synthetic", [], "nothing to decode, the clips are drawn")):
        r = bench_proc("data", "check", "--dataset", dataset, *root, "--verify-images")  # nothing to list: said so
        assert r.returncode == 0 and f"--verify-images: {said}" in r.stdout and not r.stderr, (r.stdout, r.stderr)
    first = sorted((tmp_path / "0001C1T0001").iterdir())
    first[0].write_bytes(b"")  # one bad frame: a run replaces it by a neighbour
    (tmp_path / "0001C2T0003" / "0001C2T0003F009.jpg").mkdir()  # a folder named like a frame: not a frame
    (tmp_path / "0001C2T0003" / "._0001C2T0003F001.jpg").write_bytes(b"\0\5\x16\7")  # a macOS copy's metadata
    r = bench_proc("data", "check", "--dataset", "duke", "--data-root", tmp_path, "--verify-images")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith(f"{first[0]}: unreadable (") and len(lines) == 2, lines
    assert lines[1] == "error: 1 unreadable frame(s) (listed above); runs replace them by a neighbour", lines
    train, _, _ = load("duke", tmp_path)
    assert [len(t.frames) for t in train.tracklets] == [3, 4]  # as written: neither is taken for a frame
    for frame in (tmp_path / "0005C1T0002").iterdir():  # every frame of the test tracklet: a run stops on it
        frame.write_bytes(b"\xff\xd8 not a jpeg")
    r = bench_proc("data", "check", "--dataset", "duke", "--data-root", tmp_path, "--verify-images")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 + 5 + 1, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "error: 1 tracklet(s) have no readable frame (0005C1T0002): a run " \
        "stops on them; replace their files or remove the tracklets (6 unreadable frame(s) listed above)", r.stderr


def test_frames_under_a_non_ascii_folder_are_read_in_a_c_locale(tmp_path):
    """A C locale without UTF-8 mode hands Python a non-ASCII file name as surrogate escapes, which torchvision's
    own file reader refuses: every frame of such a tree would read as unreadable."""
    root = tmp_path / "Müller"
    root.mkdir()
    make_tracklet_csv(root)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    r = subprocess.run([*BENCH, "data", "check", "--dataset", "duke", "--data-root", bytes(root), "--verify-images"],
                       cwd=ROOT, capture_output=True, env=env, timeout=300)
    assert r.returncode == 0 and b"unreadable" not in r.stderr, r.stderr.decode(errors="replace")


def test_data_check_of_an_empty_split_prints_it_and_fails(tmp_path, bench_proc):
    make_tracklet_csv(tmp_path)
    (tmp_path / "test.txt").write_text("\n")
    r = bench_proc("data", "check", "--dataset", "duke", "--data-root", tmp_path)
    assert r.returncode == 2 and "train" in r.stdout, r.stderr  # the summary first, then what is wrong
    said = ("error: the test split of duke has no tracklets (train 2, test 0), so no run can use it: check the split "
            "lists (data.train_list, data.test_list) and the annotation file")
    assert r.stderr.strip() == said
    r = bench_proc("run", "--dataset", "duke", "--data-root", tmp_path, "--backbone", "clip-tiny", "--pretrained",
                   "vtfpar-synthetic", "--method", "frozen", "--out", tmp_path / "runs", "--no-progress")
    assert r.returncode == 2 and r.stderr.strip() == said, r.stderr  # a run refuses it in the same words


def test_paper_layout_errors(tmp_path):
    make_tracklet_csv(tmp_path)
    path = tmp_path / "duke_labels.csv"
    rows = path.read_text().splitlines()
    path.write_text("\n".join([rows[0], rows[1].rsplit(",", 1)[0] + ",2", *rows[2:]]) + "\n")
    with pytest.raises(UserError, match=r"duke_labels.csv:2: column 37 \(bottom colour: complex\) has 2"):
        load("duke", tmp_path)
    with pytest.raises(UserError, match="36 label columns, expected 43 for mars"):
        load("mars", tmp_path, format="tracklet_csv")
    path.write_text("\n".join(rows + [rows[1]]) + "\n")  # the first tracklet labelled twice
    with pytest.raises(UserError, match=r"duke_labels.csv:5: duplicate tracklet 0001C1T0001 \(labelled on an earlier"):
        load("duke", tmp_path)
    cells = rows[1].split(",")
    cells[1] = ""  # an empty first label
    path.write_text("\n".join([rows[0], ",".join(cells), *rows[2:]]) + "\n")
    with pytest.raises(UserError, match=r"duke_labels.csv:2: column 2 \(backpack\) has '', expected 0 or 1"):
        load("duke", tmp_path)
    path.write_text("\n".join(rows) + "\n")
    (tmp_path / "test.txt").write_text("0005C1T0002\n0001C2T0003\n")
    with pytest.raises(UserError, match=r"test.txt: 1 tracklet\(s\) also in .*train.txt \(e.g. 0001C2T0003\): a test "
                                        "tracklet must not be trained on"):
        load("duke", tmp_path)


def test_bench_run_and_data_check_on_mars(tmp_path, bench_proc):
    root = tmp_path / "mars"
    make_mars(root)
    out = tmp_path / "runs"
    r = bench_proc("data", "check", "--dataset", "mars", "--data-root", root, "--verify-images")
    assert r.returncode == 0, r.stderr
    assert "32 attributes in 12 groups" in r.stdout and "age: teenager" in r.stdout
    _, test, _ = load("mars", root)
    for frame in test.tracklets[0].frames[1:]:  # every frame but one: whatever is sampled, reads fall back
        frame.write_bytes(b"\xff\xd8 not a jpeg")
    relative = os.path.relpath(root, ROOT)  # as a user in the repository would type it
    r_args = ["run", "--dataset", "mars", "--data-root", relative, "--backbone", "clip-tiny",
              "--pretrained", "none", "--epochs", "1", "--batch-size", "2", "--frames", "4", "--out",
              str(out), "--set", "model.fusion_width=64", "--set", "model.fusion_heads=4", "--set",
              "methods.side_tuning.width=64", "--set", "methods.side_tuning.heads=4", "--set",
              "data.num_workers=0", "--set", "measure.enabled=false", "--no-progress"]
    r = subprocess.run([*BENCH, *r_args], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    (result,) = [json.loads(p.read_text()) for p in out.glob("*/result.json")]
    assert result["data"]["unreadable_frames_replaced"] >= 1
    assert "fell back to a neighbouring frame" in r.stdout and "--verify-images` lists the files" in r.stdout
    assert result["data"]["train_tracklets"] == 3 and len(result["metrics"]["per_attribute"]) == 32
    assert result["data"]["frames_not_found"] == 0 and result["data"]["labelled_not_found"] > 0  # the tree's 5
    # From another folder, where the root as typed means another place (here none), eval reads the recorded one.
    (run_dir,) = out.glob("*/")
    (tmp_path / "elsewhere").mkdir()
    r = subprocess.run([*BENCH, "eval", str(run_dir)], capture_output=True, text=True, cwd=tmp_path / "elsewhere",
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout.split()[1]) == pytest.approx(result["metrics"]["f1"], abs=1e-6)
    said = " ".join(r.stderr.split())  # the test split's stand-in frames, as training said them
    assert said.startswith("warning: ") and "frame reads fell back to a neighbouring frame" in said, r.stderr
    assert "--verify-images` lists the files" in said
    # The dataset moves: eval says where the run read it (absolute, whatever was typed), and --data-root gives the
    # new place.
    moved = root.rename(tmp_path / "moved")
    r = bench_proc("eval", run_dir)
    assert r.returncode == 2 and r.stderr.strip() == f"error: dataset root not found: {root} (pass an existing " \
        "folder with --data-root)", r.stderr
    r = bench_proc("eval", run_dir, "--data-root", moved)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout.split()[1]) == pytest.approx(result["metrics"]["f1"], abs=1e-6)
    assert result["data"]["root"] == str(root)  # absolute, though it was given relative to the working folder
    assert "test split" not in r.stderr, r.stderr
    # A copy with a test tracklet fewer (its label row gone): the metrics are another test set's, and eval says so.
    labels = (moved / "mars_attributes.csv").read_text()
    first_test_row = next(line for line in labels.splitlines(keepends=True)[1:] if line.startswith("2,"))
    (moved / "mars_attributes.csv").write_text(labels.replace(first_test_row, "", 1))
    r = bench_proc("eval", run_dir, "--data-root", moved)
    assert r.returncode == 0 and "warning: the test split has 1 tracklet, the run was evaluated on 2: these metrics " \
        "are not comparable with its result.json" in r.stderr, r.stderr
    assert "on a test split of 1 tracklet, not the run's 2: not comparable" in r.stdout  # never "the same as"
    assert "the same as result.json records" not in r.stdout, r.stdout
    # ... and with none left (every test row gone), one line, not a traceback from the empty evaluation
    (moved / "mars_attributes.csv").write_text("".join(line for line in labels.splitlines(keepends=True)
                                                       if not line.startswith("2,")))
    r = bench_proc("eval", run_dir, "--data-root", moved)
    assert r.returncode == 2 and r.stderr.splitlines()[-1] == f"error: the test split of the mars data at {moved} " \
        "has no tracklets " \
        f"now, so run {run_dir.name} has nothing to be evaluated on: check its split lists and annotation file " \
        "(bench data check), or pass --data-root the dataset the run was trained on", r.stderr
    (moved / "mars_attributes.csv").write_text(labels)
    # The Duke copy given for this MARS run: eval cannot change the dataset, so it does not suggest --dataset.
    (tmp_path / "duke").mkdir()
    (tmp_path / "duke" / "duke_attributes.csv").write_text("person_id,camera_id\n")
    r = bench_proc("eval", run_dir, "--data-root", tmp_path / "duke")
    assert r.returncode == 2 and r.stderr.strip() == (
        f"error: the data at {tmp_path / 'duke'} is duke's (duke_attributes.csv, no mars_attributes.csv), but run "
        f"{run_dir.name} was trained on mars: pass --data-root the mars dataset the run was trained on"), r.stderr
    # A dataset annotated with another attribute set (the later release, 43 attributes): said, not a shape error.
    (moved / "mars_attributes.csv").rename(moved / "mars_attributes_2019.csv")
    write_mars_release(moved)
    r = bench_proc("eval", run_dir, "--data-root", moved)
    assert r.returncode == 2 and r.stderr.count("error:") == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"data at {moved} has 43 attributes (format release_csv), but run {run_dir.name} was trained on " \
        "32" in r.stderr and "--data-root" in r.stderr


def test_predict_averages_every_clip_for_a_run_evaluated_on_every_clip(tmp_path, bench_proc):
    """A run evaluated on every consecutive clip (data.eval_all_clips) is predicted as it was evaluated: predict's
    probabilities are evaluation's per-tracklet ones, for a folder of frames and for a video of them."""
    from benchmark.predict import Predictor
    from benchmark.task import load_run
    from benchmark.train import loader, predict
    from vtfpar.data.video import write_video

    root = tmp_path / "mars"
    make_mars(root)
    out = tmp_path / "runs"
    r = bench_proc("run", "--dataset", "mars", "--data-root", root, "--backbone", "clip-tiny", "--pretrained",
                   "vtfpar-synthetic", "--method", "frozen", "--epochs", "1", "--batch-size", "2", "--frames", "2",
                   "--out", out, "--set", "data.eval_all_clips=true", "--set", "data.num_workers=0", "--set",
                   "measure.enabled=false", "--set", "train.eval_batch_size=1", "--no-progress")
    assert r.returncode == 0, r.stderr
    (run_dir,) = out.glob("*/")
    p = load_run(run_dir)
    expected, _ = predict(p.model, loader(p.test_set, 2, 0, None, False, p.device), p.device, p.cfg.train.amp)
    first = p.test_set.tracklets[0]  # 5 frames: clips 0-1 and 2-3 (frame 4 fills none), one per batch
    assert len(first.frames) == 5 and list(p.test_set.item_tracklet[:2]) == [0, 0]
    folder = tmp_path / first.name  # MARS keeps a person's tracklets in one folder: this one's frames alone
    folder.mkdir()
    for f in first.frames:
        shutil.copy(f, folder / f.name)
    r = bench_proc("predict", run_dir, folder, "--json")
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    got = json.loads(r.stdout)
    assert got["clips"] == 2 and got["frames_used"] == [0, 1, 2, 3], got
    probs = np.array([got["probabilities"][n] for n in p.test_set.attributes.names])
    assert np.abs(probs - expected[0]).max() <= 1e-5
    one = Predictor(run_dir, "cpu").predict(folder)  # in memory too, not only through JSON
    assert np.abs(one.probabilities - expected[0]).max() <= 1e-5 and len(one.frames) == 2
    # each clip alone differs from the average: the test would not pass on one clip's probabilities
    single = Predictor(run_dir, "cpu")
    single.all_clips = False
    assert np.abs(single.predict(folder).probabilities - expected[0]).max() > 1e-4
    video = tmp_path / "first.mp4"
    write_video(video, np.stack([np.asarray(Image.open(f).convert("RGB")) for f in first.frames]))
    from_video = Predictor(run_dir, "cpu").predict(video)
    assert from_video.clips == 2 and from_video.frame_indices == [0, 1, 2, 3]
    assert from_video.frame_titles == ["frame 0", "frame 2"]


def test_a_mars2019_run_whose_lengths_were_read_the_old_way_is_refused_not_scored(tmp_path, bench_proc):
    """A run trained while Tops.l / Bottoms.l were read with 0 as short (its result records no data.labels_read)
    has both attributes the other way round: eval and predict refuse it, report leaves it out, run warns."""
    from benchmark.results import stale_labels

    root = tmp_path / "mars"
    make_mars(root)
    out = tmp_path / "runs"
    args = ("run", "--dataset", "mars", "--data-root", root, "--backbone", "clip-tiny", "--pretrained",
            "vtfpar-synthetic", "--method", "frozen", "--epochs", "1", "--batch-size", "2", "--frames", "2", "--out",
            out, "--set", "data.num_workers=0", "--set", "measure.enabled=false", "--no-progress")
    r = bench_proc(*args)
    assert r.returncode == 0, r.stderr
    (run_dir,) = out.glob("*/")
    path = run_dir / "result.json"
    result = json.loads(path.read_text())
    assert result["data"]["labels_read"] == LABELS_READ and result["data"]["format"] == "mars2019"
    assert stale_labels(result) is None
    frames = one_tracklet(root, 2, 2, 19, tmp_path / "one_tracklet")
    r = bench_proc("predict", run_dir, frames, "--json")
    assert r.returncode == 0, r.stderr
    del result["data"]["labels_read"]
    path.write_text(json.dumps(result))
    why = ("its MARS-Attribute 2019 labels were read before top and bottom length were read as the CSV codes them (1 "
           "= short), so it was trained and scored with those two attributes the other way round")
    for command in (("eval", run_dir), ("predict", run_dir, frames)):
        r = bench_proc(*command)
        assert r.returncode == 2 and r.stderr.strip() == (f"error: run {run_dir.name}: {why}: train it again with "
                                                          "bench run ... --force"), r.stderr
    r = bench_proc("report", "--runs", out, "--out", tmp_path / "report")
    assert f"run {run_dir.name}: {why}" in r.stdout + r.stderr
    assert not list((tmp_path / "report").rglob("summary.csv")) or run_dir.name not in "".join(
        f.read_text() for f in (tmp_path / "report").rglob("*.csv"))
    r = bench_proc(*args)
    assert r.returncode == 0 and f"warning: run {run_dir.name}: {why}" in r.stdout + r.stderr, r.stdout
    r = bench_proc(*args, "--force")
    assert r.returncode == 0 and json.loads(path.read_text())["data"]["labels_read"] == LABELS_READ, r.stderr
    # a run of other attributes records no reading that changed: never stale
    assert stale_labels({"data": {"attributes": ["hat", "bag"]}}) is None


# ------------------------------------------------------------------ later release (release_csv)
RELEASE_HEADER = ["person_id", "camera_id", "tracklets_id", "action", "angle", "occlusion", "cut", "multi-person",
                  "back-dominant", "target-change", "target-miss", "wrong-target"]


def _release_row(row: list[str]) -> list[str]:
    """A later-release MARS row for a 2019 fixture row: same colours, age and binary columns, plus
    motion, pose and quality flags derived from the tracklet number."""
    pid, cam, tid, top_c, bottom_c, age, *binary = row
    t = int(tid)
    return [pid, cam, tid, str(t % 5), str(t % 6), *(str((t >> k) & 1) for k in range(7)), top_c, bottom_c, age,
            *binary]


MARS_RELEASE_HEADER = RELEASE_HEADER + ["upcolor", "downcolor", "age", "up", "down", "bag", "backpack", "hat",
                                        "handbag", "hair", "gender", "btype"]


def write_mars_release(root: Path) -> None:
    """``root/mars_attributes.csv`` in the later release's layout, for the tracklets of ``make_mars``."""
    with open(root / "mars_attributes.csv", "w", newline="") as f:
        csv.writer(f).writerows([MARS_RELEASE_HEADER, *(_release_row(r) for r in _fixture_rows(2)[1:])])


def test_later_release_for_mars(tmp_path):
    from vtfpar.data.mars import MARS43_ATTRIBUTES

    splits = make_mars(tmp_path)
    write_mars_release(tmp_path)
    train, test, attrs = load("mars", tmp_path)  # detected from the header
    assert attrs is MARS43_ATTRIBUTES and len(attrs) == 43
    assert (len(train), len(test)) == (len(splits["train"]), len(splits["test"]))
    pid, cam, tid, top_c, bottom_c, age, *binary = splits["train"][0]
    expected = np.zeros(43, dtype=np.float32)
    expected[:9] = [float(b) for b in binary[:8]] + [float(binary[8] == "0")]  # btype 0 = skirt, as Bottoms.t
    t = int(tid)
    for start, value in ((9, t % 6), (15, t % 5), (20, int(top_c)), (29, int(bottom_c)), (39, int(age))):
        expected[start + value] = 1.0
    np.testing.assert_array_equal(train.labels[0], expected)
    assert attrs.names[15 + t % 5].startswith("motion: ")


# Two rows of the later release's mars_attributes.csv as published copies of it show them (values after the keys).
RELEASE_ROWS = {(91, 1, 4): "0,0,0,0,0,0,0,0,0,5,0,1,1,0,1,0,0,0,1,1,0",
                (646, 2, 8): "0,4,0,0,0,0,0,0,0,5,7,1,1,0,0,1,0,1,1,1,1"}


def test_later_release_rows_read_to_the_2019_csv_labels_of_the_same_tracklets(tmp_path):
    """The later release annotates the same tracklets with the same codes as the 2019 CSV (its btype is Bottoms.t,
    0 for the dress of person 91, 1 for the trousers of person 646 in Market-1501's annotation): read, both give one
    label for each of the 32 attributes they share; before btype was read with 0 as skirt, bottom type differed."""
    from vtfpar.data.layouts import read_release_csv
    from vtfpar.data.mars import MARS43_ATTRIBUTES

    path = tmp_path / "mars_attributes.csv"
    path.write_text(",".join(MARS_RELEASE_HEADER) + "\n"
                    + "".join(f"{p},{c},{t},{values}\n" for (p, c, t), values in RELEASE_ROWS.items()))
    release, year2019 = read_release_csv(path, "mars", MARS43_ATTRIBUTES), read_mars2019_csv(FIXTURE)
    shared = [MARS43_ATTRIBUTES.names.index(n) for n in MARS2019_ATTRIBUTES.names]
    for key in RELEASE_ROWS:
        np.testing.assert_array_equal(release[key][shared], year2019[key])
    skirt = MARS43_ATTRIBUTES.names.index("bottom type: skirt or dress")
    assert (release[(91, 1, 4)][skirt], release[(646, 2, 8)][skirt]) == (1.0, 0.0)


def test_a_mars_run_of_the_later_release_read_before_btype_was_is_stale_others_are_not(tmp_path):
    """A MARS run whose labels came from the later release's CSV while btype was read with 1 as skirt (labels_read
    below 3) has bottom type the other way round; known from its data.format setting, or from the CSV its root still
    holds. The paper code's layout of the same 43 attributes, and a run whose root is gone, are not called stale."""
    from benchmark.results import stale_labels, unsure_labels
    from vtfpar.data.mars import MARS43_ATTRIBUTES

    root = tmp_path / "mars"
    root.mkdir()
    (root / "mars_attributes.csv").write_text(",".join(RELEASE_HEADER) + "\n")

    def result(fmt, read=2, where=root):
        return {"data": {"attributes": MARS43_ATTRIBUTES.names, "labels_read": read, "root": str(where)},
                "config": {"data": {"format": fmt, "root": str(where), "annotation": ""}}}

    why = stale_labels(result("release_csv"))
    assert why == ("its MARS labels were read from the later release's CSV before bottom type was read as the CSV "
                   "codes it (btype 0 = skirt or dress), so it was trained and scored with that attribute the other "
                   "way round: train it again with bench run ... --force")
    assert stale_labels(result("auto")) == why
    assert stale_labels(result("auto", read=3)) is None and stale_labels(result("release_csv", read=3)) is None
    assert stale_labels(result("tracklet_csv")) is None
    gone = result("auto", where=tmp_path / "gone")
    assert stale_labels(gone) is None and unsure_labels(result("release_csv")) is None
    assert unsure_labels(gone).startswith("it was trained before the later release's MARS CSV had its bottom type read")
    (root / "mars_attributes.csv").write_text("0001C1T0001,1,0\n")  # the paper code's layout
    assert stale_labels(result("auto")) is None and unsure_labels(result("auto")) is None
    # what the fix before concerned is not concerned again: a 2019 CSV run read since, a Duke run
    year2019 = {"data": {"attributes": MARS2019_ATTRIBUTES.names, "labels_read": 2}}
    duke = {"data": {"attributes": DUKE_ATTRIBUTES.names, "labels_read": 1},
            "config": {"data": {"format": "release_csv"}}}
    assert not any(check(r) for r in (year2019, duke) for check in (stale_labels, unsure_labels))
    assert stale_labels({"data": {"attributes": MARS43_ATTRIBUTES.names}, "config": "edited"}) is None


def test_a_runs_labels_are_judged_with_one_reading_of_its_dataset_root(tmp_path, monkeypatch):
    """``label_problem`` says stale, unsure or neither from one look at the root (eval and predict judge a run once,
    not once per verdict); stale_labels and unsure_labels are its two halves."""
    import vtfpar.data
    from benchmark.results import label_problem, stale_labels, unsure_labels
    from vtfpar.data.mars import MARS43_ATTRIBUTES

    root = tmp_path / "mars"
    root.mkdir()
    csv_file = root / "mars_attributes.csv"
    looks, detect = [], vtfpar.data.detect_format
    monkeypatch.setattr(vtfpar.data, "detect_format", lambda *a: looks.append(a) or detect(*a))

    def result(where=root):
        return {"data": {"attributes": MARS43_ATTRIBUTES.names, "labels_read": 2, "root": str(where)},
                "config": {"data": {"format": "auto", "root": str(where), "annotation": ""}}}

    for header, kind in ((",".join(RELEASE_HEADER), "stale"), ("0001C1T0001,1,0", None)):
        csv_file.write_text(header + "\n")
        looks.clear()
        problem = label_problem(result())
        assert (problem and problem[0]) == kind and len(looks) == 1
        assert stale_labels(result()) == (problem[1] if kind else None) and unsure_labels(result()) is None
    looks.clear()
    assert label_problem(result(tmp_path / "gone"))[0] == "unsure" and looks == []


def test_an_old_release_run_whose_root_is_gone_is_refused_once_eval_reads_the_csv_and_warned_of_by_predict(
        tmp_path, bench_proc):
    """A MARS run of the later release's CSV from before btype was read as now, whose recorded root is gone: its
    format is not known until data is read. eval with --data-root reads the CSV and refuses the run in one line;
    predict, which reads no dataset, warns."""
    root = tmp_path / "mars"
    splits = make_mars(root)
    write_mars_release(root)
    out = tmp_path / "runs"
    r = bench_proc("run", "--dataset", "mars", "--data-root", root, "--backbone", "clip-tiny", "--pretrained",
                   "vtfpar-synthetic", "--method", "frozen", "--epochs", "1", "--batch-size", "2", "--frames", "2",
                   "--out", out, "--set", "data.num_workers=0", "--set", "measure.enabled=false", "--no-progress")
    assert r.returncode == 0, r.stderr
    (run_dir,) = out.glob("*/")
    result = json.loads((run_dir / "result.json").read_text())
    assert result["data"]["format"] == "release_csv" and result["data"]["labels_read"] == LABELS_READ
    result["data"]["labels_read"] = 2
    del result["data"]["format"]
    (run_dir / "result.json").write_text(json.dumps(result))
    moved = root.rename(tmp_path / "moved")
    r = bench_proc("eval", run_dir, "--data-root", moved)
    why = ("its MARS labels were read from the later release's CSV before bottom type was read as the CSV codes it "
           "(btype 0 = skirt or dress), so it was trained and scored with that attribute the other way round")
    assert r.returncode == 2 and r.stderr.strip() == (f"error: run {run_dir.name}: {why}: train it again with bench "
                                                      "run ... --force"), r.stderr
    frames = one_tracklet(moved, *(int(v) for v in splits["test"][0][:3]), tmp_path / "one_tracklet")
    r = bench_proc("predict", run_dir, frames, "--json")
    assert r.returncode == 0 and f"warning: run {run_dir.name}: it was trained before the later release's MARS CSV" \
        in " ".join(r.stderr.split()), r.stderr


def test_a_checkpoint_trained_on_labels_read_otherwise_is_not_resumed(tmp_path, monkeypatch):
    """A MARS run of the later release's CSV stopped before btype was read as now: its epochs so far trained on bottom
    type the other way round, and resumed, the run would finish on the labels as read now and pass for one of them.
    Its checkpoint (which records no labels_read) is refused in one line; one that records the current reading
    resumes."""
    from benchmark.config import load_config
    from benchmark.results import CHECKPOINT
    from benchmark.train import train_run
    from tests.test_training import _stop_on_second_evaluation

    root = tmp_path / "mars"
    make_mars(root)
    write_mars_release(root)
    cfg = load_config(None, {"run": {"method": "frozen", "dataset": "mars", "out": str(tmp_path / "runs")},
                             "model": {"backbone": "clip-tiny", "pretrained": "vtfpar-synthetic"},
                             "data": {"root": str(root), "frames": 2, "num_workers": 0},
                             "train": {"epochs": 2, "batch_size": 2, "eval_every": 1}, "measure": {"enabled": False}})
    real = _stop_on_second_evaluation(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, progress=False, log=lambda *_: None)
    monkeypatch.setattr("benchmark.train.evaluate", real)
    ckpt = tmp_path / "runs" / cfg.run_id() / CHECKPOINT
    saved = torch.load(ckpt, weights_only=False)
    assert saved["labels_read"] == LABELS_READ
    torch.save({k: v for k, v in saved.items() if k != "labels_read"}, ckpt)
    with pytest.raises(UserError) as refused:
        train_run(cfg, progress=False, log=lambda *_: None)
    assert str(refused.value) == (
        f"{ckpt}: its MARS labels were read from the later release's CSV before bottom type was read as the CSV codes "
        "it (btype 0 = skirt or dress), so it was trained and scored with that attribute the other way round: delete "
        "it, or train the run again with bench run ... --no-resume")
    torch.save(saved, ckpt)
    messages = []
    result, _ = train_run(cfg, progress=False, log=messages.append)
    assert any("resuming" in str(m) for m in messages) and len(result["history"]) == 2


def make_duke(root: Path) -> list[list[str]]:
    """A DukeMTMC-VideoReID tree: 2 train tracklets, 2 query, 2 gallery of which one is also a query."""
    layout = {"train": [(1, 1, 1), (1, 2, 2)], "query": [(5, 3, 1), (6, 4, 1)], "gallery": [(5, 3, 1), (6, 4, 2)]}
    rows = []
    for folder, tracklets in layout.items():
        for pid, cam, tid in tracklets:
            for fno in range(1, 4):
                _jpeg(root / folder / f"{pid:04d}" / f"{tid:04d}" / f"{pid:04d}_C{cam}_F{fno:04d}_X{tid:05d}.jpg",
                      pid * 100 + tid * 10 + fno)
            row = [pid, cam, tid, tid % 5, (pid + tid) % 6, *[0] * 7, *[(pid + k) % 2 for k in range(8)],
                   (pid + 2 * tid) % 8, (pid + tid) % 9]
            if [pid, cam, tid] not in [r[:3] for r in rows]:
                rows.append(row)
    rows.append([9, 1, 1, *[0] * 19])  # labelled but not on disk: left out, with a warning
    header = RELEASE_HEADER + ["backpack", "shoulder bag", "handbag", "boots", "gender", "hat", "shoes", "top",
                               "downcolor", "topcolor"]
    with open(root / "duke_attributes.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return rows


def test_later_release_for_duke(tmp_path):
    rows = make_duke(tmp_path)
    train, test, attrs = load("duke", tmp_path)
    assert attrs is DUKE_ATTRIBUTES and len(attrs) == 36
    assert len(train) == 2 and len(test) == 3  # (5, 1) is in query and gallery: counted once
    assert train.labelled_not_found == ["0009C1T0001"]
    by_name = {t.name: t for t in test.tracklets}
    assert set(by_name) == {"0005C3T0001", "0006C4T0001", "0006C4T0002"}
    row = next(r for r in rows if r[:3] == [6, 4, 2])
    label = by_name["0006C4T0002"].labels
    np.testing.assert_array_equal(label[:8], row[12:20])
    assert label[8 + row[4]] == 1 and label[14 + row[3]] == 1  # pose, motion
    assert label[19 + row[21]] == 1 and label[28 + row[20]] == 1  # top colour from topcolor, bottom from downcolor
    assert label.sum() == sum(row[12:20]) + 4


def test_readers_take_what_editors_and_tools_leave(tmp_path):
    """A byte-order mark in MARS's frame lists and hidden folders (a notebook's, a cache's) in Duke's tree are
    not the data: read past, as the CSVs' BOM is."""
    make_mars(tmp_path / "mars")
    names = tmp_path / "mars" / "info" / "train_name.txt"
    names.write_bytes(b"\xef\xbb\xbf" + names.read_bytes())
    assert len(load("mars", tmp_path / "mars")[0]) > 0
    make_duke(tmp_path / "duke")
    (tmp_path / "duke" / "train" / "0001" / ".cache").mkdir()
    (tmp_path / "duke" / "train" / ".ipynb_checkpoints" / "x").mkdir(parents=True)
    assert len(load("duke", tmp_path / "duke")[0]) == 2


@pytest.mark.parametrize("breakage,fragment", [
    ("keys", "expected the key columns person_id,camera_id,tracklets_id"),
    ("columns", "18 columns after the keys, expected 19 for duke"),
    ("range", "column 'action' has 5, out of range 0..4"),
    ("query", "Duke folder not found"),
    ("empty", "has no frames on disk"),
    ("in_both", "gallery/0001/0001: tracklet 0001C1T0001 is also in"),
])
def test_later_release_errors_name_the_file(tmp_path, breakage, fragment):
    make_duke(tmp_path)
    ann = tmp_path / "duke_attributes.csv"
    lines = ann.read_text().splitlines()
    if breakage == "keys":
        lines[0] = lines[0].replace("person_id", "id", 1)
        spec_kw = {"format": "release_csv"}
    else:
        spec_kw = {}
    if breakage == "columns":
        lines = [",".join(line.split(",")[:-1]) for line in lines]
    if breakage == "range":
        cells = lines[1].split(",")
        cells[3] = "5"
        lines[1] = ",".join(cells)
    ann.write_text("\n".join(lines) + "\n")
    if breakage == "query":
        shutil.rmtree(tmp_path / "query")
    if breakage == "in_both":  # a training tracklet copied into the gallery: tested on what it trained on
        shutil.copytree(tmp_path / "train" / "0001" / "0001", tmp_path / "gallery" / "0001" / "0001")
    if breakage == "empty":
        for f in (tmp_path / "train" / "0001" / "0001").iterdir():
            f.unlink()
    with pytest.raises(UserError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        load("duke", tmp_path, **spec_kw)


def _mars_run_config(root: Path, out: Path):
    """A two-epoch frozen run on a ``make_mars`` tree, on the random tiny backbone, evaluated after each epoch."""
    from benchmark.config import load_config

    return load_config(None, {
        "run": {"method": "frozen", "dataset": "mars", "out": str(out)},
        "model": {"backbone": "clip-tiny", "pretrained": "none", "fusion_width": 64, "fusion_heads": 4},
        "data": {"root": str(root), "frames": 4, "num_workers": 0},
        "train": {"epochs": 2, "batch_size": 2, "warmup_epochs": 0, "eval_every": 1},
        "measure": {"enabled": False},
    })


def test_a_resumed_run_counts_the_unreadable_frames_of_every_epoch(tmp_path, monkeypatch):
    """``data.unreadable_frames_replaced`` counts the fallback reads of every epoch, those before an interruption
    (carried in the checkpoint) too: the resumed run records what the uninterrupted one does."""
    import benchmark.train as train
    from benchmark.train import train_run
    from tests.test_training import _stop_on_second_evaluation

    root = tmp_path / "mars"
    make_mars(root)
    train_set, test_set, _ = load("mars", root)
    for frame in [*train_set.tracklets[0].frames[1:], *test_set.tracklets[0].frames[1:]]:
        frame.write_bytes(b"")
    quiet = {"progress": False, "log": lambda *_: None}
    straight, _ = train_run(_mars_run_config(root, tmp_path / "straight"), **quiet)
    assert straight["data"]["unreadable_frames_replaced"] > 0
    cfg = _mars_run_config(root, tmp_path / "interrupted")
    real = _stop_on_second_evaluation(monkeypatch)  # epoch 2 trained, then stopped before its checkpoint
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, **quiet)
    monkeypatch.setattr(train, "evaluate", real)
    resumed, _ = train_run(cfg, **quiet)
    assert resumed["history"][0]["loss"] == straight["history"][0]["loss"]
    assert resumed["metrics"]["f1"] == straight["metrics"]["f1"]
    assert resumed["data"]["unreadable_frames_replaced"] == straight["data"]["unreadable_frames_replaced"]


@pytest.mark.parametrize("fast_transform, cache", [(False, False), (True, False), (False, True), (True, True)])
def test_a_tracklet_of_crops_of_several_sizes_is_read_in_every_loader_path(tmp_path, fast_transform, cache):
    """A tracker's crops differ in size from frame to frame (DukeMTMC-VideoReID's do): every path resizes each
    frame from its own size, and the evaluation clip is exactly what ``eval_clip`` (and so ``bench predict``)
    computes from those frames; a clip of one size is resized as one batch, as before."""
    from vtfpar.data.tracklets import Tracklet, TrackletDataset, _normalise, _resize_unit, decode_rgb8, eval_clip

    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(128, 64), (150, 61), (183, 88), (128, 64)]):
        paths.append(tmp_path / f"{i:04d}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    tracklet = Tracklet("0001C1T0001", 1, 1, paths, np.zeros(len(DUKE_ATTRIBUTES), np.float32))
    spec = dict(fast_transform=fast_transform, frame_cache=tmp_path / "cache" if cache else None)
    test = TrackletDataset([tracklet], DUKE_ATTRIBUTES, 4, 32, train=False, **spec)
    clip, _ = test[0]
    assert clip.shape == (4, 3, 32, 32)
    reference = eval_clip([decode_rgb8(p) for p in paths], 32)
    if not fast_transform:  # the default resize: exactly the evaluation input bench predict builds
        assert torch.equal(clip, reference)
    else:  # two passes, each frame's from its own size: the same up to float rounding
        assert (clip - reference).abs().max() <= 1e-5
    if not fast_transform and not cache:  # frames of one size: resized as one batch, as they always were
        same = TrackletDataset([Tracklet("0001C1T0001", 1, 1, [paths[0], paths[3]] * 2, tracklet.labels)],
                               DUKE_ATTRIBUTES, 4, 32, train=False)
        frames = torch.stack([decode_rgb8(p) for p in [paths[0], paths[3]] * 2])
        assert torch.equal(same[0][0], _normalise(_resize_unit(frames, 32)))
    train = TrackletDataset([tracklet], DUKE_ATTRIBUTES, 4, 32, train=True, **spec)
    torch.manual_seed(0)
    assert train[0][0].shape == (4, 3, 32, 32) and torch.isfinite(train[0][0]).all()


def test_mars_frames_and_labelled_tracklets_missing_from_the_tree_are_counted_and_warned_of(tmp_path, bench_proc):
    """A partly extracted bbox_train.zip (frames the info lists, not on disk) and labels of tracklets in no row of
    the track info (a partial info file): the run uses what it finds, as before, and says what is missing rather
    than train on fewer frames or tracklets without a word (Duke's readers say so too)."""
    splits = make_mars(tmp_path)
    labelled = {f"{int(p):04d}C{c}T{int(t):04d}" for p, c, t, *_ in _fixture_rows(2)[1:]}
    train, _, _ = load("mars", tmp_path)
    placed = {t.name for t in train.tracklets} | {f"{int(r[0]):04d}C{r[1]}T{int(r[2]):04d}" for r in splits["test"]}
    assert sorted(train.labelled_not_found) == sorted(labelled - placed) and train.frames_not_found == []
    for f in ("0001C2T0058F002.jpg", "0001C2T0058F003.jpg"):
        (tmp_path / "bbox_train" / "0001" / f).unlink()
    train, _, _ = load("mars", tmp_path)
    assert train.frames_not_found == ["bbox_train/0001/0001C2T0058F002.jpg", "bbox_train/0001/0001C2T0058F003.jpg"]
    assert len(train.tracklets[0].frames) == 3
    r = bench_proc("data", "check", "--dataset", "mars", "--data-root", tmp_path)
    assert r.returncode == 0, r.stderr
    said = " ".join(r.stderr.split())
    assert f"warning: 2 frame(s) that MARS' info/ lists are not on disk under {tmp_path} (bbox_train/0001/" \
        "0001C2T0058F002.jpg, bbox_train/0001/0001C2T0058F003.jpg): a partly extracted bbox_*.zip?" in said, said
    assert f"warning: {len(labelled - placed)} labelled tracklet(s) are in no row of info/tracks_train_info.mat or " \
        f"info/tracks_test_info.mat under {tmp_path} (" in said and "a partial info/ folder, or labels of another " \
        "release? Runs use the tracklets found" in said


def test_a_data_root_one_level_off_says_what_the_root_should_hold(tmp_path, bench_proc):
    """The folder above the dataset, or bbox_train/ inside it: no annotation file there, so the layout falls back to
    the paper code's, whose CSV is not there either; the line asks whether the root is right and what it holds."""
    make_mars(tmp_path / "MARS")
    for root in (tmp_path, tmp_path / "MARS" / "bbox_train"):
        r = bench_proc("data", "check", "--dataset", "mars", "--data-root", root)
        assert r.returncode == 2 and r.stderr == (
            f"error: {root}: no annotation CSV in it; is it the dataset root? Give --data-root the folder that holds "
            "mars_attributes.csv (with bbox_train/, bbox_test/ and info/), or the paper code's tracklet CSV with "
            "train.txt and test.txt; or set data.annotation\n"), r.stderr
    (tmp_path / "a.csv").write_text("x\n")
    (tmp_path / "b.csv").write_text("x\n")
    r = bench_proc("data", "check", "--dataset", "mars", "--data-root", tmp_path)
    assert r.returncode == 2 and "found 2 (a.csv, b.csv); set data.annotation to the label CSV" in r.stderr, r.stderr


def test_a_paper_layout_folder_holding_another_tracklets_frames_is_warned_of(tmp_path, bench_proc):
    """Frames named as another tracklet's in a tracklet's folder (copied into the wrong one) are read as one
    sequence: bench data check and the run say which folders, as bench predict does for its inputs."""
    names = make_tracklet_csv(tmp_path)
    r = bench_proc("data", "check", "--dataset", "duke", "--data-root", tmp_path)
    assert r.returncode == 0 and "another tracklet's" not in r.stderr, r.stderr
    for f in (tmp_path / names[2]).iterdir():
        shutil.copy(f, tmp_path / names[0] / f.name)
    r = bench_proc("data", "check", "--dataset", "duke", "--data-root", tmp_path)
    assert r.returncode == 0 and (f"warning: 1 tracklet folder(s) under {tmp_path} hold frames named as another "
                                  f"tracklet's ({names[0]}), which are read as one sequence") in " ".join(
        r.stderr.split()), r.stderr
    unpadded = tmp_path / "unpadded"  # names written without zero padding hold their own, padded, frames
    unpadded.mkdir()
    names = make_tracklet_csv(unpadded)
    short = names[0].replace("0001C1T0001", "1C1T1")
    (unpadded / names[0]).rename(unpadded / short)
    for f in ("duke_labels.csv", "train.txt"):
        (unpadded / f).write_text((unpadded / f).read_text().replace(names[0], short))
    r = bench_proc("data", "check", "--dataset", "duke", "--data-root", unpadded)
    assert r.returncode == 0 and "another tracklet's" not in r.stderr, r.stderr


def test_a_complete_run_of_a_relative_root_that_is_another_folder_here_is_warned_of(tmp_path, monkeypatch):
    """The run id holds ``data.root`` as written, so ``--data-root MARS`` from another folder names the same run:
    found complete, it says which folder's data its numbers are of, instead of passing them off as this one's."""
    from benchmark.train import train_run

    for place in ("a", "b"):
        make_mars(tmp_path / place / "MARS")
    out = tmp_path / "runs"
    monkeypatch.chdir(tmp_path / "a")
    cfg = _mars_run_config(Path("MARS"), out)
    cfg.train.epochs = 1
    result, run_dir = train_run(cfg, progress=False, log=lambda *_: None)
    assert result["data"]["root"] == str(tmp_path / "a" / "MARS")
    said = []
    train_run(cfg, progress=False, log=said.append)  # the same folder: nothing to say
    assert not any("warning" in str(line) for line in said), said
    monkeypatch.chdir(tmp_path / "b")
    said = []
    again = train_run(cfg, progress=False, log=said.append)
    assert not again.trained and again[0] == result
    assert f"warning: run {run_dir.name}: it was trained on the data in {tmp_path / 'a' / 'MARS'}, and data.root " \
           f"MARS is {tmp_path / 'b' / 'MARS'} from this folder" in said[1], said


def test_training_draws_every_frame_of_its_segment_and_evaluation_scores_every_whole_clip():
    """Segmental sampling (TSN): in training each of the T frames is drawn from the whole of its segment, its last
    frame included, so a tracklet of 2-frame segments still varies; ``eval_all_clips`` scores every whole
    consecutive clip, the last one included, and a tracklet shorter than T as one clip."""
    from vtfpar.data.tracklets import clip_starts

    drawn = np.stack([segment_indices(20, 10, np.random.default_rng(s)) for s in range(200)])
    for j in range(10):
        assert set(drawn[:, j]) == {2 * j, 2 * j + 1}, j
    assert list(segment_indices(20, 10, None)) == [2 * j for j in range(10)]  # evaluation: each segment's middle
    assert list(clip_starts(8, 4)) == [0, 4] and list(clip_starts(9, 4)) == [0, 4]
    assert list(clip_starts(4, 4)) == [0] and list(clip_starts(3, 4)) == [0] and list(clip_starts(12, 4)) == [0, 4, 8]


@pytest.mark.parametrize("t", [3, 4, 6, 8])
def test_the_segments_split_the_tracklet_so_a_clip_repeats_no_frame(t):
    """The T segments partition the tracklet, also where its length is no multiple of T: a tracklet of at least T
    frames gives T different frames, in order, in training and in evaluation, and every frame belongs to exactly
    one of the T places of the clip (where neighbouring segments shared their boundary frame, a 7-frame tracklet
    drew some frame twice in 9 of 10 six-frame clips). Evaluation's frames are those runs were always evaluated on,
    so recorded results reproduce: each in its own segment."""
    for n in range(t, 4 * t + 3):
        middles = segment_indices(n, t, None)
        assert (np.diff(middles) > 0).all() and middles[0] >= 0 and middles[-1] < n, (n, middles)
        drawn = np.stack([segment_indices(n, t, np.random.default_rng(s)) for s in range(40 * n)])
        assert (np.diff(drawn, axis=1) > 0).all(), n
        places = [{j for j in range(t) if (drawn[:, j] == k).any()} for k in range(n)]
        assert all(len(p) == 1 for p in places), (n, places)
        for j in range(t):  # each place's frames: a run of consecutive frames, the evaluation frame one of them
            frames = sorted(set(drawn[:, j]))
            assert frames == list(range(frames[0], frames[-1] + 1)) and middles[j] in frames
    assert list(segment_indices(4, 6, None)) == [0, 0, 1, 2, 2, 3]  # shorter than T: every frame, some twice
    assert list(segment_indices(10, 6, None)) == [0, 2, 3, 5, 7, 8]  # as evaluated before the segments split
    assert list(segment_indices(61, 6, None)) == [5, 15, 25, 35, 45, 55]


def test_frames_are_normalised_with_clips_own_statistics_and_synthetic_test_clips_are_not_training_clips():
    """Every frame is normalised with the mean and std CLIP was trained with (open_clip's OpenAI constants), channel
    by channel; the synthetic test split is drawn apart from the training split of the same seed."""
    import open_clip.constants as oc

    from vtfpar.data.synthetic import CLIP_MEAN, CLIP_STD
    from vtfpar.data.tracklets import eval_clip

    np.testing.assert_array_equal(CLIP_MEAN, np.array(oc.OPENAI_DATASET_MEAN, dtype=np.float32))
    np.testing.assert_array_equal(CLIP_STD, np.array(oc.OPENAI_DATASET_STD, dtype=np.float32))
    red = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    red[:, 0] = 255
    frame = eval_clip(red, 8)[0]  # [3,8,8]
    expected = (np.array([1.0, 0.0, 0.0]) - np.array(oc.OPENAI_DATASET_MEAN)) / np.array(oc.OPENAI_DATASET_STD)
    np.testing.assert_allclose(frame.mean((1, 2)).numpy(), expected, rtol=1e-5)
    train, test, _ = build_datasets("synthetic", DataSpec("", frames=2, train_clips=20, test_clips=20),
                                    image_size=32, seed=0)
    seen = {train.raw(i).tobytes() for i in range(20)}
    assert not any(test.raw(i).tobytes() in seen for i in range(20))


def test_an_empty_split_is_refused_naming_what_decides_a_split_in_its_format():
    from benchmark.datacheck import empty_splits

    assert empty_splits("mars", {"train": 3, "test": 2}, "mars2019") is None
    assert str(empty_splits("mars", {"train": 0, "test": 2}, "release_csv")) == (
        "the train split of mars has no tracklets (train 0, test 2), so no run can use it: check the annotation file "
        "and the split's frames (bbox_train/ or bbox_test/, and info/)")
    assert str(empty_splits("duke", {"train": 0, "test": 0}, "release_csv")).startswith(
        "the train and test splits of duke have no tracklets (train 0, test 0), so no run can use it: check the "
        "annotation file and the split's frames (train/, or query/ and gallery/)")
    assert "(data.train_list, data.test_list)" in str(empty_splits("mars", {"train": 1, "test": 0}, "tracklet_csv"))
