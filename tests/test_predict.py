"""``bench predict`` and ``bench data export`` on real files: PNG and JPEG frame folders, MP4 videos, batches."""

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

from benchmark.export import export_synthetic
from benchmark.predict import Predictor, render_size, resolve_inputs
from tests.conftest import LEARN_FRAMES
from tests.test_cli import BENCH, ROOT
from vtfpar.data.tracklets import Tracklet, TrackletDataset, image_files, segment_indices
from vtfpar.data.video import write_video
from vtfpar.errors import UserError


@pytest.fixture(scope="module")
def trained(runs):
    """The shared run with the best test F1: trained enough that its decisions are not coin flips."""
    return max(runs.values(), key=lambda run: run[0]["metrics"]["f1"])[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    folders = export_synthetic(out, split="test", count=3, frames=FRAMES, seed=7, video=True)
    return out, folders


FRAMES = LEARN_FRAMES  # what the shared runs were trained on
EARLIER = "input,hat\nold/clip,0.500000\n"  # predictions an earlier bench predict --csv wrote


def predict(*args):
    return subprocess.run([*BENCH, "predict", *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_export_writes_frames_videos_and_labels(exported):
    out, folders = exported
    assert len(folders) == 3 and all(len(image_files(f)) == FRAMES for f in folders)
    assert len(list(out.glob("*.mp4"))) == 3
    with open(out / "labels.csv") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 4 and rows[0][0] == "tracklet" and len(rows[1]) == 1 + 23
    with Image.open(next(folders[0].iterdir())) as im:
        assert im.size == (64, 64)


def test_an_export_replaces_only_what_an_export_wrote(tmp_path, bench_proc):
    """Exporting again replaces the earlier export's frames and videos; a user's video of a tracklet's name (which
    the export would replace, or remove without --video), a file of the user's in a tracklet's folder (read as a
    frame by predict), a run folder or a folder of runs as --out are refused in one line before anything is written."""
    args = ("data", "export", "--count", 2, "--frames", 2, "--out", tmp_path)
    for video in (("--video",), ("--video",), ()):  # the last removes the videos the earlier ones wrote
        r = bench_proc(*args, *video)
        assert r.returncode == 0, r.stderr
    assert not list(tmp_path.glob("*.mp4"))
    (tmp_path / "test_0_0001.mp4").write_bytes(b"my own video")
    (tmp_path / "test_0_0000" / "myphoto.jpg").write_bytes(b"my own photo")
    runs = tmp_path / "runs"  # a folder of runs, a finished one and one stopped in its first training
    for name, marker in (("run", "result.json"), ("stopped", "checkpoint.pt")):
        (runs / name).mkdir(parents=True)
        (runs / name / marker).write_text("{}")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    r = bench_proc(*args)
    assert r.returncode == 2 and r.stderr.strip() == (
        f"error: {tmp_path / 'test_0_0000'} holds myphoto.jpg, which no export wrote: predict would read it as a "
        "frame of tracklet test_0_0000; move it away or choose another --out"), r.stderr
    (tmp_path / "test_0_0000" / "myphoto.jpg").unlink()
    for video in (("--video",), ()):
        r = bench_proc(*args, *video)
        assert r.returncode == 2 and r.stderr.strip() == (
            f"error: {tmp_path / 'test_0_0001.mp4'} is not a video of an earlier export: the export would replace "
            "or remove it; move it away or choose another --out"), r.stderr
    for run in ("run", "stopped"):
        r = bench_proc("data", "export", "--count", 1, "--out", runs / run)
        assert r.returncode == 2 and f"--out {runs / run} is a run's folder" in r.stderr, r.stderr
    r = bench_proc("data", "export", "--count", 1, "--out", runs)  # among the runs bench report reads
    assert r.returncode == 2 and r.stderr.strip() == (f"error: --out {runs} holds runs (run, ...); give the export a "
                                                      "folder of its own"), r.stderr
    del before[tmp_path / "test_0_0000" / "myphoto.jpg"]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_exports_into_one_folder_keep_each_others_labels(tmp_path, bench_proc):
    for split, count in (("test", 2), ("train", 1), ("test", 2)):
        r = bench_proc("data", "export", "--split", split, "--count", count, "--frames", 2, "--out", tmp_path)
        assert r.returncode == 0, r.stderr
    with open(tmp_path / "labels.csv") as f:
        names = [row[0] for row in csv.reader(f)][1:]
    assert sorted(names) == ["test_0_0000", "test_0_0001", "train_0_0000"]  # the repeated export: once each
    (tmp_path / "labels.csv").write_text("name,age\nx,1\n")
    r = bench_proc("data", "export", "--count", 1, "--out", tmp_path)
    assert r.returncode == 2 and "is not the labels.csv of a synthetic export" in r.stderr, r.stderr
    assert (tmp_path / "labels.csv").read_text() == "name,age\nx,1\n"
    r = bench_proc("data", "export", "--count", 10**9, "--out", tmp_path / "big")
    assert r.returncode == 2 and "at most 100,000 tracklets" in r.stderr and not (tmp_path / "big").exists()
    r = bench_proc("data", "export", "--seed", 2**31, "--out", tmp_path / "seed")
    assert r.returncode == 2 and "--seed must be >= 0 and < 2147483648" in r.stderr and not (tmp_path / "seed").exists()


def test_an_export_too_long_for_the_memory_names_its_frames_not_a_batch(tmp_path):
    r = subprocess.run([*BENCH, "data", "export", "--count", "2", "--frames", "100000", "--out", str(tmp_path / "x")],
                       capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={**os.environ, "VTFPAR_MEMORY_LIMIT": "2G"})
    assert r.returncode == 2 and r.stderr == ("error: out of memory rendering tracklet 1 of 2 (100000 frames): "
                                              "labels.csv is not written; lower --frames\n"), r.stderr
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
    for frames in ("100001", "99999999999999999999"):  # past what numpy can shape, too
        r = subprocess.run([*BENCH, "data", "export", "--frames", frames, "--out", str(tmp_path / "y")],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert r.returncode == 2 and r.stderr == (f"error: --frames {frames}: a tracklet of an export has at most "
                                                  "100,000 frames\n"), r.stderr
    assert not (tmp_path / "y").exists()


def test_a_shorter_export_over_a_longer_one_leaves_no_frames_of_it(tmp_path, bench_proc):
    for frames, video in ((5, ["--video"]), (2, [])):
        r = bench_proc("data", "export", "--count", 1, "--frames", frames, *video, "--out", tmp_path)
        assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "test_0_0000").iterdir()) == ["frame_000.png", "frame_001.png"]
    assert not (tmp_path / "test_0_0000.mp4").exists()  # the 5-frame video would be predicted as this tracklet


def test_png_frames_predict_exactly_what_evaluation_computes(trained, exported):
    _, folders = exported
    predictor = Predictor(trained, "cpu")
    got = predictor.predict(folders[0]).probabilities
    data = TrackletDataset([Tracklet("t", 0, 0, image_files(folders[0]), np.zeros(23, np.float32))],
                           predictor.attributes, FRAMES, 64, train=False)
    model = predictor.model
    with model.deployed(), torch.inference_mode():
        expected = torch.sigmoid(model(data[0][0].unsqueeze(0)))[0].numpy()
    assert np.abs(got - expected).max() <= 1e-5


def test_a_batch_size_of_its_own_changes_how_clips_are_batched_not_what_is_predicted(trained, tmp_path, monkeypatch,
                                                                                    bench_proc):
    """``--batch-size`` (``Predictor(batch_size=)``): an input's clips go through the model that many at a time, and
    its probabilities are those of the run's own batch (each clip is scored on its own)."""
    import benchmark.predict as predict_module

    (folder,) = export_synthetic(tmp_path, split="test", count=1, frames=3 * FRAMES + 1, seed=7)
    default = Predictor(trained, "cpu")
    default.all_clips = True  # every consecutive clip of the folder, as a run of data.eval_all_clips predicts
    expected = default.predict(folder)
    assert expected.clips == 3 and default.batch >= 3  # one batch by default
    batches = []

    def counted(model, frames, autocast):  # the real inference, with the batches it gets seen
        batches.append(frames.shape[0])
        return inference(model, frames, autocast)

    inference = predict_module.inference
    monkeypatch.setattr(predict_module, "inference", counted)
    small = Predictor(trained, "cpu", batch_size=2)
    small.all_clips = True
    got = small.predict(folder)
    assert batches == [2, 1], batches
    assert got.clips == expected.clips and np.abs(got.probabilities - expected.probabilities).max() <= 1e-6
    r = bench_proc("predict", trained, folder, "--batch-size", "0")
    assert r.returncode == 2 and r.stderr == "error: --batch-size must be 1 to 1000000 (clips at once), got 0\n", \
        r.stderr


def test_jpeg_frames_and_video_agree_with_png(trained, exported, tmp_path, capsys):
    """A clip's JPEG frames and its MPEG-4 video decode to its PNG frames up to compression (each frame, 8x8
    block means, within 5 of 255: a colour swap, flip or crop is far more), and predict what its PNG frames
    predict: probabilities moved by about what compression moves them, and the same label wherever the PNG
    prediction is decided (0.1 or more from the threshold; the tiny model is unsure of many attributes, whose
    labels compression may flip)."""
    out, folders = exported
    predictor = Predictor(trained, "cpu")
    moved = {"jpeg": [], "video": []}
    for folder in folders:
        jpeg = tmp_path / folder.name
        jpeg.mkdir()
        for f in image_files(folder):
            Image.open(f).convert("RGB").save(jpeg / f"{f.stem}.jpg", quality=90)
        png_frames = predictor.decoded(folder)[2]
        png = predictor.predict(folder).probabilities
        decided = np.abs(png - 0.5) >= 0.1
        for kind, path in (("jpeg", jpeg), ("video", out / f"{folder.name}.mp4")):
            frames = predictor.decoded(path)[2]
            assert sorted(frames) == sorted(png_frames), kind
            for i, frame in frames.items():
                blocks = [torch.nn.functional.avg_pool2d(f.float()[None], 8) for f in (frame, png_frames[i])]
                assert (blocks[0] - blocks[1]).abs().mean() <= 5, (kind, folder.name, i)
            got = predictor.predict(path).probabilities
            assert ((got >= 0.5) == (png >= 0.5))[decided].all(), (kind, folder.name, png, got)
            moved[kind].append(float(np.abs(got - png).mean()))
    with capsys.disabled():
        print(f"\nmean probability change from PNG frames: JPEG q90 {np.round(moved['jpeg'], 4).tolist()}, "
              f"MPEG-4 video {np.round(moved['video'], 4).tolist()}")
    assert max(moved["jpeg"]) <= 0.03 and max(moved["video"]) <= 0.05, moved


def test_batch_mode_predicts_every_tracklet_and_reports_a_corrupt_video(trained, exported, tmp_path, bench_proc):
    out, folders = exported
    batch = tmp_path / "batch"
    batch.mkdir()
    for p in [*folders[:2], out / f"{folders[2].name}.mp4"]:  # 3 tracklets: 2 frame folders and a video
        (batch / p.name).symlink_to(p)
    (batch / "broken.mp4").write_bytes((out / next(out.glob("*.mp4")).name).read_bytes()[:300])
    r = bench_proc("predict", trained, batch, "--csv", tmp_path / "out.csv")
    assert r.returncode == 1, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "broken.mp4" in errors[0] and "Traceback" not in r.stderr
    with open(tmp_path / "out.csv") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 1 + 3 and len(rows[1]) == 1 + 23


def test_an_input_named_in_bytes_that_are_not_utf8_is_written_as_named(trained, exported, tmp_path):
    """A folder named in another system's encoding (Latin-1 here): the CSV keeps its name byte for byte, and the
    contact sheet shows it with a replacement mark, not a traceback."""
    _, folders = exported
    batch = tmp_path / "batch"
    odd = batch / os.fsdecode(b"caf\xe9")
    shutil.copytree(folders[0], odd)
    shutil.copytree(folders[1], batch / "plain")
    r = subprocess.run([*BENCH, "predict", *map(str, (trained, batch, "--csv", tmp_path / "p.csv", "--render",
                                                      tmp_path / "s.png"))], capture_output=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert b"\xe9" in r.stdout  # the table names it as the file system does
    rows = (tmp_path / "p.csv").read_bytes().splitlines()
    assert [row.split(b",")[0] for row in rows[1:]] == [os.fsencode(odd), os.fsencode(batch / "plain")]
    assert sorted(p.name for p in tmp_path.glob("s_*.png")) == [f"s_{odd.name}.png", "s_plain.png"]


@pytest.mark.parametrize("signal_raises,line", [
    (KeyboardInterrupt, "stopped (interrupted)"), ("Terminated", "stopped (terminated)")])
def test_a_batch_stopped_by_a_signal_says_how_far_it_got_and_that_the_csv_is_not_written(
        trained, exported, tmp_path, bench_proc, monkeypatch, signal_raises, line):
    """What a signal raises in the main thread (Ctrl-C: KeyboardInterrupt; SIGTERM: Terminated), raised as the
    third input starts: the predictions so far were only in memory, which the line says."""
    from benchmark.predict import Predictor
    from benchmark.signals import Terminated

    raised = Terminated if signal_raises == "Terminated" else signal_raises
    out, folders = exported
    real, calls = Predictor.predict, []

    def predict_until_the_signal(self, path):
        calls.append(path)
        if len(calls) == 3:
            raise raised()
        return real(self, path)

    monkeypatch.setattr(Predictor, "predict", predict_until_the_signal)
    r = bench_proc("predict", trained, out, "--csv", tmp_path / "out.csv")
    assert r.returncode == (143 if raised is Terminated else 130), r.stderr
    assert r.stderr.strip() == f"{line} after 2 of {2 * len(folders)} inputs; --csv {tmp_path / 'out.csv'} not " \
        "written: rerun the same command to predict them all"
    assert not (tmp_path / "out.csv").exists()


def test_render_and_json(trained, exported, tmp_path):
    _, folders = exported
    r = predict(trained, folders[1], "--json", "--render", tmp_path / "sheet.png")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["frames_used"] == list(range(FRAMES)) and len(out["probabilities"]) == 23
    assert out["frame_files"] == [f.name for f in image_files(folders[1])]
    motion = next(g for g in out["groups"] if g["group"] == "motion")
    assert motion["kind"] == "multi-valued" and motion["class"] in ("standing", "walking", "running")
    hair = next(g for g in out["groups"] if g["group"] == "hair")
    assert hair["kind"] == "binary" and hair["attribute"] == "hair: long"  # says which value "yes" means
    with Image.open(tmp_path / "sheet.png") as im:
        assert im.size == render_size(FRAMES)


def test_a_batch_folder_is_a_batch_whatever_it_holds(trained, exported, tmp_path, bench_here):
    """The shape of predict's output follows the command, not what a folder happens to hold: a batch folder of one
    video gives a JSON list and a contact sheet named after its input, as one of two does, and its input's failure
    is a batch's (a line, exit code 1), so a script reads every batch one way."""
    out, folders = exported
    video = next(out.glob("*.mp4"))
    batch = tmp_path / "batch"
    batch.mkdir()
    shutil.copy(video, batch / video.name)
    code, alone, err = bench_here("predict", trained, batch / video.name, "--json", "--render", tmp_path / "a.png")
    assert code == 0 and isinstance(json.loads(alone), dict) and (tmp_path / "a.png").is_file(), err
    code, listed, err = bench_here("predict", trained, batch, "--json", "--render", tmp_path / "b.png")
    assert code == 0, err
    assert json.loads(listed) == [json.loads(alone)]
    assert not (tmp_path / "b.png").exists() and (tmp_path / f"b_{video.name.replace('.', '_')}.png").is_file()
    (batch / video.name).write_bytes(b"not a video")
    code, listed, err = bench_here("predict", trained, batch, "--json")
    assert code == 1 and json.loads(listed) == [], err
    assert err.splitlines()[0].startswith(f"error: {batch / video.name}: ") and err.splitlines()[-1] == \
        "1 of 1 inputs failed", err


def test_render_writes_the_format_its_suffix_names(trained, exported, tmp_path, bench_here):
    _, folders = exported
    for name, kind in (("sheet.jpg", "JPEG"), ("sheet.JPEG", "JPEG"), ("sheet", "PNG")):
        code, _, err = bench_here("predict", trained, folders[0], "--render", tmp_path / name)
        assert code == 0, err
        written = tmp_path / (name if "." in name else f"{name}.png")
        with Image.open(written) as im:
            assert im.format == kind and im.size == render_size(FRAMES)
    for name, head in (("sheet.svg", b"<?xml"), ("sheet.pdf", b"%PDF")):
        code, _, err = bench_here("predict", trained, folders[0], "--render", tmp_path / name)
        assert code == 0 and (tmp_path / name).read_bytes().startswith(head), err


def test_a_contact_sheet_replaces_only_an_earlier_contact_sheet(trained, exported, tmp_path, bench_here):
    """Each format carries bench's mark, so predicting again into the same sheet replaces it, while a file of
    the user's of that name (a photo, a paper) is refused before any prediction and left as it was; in batch
    mode too, for the sheet named after each input."""
    _, folders = exported
    for name in ("sheet.png", "sheet.jpg", "sheet.svg", "sheet.pdf"):
        for _ in range(2):  # the second replaces the first
            code, _, err = bench_here("predict", trained, folders[0], "--render", tmp_path / name)
            assert code == 0, err
    photo = tmp_path / "holiday.png"
    Image.new("RGB", (8, 8), "red").save(photo)
    (tmp_path / "thesis.pdf").write_bytes(b"%PDF-1.4 my thesis")
    (tmp_path / f"s_{folders[1].name}.png").write_bytes(photo.read_bytes())  # batch: the sheet of folders[1]
    mine = {p: p.read_bytes() for p in tmp_path.iterdir() if not p.name.startswith("sheet")}
    for args, target in (((folders[0], "--render", photo), photo),
                         ((folders[0], "--render", tmp_path / "thesis.pdf"), tmp_path / "thesis.pdf"),
                         ((folders[0].parent, "--render", tmp_path / "s.png"), tmp_path / f"s_{folders[1].name}.png")):
        code, _, err = bench_here("predict", trained, *args)
        assert code == 2, err
        (line,) = [ln for ln in err.splitlines() if ln.strip()]
        assert line == (f"error: --render {target} exists and is not a contact sheet of bench predict: it would be "
                        "replaced; move it away or choose another --render"), line
    assert {p: p.read_bytes() for p in mine} == mine
    assert not (tmp_path / f"s_{folders[0].name}.png").exists()  # refused before any prediction


def test_errors_are_one_line_and_write_nothing(trained, exported, tmp_path, bench_here):
    _, folders = exported
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "notes.txt").write_text("x")
    silent = tmp_path / "silent.mp4"
    write_video(silent, np.zeros((0, 64, 64, 3), np.uint8))
    video = folders[0].with_suffix(".mp4")
    kept = [video, *folders[0].iterdir(), *(p for p in trained.iterdir() if p.is_file())]  # inputs and the run
    before = {p: p.read_bytes() for p in kept}
    cases = [
        ((tmp_path, folders[0]), "not found: is"),
        ((folders[0], trained), f"is {folders[0]} a finished run directory? (the run comes first: bench predict "
                                f"{trained} {folders[0]} ...)"),  # the run named, not the inputs' lack of frames
        ((folders[0], folders[1], "--csv", empty), "not found: is"),  # the run before the outputs, too
        ((trained, tmp_path / "missing"), "no such file or folder"),
        ((trained, empty), "no frames (.jpg, .jpeg, .png, .webp), videos (.mp4, .avi, .mkv, .webm, .mov, .m4v, "
                           ".mpg, .mpeg, .mts, .m2ts, .3gp, .flv, .wmv) or folders of frames in it"),
        ((trained, tmp_path / "notes.txt"), "is not supported"),
        ((trained, next(folders[0].iterdir())), "a single image is not supported"),
        ((trained, silent), "silent.mp4"),
        ((trained, folders[0], "--render", tmp_path / "sheet.bmp"), "give a file ending in .png, .jpg, .jpeg, .svg"),
        ((trained, folders[0], "--render", empty), "--render " + str(empty) + " is a folder; give a file name such as"),
        ((trained, folders[0], "--render", tmp_path / "notes.txt" / "sheet.png"),
         f"--render {tmp_path / 'notes.txt' / 'sheet.png'}: {tmp_path / 'notes.txt'} is a file, not a folder"),
        ((trained, folders[0], "--csv", empty), "--csv " + str(empty) + " is a folder"),
        ((trained, folders[0], "--csv", tmp_path / "notes.txt" / "p.csv"), "is a file, not a folder"),
        ((trained, folders[0], "--render", tmp_path / "never.png", "--csv", tmp_path / "never.png"),
         "is also --render's contact sheet"),
        ((trained, folders[0], "--csv", tmp_path / "never.png"), "a .png file name; give the predictions a file "
                                                                 "ending in .csv"),
        ((trained, video, "--csv", video), f"--csv {video} is the input {video}: it would be overwritten"),
        ((trained, folders[0].parent, "--render", folders[0] / "s.png"),  # batch: a sheet per input, beside it
         f"is inside the input frame folder {folders[0]}"),
        ((trained, folders[0], "--render", folders[0] / "sheet.png"),
         f"--render {folders[0] / 'sheet.png'} is inside the input frame folder {folders[0]}: it would be read as"),
        ((trained, folders[0], "--csv", folders[0] / "frame_000.png"), "is inside the input frame folder"),
        ((trained, folders[0], "--csv", trained / "model.pt"), f"--csv {trained / 'model.pt'} is inside the run"),
        ((trained, folders[0], "--render", trained / "sheet.png"), "is inside the run folder"),
        ((trained, folders[0], "--device", "cuda:99"), "error: --device"),  # named as the option, not run.device
    ]
    for args, fragment in cases:
        code, _, err = bench_here("predict", *args[:2], "--csv", tmp_path / "never.csv", *args[2:])  # last --csv wins
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert code == 2 and len(lines) == 1 and fragment in lines[0], (args, err)
        assert "Traceback" not in err
    assert not (tmp_path / "never.csv").exists() and not (tmp_path / "never.png").exists()
    assert (tmp_path / "notes.txt").read_text() == "x"
    assert {p: p.read_bytes() for p in kept} == before  # as they were


def test_a_csv_that_would_replace_what_predict_did_not_write_is_refused(trained, exported, tmp_path, bench_here):
    """--csv into an export's labels.csv (the true labels) or onto a video: one line, nothing predicted or
    replaced. An earlier predictions CSV is replaced, as asked."""
    root, folders = exported
    labels = root / "labels.csv"
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"a video")
    before = labels.read_bytes()
    for target, said in ((labels, f"--csv {labels} exists and is not a predictions CSV of bench predict (its first "
                                  "column is not 'input'): it would be replaced; move it away or choose another --csv"),
                         (video, f"--csv {video}: a .mp4 file name; give the predictions a file ending in .csv")):
        code, _, err = bench_here("predict", trained, folders[0], "--csv", target)
        assert code == 2 and " ".join(err.split()) == f"error: {said}", err
    assert labels.read_bytes() == before and video.read_bytes() == b"a video"
    (tmp_path / "p.csv").write_text(EARLIER)
    code, _, err = bench_here("predict", trained, folders[0], "--csv", tmp_path / "p.csv")
    assert code == 0 and (tmp_path / "p.csv").read_text() != EARLIER, err


def test_a_csv_to_standard_output_is_written_into_it_whatever_it_holds(trained, exported, tmp_path):
    """--csv /dev/stdout writes into whatever standard output is (here a log the shell appends to): nothing there
    is replaced, so nothing is refused."""
    _, folders = exported
    (tmp_path / "log.txt").write_text("earlier lines\n")
    with open(tmp_path / "log.txt", "a") as out:
        r = subprocess.run([*BENCH, "predict", str(trained), str(folders[0]), "--csv", "/dev/stdout"], stdout=out,
                           stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "log.txt").read_text().startswith("earlier lines\ninput,"), r.stderr


def test_a_bad_render_target_leaves_an_earlier_csv_as_it_was(trained, exported, tmp_path, bench_here):
    _, folders = exported
    (tmp_path / "p.csv").write_text(EARLIER)
    (tmp_path / "afile").write_text("x")
    code, _, err = bench_here("predict", trained, folders[0], "--csv", tmp_path / "p.csv", "--render",
                              tmp_path / "afile" / "sheet.png")
    assert code == 2 and "--render" in err and "is a file, not a folder" in err, err
    assert (tmp_path / "p.csv").read_text() == EARLIER


def test_a_batch_contact_sheet_that_cannot_be_written_leaves_an_earlier_csv_as_it_was(trained, exported, tmp_path,
                                                                                       bench_here):
    _, folders = exported
    (tmp_path / "p.csv").write_text(EARLIER)
    (tmp_path / f"s_{folders[1].name}.png").mkdir()  # a folder where the second input's sheet would go
    code, _, err = bench_here("predict", trained, folders[0], folders[1], "--csv", tmp_path / "p.csv", "--render",
                              tmp_path / "s.png")
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1 and f"s_{folders[1].name}.png is a folder" in lines[0], err
    assert (tmp_path / "p.csv").read_text() == EARLIER
    assert not (tmp_path / f"s_{folders[0].name}.png").exists()


def test_batch_contact_sheets_of_inputs_with_one_name_do_not_overwrite_each_other(trained, exported, tmp_path,
                                                                                 bench_here):
    out, folders = exported
    video = out / f"{folders[0].name}.mp4"
    batch = tmp_path / "batch"
    for sub in ("a", "b"):
        (batch / sub).mkdir(parents=True)
        (batch / sub / "clip.mp4").symlink_to(video)
    code, stdout, err = bench_here("predict", trained, batch / "a", batch / "b", "--render", tmp_path / "s.png")
    assert code == 0, err
    sheets = sorted(p.name for p in tmp_path.glob("s_*.png"))
    assert sheets == ["s_a_clip_mp4.png", "s_b_clip_mp4.png"]
    wrote = next(ln for ln in stdout.splitlines() if ln.startswith("wrote "))
    assert all(str(tmp_path / s) in wrote for s in sheets), wrote


def test_render_targets_are_distinct_and_as_short_as_the_inputs_allow(tmp_path):
    from benchmark.predict import render_targets

    inputs = [tmp_path / "x" / "a" / "clip.mp4", tmp_path / "y" / "a" / "clip.mp4", tmp_path / "x" / "b.mp4",
              tmp_path / "x" / "b.mp4"]
    names = [t.name for t in render_targets(tmp_path / "r" / "sheet.svg", inputs).values()]
    assert names[:3] == ["sheet_x_a_clip_mp4.svg", "sheet_y_a_clip_mp4.svg", "sheet_b_mp4.svg"]
    dots = render_targets(tmp_path / "sheet.png", [tmp_path / "a.b" / "c.mp4", tmp_path / "a_b" / "c.mp4"])
    assert [t.name for t in dots.values()] == ["sheet_c_mp4_1.png", "sheet_c_mp4_2.png"]
    taken = render_targets(tmp_path / "sheet.png", [tmp_path / "a.b" / "c.mp4", tmp_path / "a_b" / "c.mp4",
                                                    tmp_path / "c_mp4_1"])  # a folder named like a number
    assert len(set(taken.values())) == 3 and taken[tmp_path / "c_mp4_1"].name == "sheet_c_mp4_1.png"


def test_resolve_inputs_reads_batch_folders(exported):
    with pytest.raises(UserError, match="no such file"):
        resolve_inputs([ROOT / "no-such-input"])
    out, folders = exported
    # each tracklet once, where it is first named: a folder named again, or inside a batch named too
    named = resolve_inputs([folders[1], out, Path(f"{folders[1]}/"), folders[1].with_suffix(".mp4")])
    assert named[0] == folders[1] and len(named) == len(set(named)) == 2 * len(folders)  # frames and videos


def test_a_folder_of_several_mars_tracklets_is_said_to_be_predicted_as_one(tmp_path):
    """MARS keeps a person's tracklets (cameras) in one folder: pointed at it, predict would take frames across them
    as one sequence, so it says so; one tracklet's frames, or frames named otherwise, are predicted without a word."""
    person = tmp_path / "0002"
    person.mkdir()
    for name in ("0002C2T0019F001", "0002C2T0019F002", "0002C5T0021F001", "0002C5T0021F002"):
        Image.new("RGB", (8, 16)).save(person / f"{name}.jpg")
    with pytest.warns(UserWarning) as said:
        assert resolve_inputs([person]) == [person]
    assert [str(w.message) for w in said] == [
        f"{person}: its frames are of 2 MARS tracklets (0002C2T0019, 0002C5T0021), which are predicted as one "
        "sequence (MARS keeps each person's tracklets in one folder); give a folder of one tracklet's frames"]
    for f in person.glob("0002C5*"):
        f.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_inputs([person]) == [person]


def test_a_batch_folder_skips_hidden_entries_and_says_what_it_does_not_predict(exported, tmp_path):
    """A person's frames with a hidden ``.thumbs/`` beside them are that person, not a batch of the thumbnails;
    ``._clip.mp4`` (a macOS copy's metadata) is no input; frames or other formats beside videos are said, not
    silently dropped."""
    _, folders = exported
    person = tmp_path / "person"
    (person / ".thumbs").mkdir(parents=True)
    for f in image_files(folders[0]):
        (person / f.name).write_bytes(f.read_bytes())
    (person / ".thumbs" / "t.png").write_bytes(image_files(folders[1])[0].read_bytes())
    (person / "._clip.mp4").write_bytes(b"\0" * 64)
    assert resolve_inputs([person]) == [person]
    batch = tmp_path / "batch"
    (batch / "bmp").mkdir(parents=True)
    Image.new("RGB", (8, 16)).save(batch / "bmp" / "0001.bmp")
    (batch / "clip.mp4").write_bytes(folders[0].with_suffix(".mp4").read_bytes())
    (batch / "frame_000.png").write_bytes(image_files(folders[1])[0].read_bytes())
    with pytest.warns(UserWarning) as said:
        assert resolve_inputs([batch]) == [batch / "clip.mp4"]
    assert [str(w.message) for w in said] == [
        f"{batch}: not predicted: its 1 frame (frame_000.png), as a folder holding videos or frame folders is a "
        "batch of those; bmp/, no folder of frames (.jpg, .jpeg, .png, .webp)"]
    (batch / "frame_000.png").unlink()
    (batch / "bmp" / "0001.bmp").rename(batch / "labels.csv")  # a file of another kind beside the inputs: no warning
    (batch / "bmp").rmdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_inputs([batch]) == [batch / "clip.mp4"]


def test_images_in_a_format_frames_are_not_read_from_are_named_not_dropped_silently(exported, tmp_path):
    """A .bmp among a person's .png frames is left out with a warning naming it; a folder of .bmp frames alone is
    an error that names them and the fix. WebP frames are read (torchvision decodes them) as their PNG twins, and a
    batch takes the video formats of cameras and phones (.m4v here) besides .mp4."""
    from vtfpar.data.video import read_images

    _, folders = exported
    person, bmp, webp, batch = (tmp_path / n for n in ("person", "bmp", "webp", "batch"))
    for folder in (person, bmp, webp, batch):
        folder.mkdir()
    files = image_files(folders[0])
    for f in files:
        (person / f.name).write_bytes(f.read_bytes())
        Image.open(f).save(bmp / f"{f.stem}.bmp")
        Image.open(f).save(webp / f"{f.stem}.webp", lossless=True)
    Image.open(files[0]).save(person / "extra.bmp")
    with pytest.warns(UserWarning) as said:
        assert resolve_inputs([person]) == [person]
    assert [str(w.message) for w in said] == [
        f"{person}: not among its frames: extra.bmp, in a format frames are not read from (.jpg, .jpeg, .png, .webp "
        "are): convert them to PNG or JPEG"]
    with pytest.raises(UserError, match=rf"^{bmp}: no frames .* or folders of frames in it; it holds frame_000.bmp, "
                                        r"frame_001.bmp, frame_002.bmp, in a format frames are not read from \(.jpg, "
                                        r".jpeg, .png, .webp are\): convert them to PNG or JPEG$"):
        resolve_inputs([bmp])
    assert all(torch.equal(a, b) for a, b in zip(read_images(image_files(webp)), read_images(files), strict=True))
    (batch / "phone.m4v").write_bytes(folders[0].with_suffix(".mp4").read_bytes())
    assert resolve_inputs([batch]) == [batch / "phone.m4v"]


def test_frames_named_without_zero_padding_are_read_in_the_order_they_were_taken(trained, exported, tmp_path):
    """``2.png`` comes before ``10.png``: text order would put frame 10 second and scramble the motion."""
    _, folders = exported
    frames = image_files(folders[0])
    unpadded = tmp_path / "unpadded"
    unpadded.mkdir()
    for i in range(16):  # enough that a clip of 3 or 4 frames samples one numbered 10 or more
        (unpadded / f"{i}.png").write_bytes(frames[i % len(frames)].read_bytes())
    assert [f.name for f in image_files(unpadded)] == [f"{i}.png" for i in range(16)]
    r = predict(trained, unpadded, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["frame_files"] == [f"{i}.png" for i in out["frames_used"]] and out["frames_used"][-1] >= 10


def test_an_input_shorter_than_a_clip_is_said_and_predicted_from_its_frames_repeated(trained, exported, tmp_path):
    """Evaluation repeats a short tracklet's frames to make a clip; predict does the same and says so, since a
    single still gives the temporal side no motion to read. An input of a clip's length or more is not warned of."""
    _, folders = exported
    predictor = Predictor(trained, "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert predictor.predict(folders[0]).frame_indices == list(range(FRAMES))
    for n in (1, 2):
        short = tmp_path / f"short{n}"
        short.mkdir()
        for f in image_files(folders[0])[:n]:
            shutil.copy(f, short / f.name)
        said = "it is" if n == 1 else "they are"
        with pytest.warns(UserWarning, match=rf"^{short}: {n} frames?, fewer than the {FRAMES} a clip of this run "
                                             rf"takes: {said} repeated to make one, as evaluation does with a short "
                                             r"tracklet \(frames_used says which\)$"):
            prediction = predictor.predict(short)
        assert prediction.frame_indices == segment_indices(n, FRAMES, None).tolist()
        assert sorted(set(prediction.frame_indices)) == list(range(n))


def test_a_frame_that_does_not_decode_is_replaced_by_its_nearest_neighbour_as_evaluation_does(trained, exported,
                                                                                               tmp_path):
    """Evaluation replaces an unreadable frame by its nearest readable one (the earlier of two as near); predict
    does the same, with a warning naming the file, and predicts what a folder holding that neighbour in its place
    gives. A folder none of whose frames decode is one line."""
    _, folders = exported
    frames = image_files(folders[0])
    damaged, stand_in = tmp_path / "damaged", tmp_path / "stand_in"
    for folder in (damaged, stand_in):
        shutil.copytree(folders[0], folder)
    (damaged / frames[1].name).write_bytes(b"not a png")
    shutil.copy(frames[0], stand_in / frames[1].name)
    predictor = Predictor(trained, "cpu")
    with pytest.warns(UserWarning, match=rf"^{damaged}: {frames[1].name} cannot be decoded, so the nearest frame that "
                                         rf"can is used instead, as evaluation does \({damaged / frames[1].name}: "
                                         r"cannot decode this image \("):
        prediction = predictor.predict(damaged)
    assert prediction.frame_indices == [0, 0, *range(2, FRAMES)]
    assert prediction.frame_files == [frames[0].name, frames[0].name, *(f.name for f in frames[2:])]
    np.testing.assert_array_equal(prediction.probabilities, predictor.predict(stand_in).probabilities)
    for f in frames:
        (damaged / f.name).write_bytes(b"not a png")
    with pytest.raises(UserError, match=rf"^{damaged}: none of its {FRAMES} frames can be decoded \("):
        predictor.predict(damaged)


def test_a_video_cut_short_is_said_not_used_silently(tmp_path):
    """A Matroska video whose end is lost (a copy cut short) still decodes what is left; fewer frames than its
    header declares is said. A whole video is not. (An MP4 written index last loses it when cut short and is an
    error: ``test_batch_mode_predicts_every_tracklet_and_reports_a_corrupt_video``.)"""
    from vtfpar.data.video import read_video

    rng = np.random.default_rng(0)
    whole = tmp_path / "whole.mkv"
    write_video(whole, rng.integers(0, 256, (60, 32, 16, 3), dtype=np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_video(whole)[0]) == 60
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[:len(whole.read_bytes()) // 2])
    with pytest.warns(UserWarning, match=rf"{cut}: \d+ frames decode, up to \d\.\d\d s of the 6\.00 s its header "
                                         "declares: the file is cut short or damaged"):
        indices, frames = read_video(cut)
    assert 0 < len(indices) < 57 and len(frames) == len(indices)


def _write_mpeg4(path, frames: np.ndarray, pts_ms: list[int] | None = None, **options) -> None:
    """uint8 RGB frames [N,H,W,3] as an MPEG-4 Part 2 stream in an MP4 or Matroska file, with the muxer's
    ``options`` (``movflags=faststart``: the index first, as web and phone exports write it) and, optionally, a
    presentation time of its own per frame in milliseconds (a variable frame rate)."""
    from fractions import Fraction

    import av

    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt, stream.options = "yuv420p", {"qscale": "2"}
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_an_mp4_with_its_index_first_cut_short_gives_the_frames_that_decode(tmp_path):
    """An MP4 written index first (``faststart``) keeps its index when its end is lost: FFmpeg decodes its first
    frames and then fails. Those frames are used, with the warning a Matroska file cut short gets (the failure
    threw them away, and the video was refused as not decodable)."""
    from vtfpar.data.video import read_video

    clip = np.random.default_rng(2).integers(0, 256, (60, 32, 16, 3), dtype=np.uint8)
    whole = tmp_path / "whole.mp4"
    _write_mpeg4(whole, clip, movflags="faststart")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[:len(whole.read_bytes()) * 3 // 4])
    with pytest.warns(UserWarning, match=rf"^{cut}: (\d+) frames decode of the 60 its header declares \(\w+Error\): "
                                         "the file is cut short or damaged") as said:
        indices, frames = read_video(cut)
    assert 10 < len(indices) < 60 and str(len(indices)) in str(said[0].message)
    assert torch.equal(frames, read_video(whole, lambda n: indices)[1])  # the same frames as in the whole file


def test_a_whole_video_of_variable_frame_rate_is_not_said_to_be_cut_short(tmp_path):
    """Matroska declares a duration, not a frame count: a whole file of 5 frames at 30 frames/s and 7 at 4 (a
    recorder that slows down) has fewer frames than its duration times its average rate, and is whole."""
    from vtfpar.data.video import read_video

    path = tmp_path / "vfr.mkv"
    clip = np.random.default_rng(3).integers(0, 256, (12, 32, 16, 3), dtype=np.uint8)
    _write_mpeg4(path, clip, pts_ms=[0, 33, 67, 100, 133, 400, 650, 900, 1150, 1400, 1650, 1900])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_video(path)[0] == list(range(12))
        for suffix in (".mkv", ".avi"):  # nor a whole file of one frame, which ends where its duration does
            write_video(one := tmp_path / f"one{suffix}", clip[:1])
            assert read_video(one)[0] == [0]


def test_a_video_that_shrinks_between_its_two_readings_is_one_line(tmp_path):
    """A file still being copied can decode fewer frames on the second pass (the frames chosen from the count that
    decoded) than on the first: one line naming it, not a KeyError."""
    from vtfpar.data.video import read_video

    path = tmp_path / "copying.mkv"
    write_video(path, np.random.default_rng(5).integers(0, 256, (60, 32, 16, 3), dtype=np.uint8))
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) * 3 // 4])  # cut short: a second pass picks the frames that decoded
    asked = []

    def last_frames(n):
        if asked and n not in asked:  # between the passes the copy shrinks
            path.write_bytes(whole[:len(whole) // 4])
        asked.append(n)
        return [n - 2, n - 1]

    with pytest.warns(UserWarning, match="cut short"), pytest.raises(UserError, match=re.escape(
            f"{path}: fewer frames decode on a second reading than on the first: is the file still being written or "
            "copied? give it once it is whole")):
        read_video(path, last_frames)


def test_a_video_a_phone_stored_sideways_is_read_upright_as_a_player_shows_it(tmp_path):
    """A phone held upright stores its frames sideways and puts a display matrix in the MP4's track header ("turn
    90 degrees clockwise"): players show the frames turned, and so are they read (as stored, a 64x32 person was a
    32x64 one lying down). A matrix may mirror too (a flip, a transpose): the frames are read as shown."""
    import struct

    from vtfpar.data.video import read_video

    upright = np.zeros((6, 64, 32, 3), np.uint8)  # a red head, a blue body, dark legs, a green left arm
    upright[:, :16], upright[:, 16:40], upright[:, 40:], upright[:, 16:40, :8] = (220, 30, 30), (30, 30, 220), 40, \
        (30, 200, 30)
    plain = tmp_path / "plain.mp4"
    _write_mpeg4(plain, upright)
    _, reference = read_video(plain)
    one = 1 << 16
    cases = {  # the matrix's a, b, c, d, and how the frames shown that way are stored
        "turned 90": ((0, one, -one, 0), lambda f: np.rot90(f, 1, axes=(1, 2))),  # counter-clockwise: 32 x 64
        "turned 270": ((0, -one, one, 0), lambda f: np.rot90(f, -1, axes=(1, 2))),
        "turned 180": ((-one, 0, 0, -one), lambda f: f[:, ::-1, ::-1]),
        "mirrored": ((-one, 0, 0, one), lambda f: f[:, :, ::-1]),
        "upside down": ((one, 0, 0, -one), lambda f: f[:, ::-1]),
        "transposed": ((0, one, one, 0), lambda f: f.transpose(0, 2, 1, 3)),
    }
    for case, ((a, b, c, d), store) in cases.items():
        path = tmp_path / f"{case}.mp4"
        _write_mpeg4(path, np.ascontiguousarray(store(upright)))
        data = bytearray(path.read_bytes())
        matrix = data.find(b"tkhd") + 4 + 4 + 20 + 8 + 8  # version 0: flags, times, track id, reserved, layer..volume
        data[matrix:matrix + 36] = struct.pack(">9i", a, b, 0, c, d, 0, 0, 0, 1 << 30)
        data[matrix + 36:matrix + 44] = struct.pack(">II", 32 << 16, 64 << 16)  # the width and height it is shown at
        path.write_bytes(bytes(data))
        _, frames = read_video(path)
        assert frames.shape == reference.shape == (6, 3, 64, 32), case
        assert (frames.float() - reference.float()).abs().mean() < 3, case
        if case == "turned 90":  # turned the other way it is not
            assert (frames.flip(2, 3).float() - reference.float()).abs().mean() > 30


def test_a_video_whose_header_declares_its_frames_is_decoded_once(tmp_path, monkeypatch):
    """A video's frames are decoded in one pass where its header's frame count holds, and in two where it does
    not (a file cut short); the frames are the same as chosen from the count that decodes either way."""
    import av

    from vtfpar.data.video import read_video

    opened = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: (opened.append(a[0]), real_open(*a, **k))[1])
    rng = np.random.default_rng(1)
    clip = rng.integers(0, 256, (40, 32, 16, 3), dtype=np.uint8)
    whole = tmp_path / "whole.mp4"
    write_video(whole, clip)
    opened.clear()

    def middles(n):
        return segment_indices(n, 4, None).tolist()

    indices, frames = read_video(whole, middles)
    assert opened == [str(whole)] and indices == middles(40) and frames.shape == (4, 3, 32, 16)
    cut = tmp_path / "cut.mkv"
    write_video(cut, clip, fmt="matroska")
    cut.write_bytes(cut.read_bytes()[:len(cut.read_bytes()) // 2])
    opened.clear()
    with pytest.warns(UserWarning, match="cut short"):
        indices, frames = read_video(cut, middles)
        assert opened == [str(cut), str(cut)] and indices == middles(len(read_video(cut)[0]))
    assert frames.shape[0] == 4


def test_a_video_gives_the_frames_it_is_asked_for(tmp_path):
    """Each frame chosen from a video is the one at its index, not a neighbour: every frame of the video is a flat
    grey of a level of its own, 10 apart (MPEG-4 keeps them to within about 3): the nearest is the chosen one."""
    from vtfpar.data.video import read_video

    levels = np.arange(24) * 10 + 10
    clip = np.repeat(levels.astype(np.uint8), 32 * 16 * 3).reshape(24, 32, 16, 3)
    write_video(tmp_path / "levels.mp4", clip)
    chosen = [0, 7, 8, 15, 22, 23]
    indices, frames = read_video(tmp_path / "levels.mp4", lambda n: chosen if n == 24 else [])
    assert indices == chosen
    nearest = np.abs(frames.float().mean((1, 2, 3)).numpy()[:, None] - levels[None]).argmin(1)
    assert nearest.tolist() == chosen


def test_a_whole_video_with_a_longer_audio_track_is_not_said_to_be_cut_short(tmp_path):
    """Matroska keeps no per-stream duration in the stream header but in a tag per stream; the file's duration is
    its longest stream's. A whole 1 s video beside 3 s of audio declares 10 frames, not 30."""
    import av

    from vtfpar.data.video import read_video

    path = tmp_path / "with_audio.mkv"
    with av.open(str(path), "w") as container:
        video, audio = container.add_stream("mpeg4", rate=10), container.add_stream("pcm_s16le", rate=8000)
        video.width, video.height, video.pix_fmt, audio.layout = 32, 32, "yuv420p", "mono"
        for _ in range(10):
            container.mux(video.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")))
        container.mux(video.encode())
        sound = av.AudioFrame.from_ndarray(np.zeros((1, 3 * 8000), np.int16), format="s16", layout="mono")
        sound.sample_rate, sound.pts = 8000, 0
        container.mux(audio.encode(sound))
        container.mux(audio.encode())
    with av.open(str(path)) as container:
        assert container.duration > 2_000_000  # the audio's (3 s): what the file's header says
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_video(path)[0] == list(range(10))


def test_a_file_of_sound_alone_is_one_line_with_the_fix(tmp_path):
    import av

    from vtfpar.data.video import read_video

    path = tmp_path / "voice.mp4"
    with av.open(str(path), "w") as container:
        audio = container.add_stream("aac", rate=8000)
        audio.layout = "mono"
        sound = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.float32), format="fltp", layout="mono")
        sound.sample_rate, sound.pts = 8000, 0
        container.mux(audio.encode(sound))
        container.mux(audio.encode())
    with pytest.raises(UserError, match=rf"^{path}: has no video stream \(is it a sound file\?\): give a video file, "
                                        "or a folder of its frames$"):
        read_video(path)


def test_frame_order_keeps_zero_padded_names_as_text_sorts_them():
    from vtfpar.data.tracklets import frame_order

    names = ["0001C1T0001F002.jpg", "0001C1T0001F010.jpg", "0001C1T0001F001.jpg", "img10.png", "img9.png",
             "img09.png", "a.png"]
    ordered = [n for n in sorted(names, key=lambda n: frame_order(Path(n)))]
    assert ordered == ["0001C1T0001F001.jpg", "0001C1T0001F002.jpg", "0001C1T0001F010.jpg", "a.png", "img09.png",
                       "img9.png", "img10.png"]


def test_crops_of_different_sizes_are_each_resized_to_the_input(trained, tmp_path, bench_here):
    """A tracker's crops change size from frame to frame: each frame goes straight from its own size to the
    model's input, as evaluation resizes a frame (no second resize through another frame's size); frames of
    one size are prepared as one stacked clip, the evaluation path itself."""
    from vtfpar.data.tracklets import eval_clip
    from vtfpar.data.video import read_images

    rng = np.random.default_rng(0)
    sizes = [(64, 32), (256, 128), (126, 60), (130, 64)]  # the first the smallest: nothing is shrunk to it
    files = []
    for i, (h, w) in enumerate(sizes):
        files.append(tmp_path / f"{i:04d}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(files[-1])
    frames = read_images(files)
    assert [tuple(f.shape[-2:]) for f in frames] == sizes and all(f.dtype == torch.uint8 for f in frames)
    for f, path in zip(frames, files, strict=True):
        assert torch.equal(f, torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1))  # as decoded
    clip = eval_clip(frames, 64)
    assert clip.shape == (4, 3, 64, 64)
    for j, f in enumerate(frames):
        assert torch.equal(clip[j], eval_clip(f.unsqueeze(0), 64)[0])
    same = [frames[1]] * 2
    assert torch.equal(eval_clip(same, 64), eval_clip(torch.stack(same), 64))
    mixed = [frames[0], frames[1], frames[0]]  # a frame sampled twice is resized once, to the same values
    assert torch.equal(eval_clip(mixed, 64), clip[[0, 1, 0]])
    sheet = tmp_path / "sheets" / "sheet.png"  # not among the frames: it would be read as one next time
    code, out, err = bench_here("predict", trained, tmp_path, "--json", "--render", sheet)
    assert code == 0, err
    assert len(json.loads(out)["probabilities"]) == 23 and sheet.is_file()


def _write_png16(path, rgb8: np.ndarray) -> None:
    """A 16-bit RGB PNG (bit depth 16, colour type 2) of an 8-bit image, each value v stored as 257 v: what a
    camera or tool exporting 16 bits writes. PIL and torchvision write 8 bits only, so the chunks are built here."""
    import struct
    import zlib

    h, w, _ = rgb8.shape
    rows = (rgb8.astype(">u2") * 257).reshape(h, w * 3)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_png_frames_read_as_their_8_bit_image(exported, tmp_path):
    from vtfpar.data.video import read_images

    _, folders = exported
    files = image_files(folders[0])
    deep = tmp_path / "deep"
    deep.mkdir()
    for f in files:
        _write_png16(deep / f.name, np.asarray(Image.open(f).convert("RGB")))
    eight, sixteen = read_images(files), read_images(image_files(deep))
    assert all(a.dtype == b.dtype == torch.uint8 and torch.equal(a, b) for a, b in zip(eight, sixteen, strict=True))
    assert torch.equal(TrackletDataset._read(deep / files[0].name), eight[0])  # the datasets' reader too


def test_frames_a_camera_stored_sideways_are_read_upright_as_a_viewer_shows_them(exported, tmp_path):
    """A JPEG (or PNG) with an EXIF orientation tag holds its pixels as the sensor gave them and says how to turn
    them: every viewer, and PIL's ``exif_transpose``, shows the frame turned. Read as stored, the person would lie
    on their side (and a 256x128 MARS crop would be 128x256)."""
    from PIL import ImageOps

    from vtfpar.data.video import read_images

    _, folders = exported
    upright = np.asarray(Image.open(image_files(folders[0])[0]).convert("RGB"))
    stored = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
              8: Image.Transpose.ROTATE_270}  # how a camera holding the frame turned stores it, for each tag
    for tag, transpose in stored.items():
        exif = Image.Exif()
        exif[0x0112] = tag
        for suffix in (".png", ".jpg", ".webp"):
            path = tmp_path / f"{tag}{suffix}"
            Image.fromarray(upright).transpose(transpose).save(path, exif=exif.tobytes(), quality=100)
            shown = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
            assert shown.shape == upright.shape and (suffix != ".png" or np.array_equal(shown, upright))
            (read,) = read_images([path])
            assert np.array_equal(read.permute(1, 2, 0).numpy(), shown), (tag, suffix)


def test_an_animated_gif_under_a_frames_name_gives_its_first_frame(tmp_path):
    """And an animated WebP, as an animated PNG does: the file is one frame of the folder, not a clip of its own
    (decoded whole, a GIF was a 4-D tensor that failed inside the resize, and a WebP was refused)."""
    from vtfpar.data.video import read_images

    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)).convert("P") for _ in range(3)]
    for name, kind in (("0001.png", "GIF"), ("0002.webp", "WEBP")):  # an animated WebP is a frame too
        path = tmp_path / name
        frames[0].save(path, format=kind, save_all=True, append_images=frames[1:], lossless=True)
        (read,) = read_images([path])
        assert read.shape == (3, 32, 16) and np.array_equal(read.permute(1, 2, 0).numpy(),
                                                            np.asarray(Image.open(path).convert("RGB"))), name


def test_a_batch_of_which_no_input_predicts_leaves_an_earlier_csv_as_it_was(trained, tmp_path, bench_here):
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / name).write_bytes(b"not a video")
    (tmp_path / "p.csv").write_text(EARLIER)
    code, _, err = bench_here("predict", trained, tmp_path / "a.mp4", tmp_path / "b.mp4", "--csv", tmp_path / "p.csv")
    assert code == 1 and "--csv" in err and "was not written" in err and "2 of 2 inputs failed" in err, err
    assert (tmp_path / "p.csv").read_text() == EARLIER


def test_an_input_too_large_to_resize_is_named_and_the_others_go_on(trained, exported, tmp_path, bench_here,
                                                                    monkeypatch):
    """Frames of 20,000 x 20,000 px exhaust memory while being resized: that input fails with its name and the
    cause, not with advice to lower the training batch, and the other inputs are still predicted."""
    import benchmark.predict as predict

    _, folders = exported
    fine, huge = folders[0], folders[1]
    real = predict.eval_clip
    sizes = iter([1, 20000])  # the second input's frames are the huge ones

    def resize(frames, size):
        if next(sizes) == 20000:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 28800000000 bytes")
        return real(frames, size)

    monkeypatch.setattr(predict, "eval_clip", resize)
    code, out, err = bench_here("predict", trained, fine, huge, "--csv", tmp_path / "p.csv")
    assert code == 1, err
    assert f"{huge}: out of memory reading and resizing its frames to 64 px (frames this large need downscaling " \
           "first)" in err and "batch" not in err, err
    assert fine.name in (tmp_path / "p.csv").read_text() and huge.name not in (tmp_path / "p.csv").read_text()


def test_an_input_path_is_shown_as_it_is_not_read_as_markup(monkeypatch):
    """A folder named like rich markup ("[red]x") is titled with its whole name, so the user can tell which it is."""
    import io

    from rich.console import Console

    import benchmark.cli

    screen = Console(file=io.StringIO(), width=200, record=True)
    monkeypatch.setattr(benchmark.cli, "console", screen)
    hat = [{"kind": "binary", "attribute": "hat", "predicted": True, "probability": 0.91}]
    benchmark.cli._render_prediction({"input": "/clips/[red]x[bold]", "clips": 1, "frames_used": [0, 3], "groups": hat})
    assert "/clips/[red]x[bold] (frames 0, 3)" in screen.export_text()
    # several clips averaged (a run evaluated on every clip): the frames' span and the count, not every frame
    benchmark.cli._render_prediction({"input": "/clips/[b]y", "clips": 3, "frames_used": list(range(12)),
                                      "groups": hat})
    assert "/clips/[b]y (frames 0-11: 3 clips averaged)" in " ".join(screen.export_text().split())  # title wraps


def test_a_contact_sheet_that_does_not_fit_on_the_disk_says_the_csv_before_it_was_written(trained, exported,
                                                                                       small_disk, bench_here):
    """The disk fills after the CSV: the error names the sheet, says the CSV was written and stays, and the
    predictions were shown before it."""
    _, folders = exported
    (small_disk / "filler").write_bytes(bytes((1 << 20) - (8 << 10)))  # 8 KiB left: the CSV fits, a sheet does not
    csv_path, sheet = small_disk / "p.csv", small_disk / f"s_{folders[0].name}.png"
    code, out, err = bench_here("predict", trained, folders[0], folders[1], "--csv", csv_path, "--render",
                                small_disk / "s.png")
    (line,) = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and line == f"error: could not write {sheet} (No space left on device): {csv_path} was written " \
        "before it and stays; free space there and rerun the same command (it writes them all again)", err
    assert len(csv_path.read_text().splitlines()) == 3 and not sheet.exists()
    assert all(folder.name in out for folder in folders[:2])  # both predictions shown



def test_predict_decides_at_the_runs_own_threshold_and_its_csv_columns_are_its_header(tmp_path, exported, bench_proc):
    """Without --threshold a run's ``train.threshold`` decides (the paper's code evaluates at 0.45), as its
    evaluation did; every value of --csv sits under its own attribute's name."""
    from benchmark.train import train_run
    from tests.conftest import tiny_config

    cfg = tiny_config("frozen", out=str(tmp_path / "runs"), threshold=0.3)
    cfg.data.frames = FRAMES
    _, run_dir = train_run(cfg, progress=False, log=lambda *_: None)
    _, folders = exported
    r = bench_proc("predict", run_dir, folders[0], "--json", "--csv", tmp_path / "p.csv")
    assert r.returncode == 0, r.stderr
    said = json.loads(r.stdout)
    assert said["threshold"] == 0.3
    binary = [g for g in said["groups"] if g["kind"] == "binary"]
    assert binary and all(g["predicted"] == (g["probability"] >= 0.3) for g in binary)
    with open(tmp_path / "p.csv", newline="") as f:
        header, row = list(csv.reader(f))
    values = dict(zip(header[1:], map(float, row[1:]), strict=True))
    assert values == pytest.approx(said["probabilities"], abs=1e-6)
    assert len(set(values.values())) > 1  # the columns can be told apart
