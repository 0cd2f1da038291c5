"""Loader benchmark: the MARS tree builder against the real reader, loader rates through real
DataLoader workers, the worker arithmetic, and the faster loading paths against the default one."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.loader_bench import (
    build_mars_tree,
    check_annotation,
    load_mars,
    loader_rate,
    markdown_loader,
    measure_loader,
    variant,
    workers_needed,
)
from vtfpar.data.layouts import mars2019_labels
from vtfpar.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "mars_attributes.csv"
if not FIXTURE.is_file():
    FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "mars_attributes.csv"
needs_fixture = pytest.mark.skipif(not FIXTURE.is_file(), reason="shared/fixtures/mars_attributes.csv not found")


def _rows(n: int) -> list[dict[str, str]]:
    with open(FIXTURE, newline="") as f:
        return [row for _, row in zip(range(n), csv.DictReader(f), strict=False)]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """5 tracklets (4 train, 1 test) of 4 frames."""
    return build_mars_tree(tmp_path_factory.mktemp("mars"), FIXTURE, tracklets=5, frames_per_tracklet=4)


@needs_fixture
def test_tree_loads_with_the_real_reader(tree):
    train, test, attrs = load_mars(tree, frames=3, image_size=32)
    assert (len(train), len(test)) == (4, 1)
    rows = _rows(5)
    names = [f"{int(r['person-id']):04d}C{r['camera']}T{int(r['tracklet']):04d}" for r in rows]
    assert [t.name for t in train.tracklets + test.tracklets] == names
    expected = np.stack([mars2019_labels(r, "fixture") for r in rows])
    np.testing.assert_array_equal(np.concatenate([train.labels, test.labels]), expected)
    assert all(len(t.frames) == 4 for t in train.tracklets)
    frame = train.tracklets[0].frames[0]
    with Image.open(frame) as img:
        assert img.format == "JPEG" and img.size == (128, 256)  # W x H of a MARS crop
    assert 3_000 < frame.stat().st_size < 20_000  # the size of a real crop, not a flat or tiny image
    x, y = train[0]
    assert x.shape == (3, 3, 32, 32) and y.shape == (len(attrs),)


@needs_fixture
def test_tree_is_deterministic(tmp_path):
    a = build_mars_tree(tmp_path / "a", FIXTURE, tracklets=2, frames_per_tracklet=2, seed=3)
    b = build_mars_tree(tmp_path / "b", FIXTURE, tracklets=2, frames_per_tracklet=2, seed=3)
    c = build_mars_tree(tmp_path / "c", FIXTURE, tracklets=2, frames_per_tracklet=2, seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    assert len(files) == 4
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)


def test_missing_annotation_names_the_file(tmp_path):
    missing = tmp_path / "nowhere" / "mars_attributes.csv"
    with pytest.raises(UserError, match="MARS-Attribute annotation file not found") as err:
        build_mars_tree(tmp_path / "tree", missing, tracklets=4)
    assert str(missing) in str(err.value) and "annotation" in str(err.value)
    with pytest.raises(UserError, match="annotation file not found"):
        measure_loader(missing, frames=2, image_size=32, batch=2, workers=(0,), batches=1)
    with pytest.raises(UserError, match=f"MARS-Attribute annotation file is a folder, not a file: {tmp_path} "):
        build_mars_tree(tmp_path / "tree", tmp_path, tracklets=4)
    with pytest.raises(UserError, match="MARS-Attribute annotation file is not a regular file: /dev/null "):
        build_mars_tree(tmp_path / "tree", Path("/dev/null"), tracklets=4)


@needs_fixture
def test_an_annotation_the_reader_refuses_is_named_before_any_measurement(tmp_path):
    """``check_annotation`` reads the rows the loader measurement would take through the project's MARS reader,
    so labels out of range, a tracklet twice or rows of junk ids are the user's file and line before ``bench perf``
    measures every row, not an error about a deleted temporary copy (or a division by zero) after."""
    with open(FIXTURE, newline="", encoding="utf-8-sig") as f:
        header, *rows = list(csv.reader(f))[:40]
    check_annotation(FIXTURE, 2)

    def written(name, edit):
        body = [list(r) for r in rows]
        edit(body)
        with open(tmp_path / name, "w", newline="") as f:
            csv.writer(f).writerows([header, *body])
        return tmp_path / name

    cases = {"out_of_range": (lambda b: b[0].__setitem__(header.index("Tops.c"), "99"),
                              ":2: column 'Tops.c' has 99, out of range 0..8"),
             "twice": (lambda b: b.__setitem__(2, list(b[1])), ":4: duplicate tracklet person "),
             "junk": (lambda b: [r.__setitem__(0, "0") for r in b],
                      ": none of the training tracklets the loader measurement makes of its first ")}
    for name, (edit, said) in cases.items():
        path = written(f"{name}.csv", edit)
        with pytest.raises(UserError) as err:
            check_annotation(path, 2)
        assert str(err.value).startswith(f"{path}{said}"), err.value


def test_workers_needed():
    assert workers_needed(0.1, 16, 160.0) == 1  # exactly enough: 160 clips/s needed
    assert workers_needed(0.1, 16, 159.9) == 2
    assert workers_needed(0.05, 16, 100.0) == 4  # 320 clips/s needed
    assert workers_needed(10.0, 16, 0.5) == 4  # 1.6 clips/s at 0.5 each
    assert workers_needed(60.0, 16, 1000.0) == 1  # a slow step still needs one worker
    assert workers_needed(0.3, 3, 10.0) == 1  # 3 / 0.3 is 9.999...: float error does not add a worker
    for bad in [(0.0, 16, 10.0), (-1.0, 16, 10.0), (0.1, 16, 0.0), (0.1, 0, 10.0), (float("nan"), 16, 10.0),
                (0.1, 16, float("inf"))]:
        with pytest.raises(ValueError):
            workers_needed(*bad)


@needs_fixture
def test_loader_rate_through_real_workers(tree):
    train, _, _ = load_mars(tree, frames=2, image_size=32)
    for workers in (0, 1):
        r = loader_rate(train, batch=2, workers=workers, batches=2)
        assert r["clips"] == 4 and r["clips_per_s"] > 0 and r["frames_per_s"] == pytest.approx(2 * r["clips_per_s"])
        assert r["warmup_batches"] == 1 and r["warmup_s"] > 0


def _items(ds, n: int, seed: int = 0) -> list[torch.Tensor]:
    out = []
    for i in range(n):
        torch.manual_seed(seed + i)  # the same segments, crop and flip draws for every path
        out.append(ds[i % len(ds)][0])
    return out


@needs_fixture
@pytest.mark.parametrize("size", [64, 37])
def test_faster_paths_give_the_default_clips(tree, tmp_path, size):
    train, test, _ = load_mars(tree, frames=3, image_size=size)
    for ds in (train, test):
        reference = _items(ds, 8)
        fast = _items(variant(ds, fast_transform=True), 8)
        assert max((a - b).abs().max().item() for a, b in zip(reference, fast, strict=True)) <= 1e-5
        cache = tmp_path / f"cache-{ds.train}"
        cached = variant(ds, frame_cache=cache)
        for _ in range(2):  # cold (decode, resize, write), then warm (read back)
            assert all(torch.equal(a, b) for a, b in zip(reference, _items(cached, 8), strict=True))
        fast_cached = variant(ds, fast_transform=True, frame_cache=cache)  # its own entries: another resize
        for _ in range(2):
            assert all(torch.equal(a, b) for a, b in zip(fast, _items(fast_cached, 8), strict=True))
        assert not list(cache.glob(".*.tmp"))


@needs_fixture
def test_frame_cache_follows_the_source_file_and_keeps_counting_bad_frames(tmp_path):
    tree = build_mars_tree(tmp_path / "mars", FIXTURE, tracklets=2, frames_per_tracklet=4)  # its own: edited below
    _, test, _ = load_mars(tree, frames=4, image_size=32)
    cached = variant(test, frame_cache=tmp_path / "cache")
    assert cached.cache_frames() == 4 and cached.cache_frames() == 0
    entries = len(list((tmp_path / "cache").glob("*.npy")))
    frame = test.tracklets[0].frames[0]
    buf = io.BytesIO()
    Image.fromarray(np.full((256, 128, 3), 200, np.uint8)).save(buf, format="JPEG", quality=90)
    frame.write_bytes(buf.getvalue())  # new size and mtime: a new entry, not the stale one
    assert torch.equal(_items(test, 1)[0], _items(cached, 1)[0])
    assert len(list((tmp_path / "cache").glob("*.npy"))) == entries + 1
    frame.write_bytes(b"\xff\xd8 not a jpeg")
    assert torch.equal(_items(test, 1)[0], _items(cached, 1)[0])
    _items(cached, 1)
    assert test.bad_frames == 1 and cached.bad_frames == 2  # replaced on every visit, as without the cache


@needs_fixture
def test_measure_loader_and_markdown():
    r = measure_loader(FIXTURE, frames=2, image_size=32, batch=2, workers=(0, 1), batches=2, frames_per_tracklet=3)
    assert r["train_tracklets"] >= (1 + 2) * 2  # every timed clip of the first-epoch run a new tracklet
    assert set(r["paths"]) == {"default", "fast_transform", "frame_cache", "frame_cache_first_epoch", "handoff"}
    for entry in r["paths"].values():
        assert [row["workers"] for row in entry["rates"]] == [0, 1]
        assert all(row["clips_per_s"] > 0 for row in entry["rates"])
        assert entry["clips_per_s_per_worker"] == entry["rates"][1]["clips_per_s"]
    assert r["paths"]["default"]["per_worker_over_default"] == 1.0
    assert r["cache_bytes_per_frame"] >= 3 * 32 * 32 * 4 and 3_000 < r["jpeg_bytes_per_frame"] < 20_000
    text = markdown_loader(r, {"side_tuning": 60.0, "full_finetune": 1e-4})  # 1 clip/30 s: one worker, however slow
    assert "| default decode | 1 |" in text and "| frame cache, first epoch | 0 |" in text
    assert "| hand-off only (ceiling) | 1 |" in text
    need = workers_needed(1e-4, 2, r["paths"]["default"]["clips_per_s_per_worker"])
    assert "| side_tuning | 60000.0 | 1 | 1 | 1 | 1 |" in text and f"| full_finetune | 0.1 | {need} |" in text
    assert "workers needed" not in markdown_loader(r, None).lower()


@needs_fixture
def test_training_flips_people_left_to_right_in_every_loader_path(tree, monkeypatch):
    """The training augmentation's flip mirrors a clip horizontally (a person walking left walks right), never
    upside down: with the crop drawn at the centre and the flip drawn, a training clip is the evaluation clip
    mirrored, in the default and the fast path alike."""
    from vtfpar.data import tracklets

    train, _, _ = load_mars(tree, frames=3, image_size=32)
    clip = torch.rand(3, 3, 32, 32)
    monkeypatch.setattr(torch, "randint", lambda *a, **k: torch.tensor([tracklets.PAD, tracklets.PAD]))
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.tensor(0.0))
    expected = tracklets._normalise(clip).flip(-1)
    torch.testing.assert_close(train._augment_normalise(clip), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(variant(train, fast_transform=True)._normalise(clip * 255.0), expected, rtol=0,
                               atol=1e-5)
