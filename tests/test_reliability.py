"""Every user mistake is one clear line (exit 2), runs never collide, results are readable by others."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from benchmark.config import load_config
from benchmark.lock import LOCK, RunLock
from benchmark.report import load_runs
from benchmark.writes import FILE_MODE, atomic_write_json, atomic_write_text
from tests.test_cli import BENCH, ROOT, TINY, bench
from vtfpar.errors import UserError, one_line

FAST = [*TINY, "--method", "frozen", "--set", "measure.enabled=false"]


def one_error_line(r) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr
    return errors[0]


def run_dir_of(out: Path, *more_sets: str) -> Path:
    """The run directory ``bench run --out out *FAST`` (and ``--set`` each of ``more_sets``) uses (its config
    resolved the same way)."""
    sets = [b for a, b in zip(FAST, FAST[1:], strict=False) if a == "--set"] + list(more_sets)
    epochs = int(FAST[FAST.index("--epochs") + 1])
    cfg = load_config(None, {"run": {"method": FAST[FAST.index("--method") + 1], "out": str(out)},
                             "train": {"epochs": epochs}}, sets)
    return out / cfg.run_id()


@pytest.mark.parametrize("args,fragment", [
    (["run", "--epochs", "abc"], "--epochs"),
    (["run", "--no-such-option"], "no-such-option"),
    (["eval"], "Missing argument 'run_dir'"),
    (["perf", "--iters", "0"], "--iters must be at least 1"),
    (["perf", "--top-ops", "-1"], "--top-ops"),
    (["perf", "--methods", ","], "--methods ',' names no method"),
    (["perf", "--methods", "nope"], "--methods: unknown method 'nope': choose from frozen,"),
    (["perf", "--methods", "lora,nope+x"], "--methods: unknown method 'nope' in 'nope+x': choose from frozen,"),
    (["list", "--no-counts", "--config", "/no/such.toml"], "config file not found: /no/such.toml"),
    (["list", "--no-counts", "--config", "/dev/null"], "config file /dev/null is a device, pipe or socket, not a TOML"),
    (["data", "check", "--dataset", "duke", "--data-root", "README.md"], "dataset root README.md is a file, not a "
                                                                         "folder (pass an existing folder"),
    (["pretrain-clip", "--batch-size", "1"], "batch_size (--batch-size, 1) must be >= 2: a contrastive batch needs"),
    (["pretrain-clip", "--epochs", "0"], "pretrain: epochs (--epochs, 0) must be >= 1"),
    (["perf", "--methods", "all,lora"], "--methods 'all,lora': all is every row, given alone"),
    (["perf", "--methods", "+recompute"], "--methods: '+recompute' names no method before its '+'"),
    (["perf", "--methods", "side_tuning+nope"], "--methods: unknown variant 'side_tuning+nope': choose from"),
    (["list", "--dataset", "nope", "--no-counts"], "--dataset nope: choose one of duke, mars, synthetic"),
    (["eval", "/no/such/run"], "/no/such/run: no such folder; give a finished run directory"),
    (["eval", "README.md"], "README.md: is a file, not a folder; give a finished run directory"),
    (["perf", "--amp", "fp8"], "--amp fp8: choose one of auto, bf16, fp16, off"),
    (["perf", "--backbone", "ViT-Q-99"], "unknown backbone 'ViT-Q-99'"),
    (["run", "--method", "side_tuning", "--backbone", "local-dir:/no/such"], "command line: unknown backbone "
                                                                             "'local-dir:/no/such'"),
    (["perf", "--backbone", "local-dir:/no/such"], "unknown backbone 'local-dir:/no/such'"),
    (["perf", "--profile", "nope"], "--profile 'nope': choose one of"),
    (["perf", "--profile", ""], "--profile '': choose one of"),
    (["perf", "--batch", str(2**63 - 1), "--frames", "2"], "clips x 2 frames at 64 px is "),  # past what torch sizes
    (["perf", "--frames", str(2**62), "--batch", "2"], "lower --frames or --batch"),
    (["perf", "--device", "cpu:5"], "--device 'cpu:5': bench runs on the CPU as a whole, 'cpu'"),
    (["perf", "--annotation", "x.csv"], "add --loader"),
    (["perf", "--compile-mode", "fast"], "--compile-mode fast: choose one of default, reduce-overhead"),
    (["perf", "--loader", "--annotation", "README.md"], "README.md: not a MARS-Attribute CSV"),
    (["perf", "--compile-mode", "reduce-overhead"], "add --compile"),
    (["run", "--method", "frozen", "--set", "model.fusion_depth=100000000"],  # not minutes of building blocks
     "model.fusion_depth must be >= 1 and <= 256, got 100000000"),
    (["run", "--set", "methods.side_tuning.depth=1000"], "side_tuning: depth must be >= 1 and <= 256, got 1000"),
    (["report", "--runs", "results/runs", "--config", "bench.toml"],
     "--config is read only for run.out, where --runs is not given: drop --config, or --runs"),
    (["perf", "--loader", "--annotation", "/no/such.csv"], "--annotation /no/such.csv: no such file; give a"),
    (["perf", "--loader", "--annotation", "/dev/null"], "--annotation /dev/null: not a regular file; give a"),
    (["data", "check", "--dataset", "mars", "--data-root", ".", "--set", "data.annotation=/dev/null"],
     "annotation file is not a regular file: /dev/null (set data.annotation"),
])
def test_usage_errors_are_one_line_exit_2(args, fragment, bench_proc):
    assert fragment in one_error_line(bench_proc(*args))


@pytest.mark.parametrize("args,name", [
    (["report", "--out", ""], "--out"), (["report", "--runs", " "], "--runs"),
    (["data", "export", "--out", ""], "--out"),
    (["perf", "--out", ""], "--out"), (["pretrain-clip", "--out", ""], "--out"), (["eval", ""], "run_dir"),
    (["predict", "", "frames"], "run_dir"), (["predict", "results/runs/r", ""], "inputs"),
    (["predict", "results/runs/r", "frames", "--csv", ""], "--csv"),
    (["perf", "--loader", "--annotation", ""], "--annotation"),
])
def test_an_empty_path_is_refused_not_read_as_the_current_folder(args, name, bench_proc):
    """``--out "$UNSET"`` would otherwise write a report, an export or a table into the folder bench runs in."""
    command = " ".join(args[:2] if args[0] == "data" else args[:1])
    assert one_error_line(bench_proc(*args)) == (f"error: Invalid value for '{name}': is empty: give a path (\".\" for "
                                                 f"the current folder) (see bench {command} --help)")


@pytest.mark.parametrize("setting,key", [
    ("train.lr=nan", "train.lr"), ("train.lr=-1", "train.lr"), ("train.lr=0", "train.lr"),
    ("data.num_workers=-1", "data.num_workers"), ("data.test_clips=-5", "data.test_clips"),
    ("model.fusion_heads=5", "model.fusion_heads"), ("model.fusion_width=0", "model.fusion_width"),
    ("model.drop_path=2.0", "model.drop_path"), ("run.seed=-1", "run.seed"),
    ("train.warmup_epochs=-1", "train.warmup_epochs"), ("train.amp='fp8'", "train.amp"),
    ("data.format='xml'", "data.format"), ("measure.iters=0", "measure.iters"),
    ("train.batch_size=1", "train.batch_size"),  # the head's BatchNorm cannot train on one clip
])
def test_settings_are_checked_when_the_config_is_loaded(setting, key):
    with pytest.raises(UserError) as err:
        load_config(None, {}, [setting])
    assert str(err.value).startswith("command line: ") and key in str(err.value)


@pytest.mark.parametrize("args,line", [
    (("sweep", "--methods", "frozen", "--seeds", "-1"), "error: --seeds: run.seed must be >= 0"),
    (("run", "--seed", "-1"), "error: --seed: run.seed must be >= 0"),
    (("run", "--epochs", "0"), "error: --epochs: train.epochs must be >= 1, got 0"),
    (("run", "--set", "train.epochs=0"), "error: command line: train.epochs must be >= 1, got 0"),
])
def test_a_setting_out_of_range_names_the_option_that_gave_it(tmp_path, bench_proc, args, line):
    assert one_error_line(bench_proc(*args, "--out", tmp_path)).startswith(line)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_bad_setting_on_the_command_line_names_it(tmp_path, bench_proc, value):
    assert f"train.lr must be a finite number > 0.0, got {value}" in one_error_line(
        bench_proc("run", "--out", str(tmp_path), "--set", f"train.lr={value}"))
    assert not any(tmp_path.iterdir())


def test_a_setting_only_the_backbone_can_check_names_its_file(tmp_path, bench_proc):
    """side_tuning's taps are checked against the backbone's depth when the model is built; the error still
    says which file (or the command line) set them, and nothing is written."""
    config = tmp_path / "mine.toml"
    config.write_text("[methods.side_tuning]\ntaps = [0, 99]\n")
    out = tmp_path / "results" / "runs"
    line = one_error_line(bench_proc("run", "--config", str(config), "--out", str(out), *TINY,
                                     "--method", "side_tuning"))
    assert line.startswith(f"error: {config}: side_tuning: taps [99] are not layers of this 4-layer backbone")
    assert "methods.side_tuning.taps" in line
    line = one_error_line(bench_proc("run", "--out", str(out), *TINY, "--method", "side_tuning", "--set",
                                     "methods.side_tuning.depth=2"))
    assert line == ("error: command line: side_tuning: 4 taps need depth >= 4, got depth 2; raise "
                    "methods.side_tuning.depth to 4 or give fewer methods.side_tuning.taps")
    line = one_error_line(bench_proc("run", "--config", str(config), "--out", str(out), *TINY, "--method",
                                     "side_tuning", "--set", "methods.side_tuning.taps=[0,1,2]",
                                     "--set", "methods.side_tuning.depth=2"))
    assert line.startswith("error: command line: side_tuning: 3 taps need depth >= 3")  # both set there
    assert not (tmp_path / "results").exists()  # no folder it made is left behind, empty or not


def test_a_failed_command_removes_only_the_folders_it_made(tmp_path, monkeypatch):
    """``kept_only_if_used`` takes ``new/../runs`` as the ``runs`` it is: an empty ``runs`` that was there before
    stays. ``probe_folder`` tries again when a failing run removes its new parents at the moment it creates them."""
    from benchmark.writes import kept_only_if_used, probe_folder

    monkeypatch.chdir(tmp_path)
    Path("runs").mkdir()
    with pytest.raises(ValueError), kept_only_if_used(Path("new/../runs/one")):
        Path("new/../runs/one").mkdir(parents=True)
        raise ValueError("refused")
    assert Path("runs").is_dir() and not Path("runs/one").exists()

    made, mkdir = [], Path.mkdir

    def mkdir_then_removed(self, *args, **kwargs):  # another run's clean-up removes the empty parent once
        mkdir(self, *args, **kwargs)
        if self.name == "deep" and not made:
            made.append(self)
            self.rmdir()
            self.parent.rmdir()

    monkeypatch.setattr(Path, "mkdir", mkdir_then_removed)
    probe_folder(tmp_path / "fresh" / "deep")
    assert made and (tmp_path / "fresh" / "deep").is_dir()


def test_unusable_out_is_found_before_training(tmp_path, bench_proc):
    afile = tmp_path / "file"
    afile.write_text("x")
    for out in (afile, afile / "below"):
        t0 = time.perf_counter()
        line = one_error_line(bench_proc("run", "--out", str(out), *FAST))
        assert "cannot write runs under" in line and str(out) in line
        assert time.perf_counter() - t0 < 60  # no training happened (a run takes longer to set up and train)
    if os.geteuid() != 0:  # root writes into read-only folders
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert "cannot write runs under" in one_error_line(bench_proc("run", "--out", str(ro), *FAST))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    r = bench("run", "--out", str(out), *FAST)
    assert r.returncode == 0, r.stderr
    (run_dir,) = out.iterdir()
    return run_dir


@pytest.mark.parametrize("content", [b"", b"garbage, not a checkpoint"])
def test_corrupt_checkpoint_is_one_line(tmp_path, content, bench_proc):
    run_dir = run_dir_of(tmp_path)
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.pt").write_bytes(content)
    line = one_error_line(bench_proc("run", "--out", str(tmp_path), *FAST))
    assert "checkpoint.pt" in line and line.endswith("delete it, or train the run again with bench run ... --no-resume")
    assert (run_dir / "checkpoint.pt").read_bytes() == content  # nothing already written is lost


def test_force_keeps_the_checkpoint_of_a_run_it_refuses(tmp_path, bench_proc):
    """``--force`` drops the old checkpoint only when training starts, not for a run its data refuses."""
    run_dir = run_dir_of(tmp_path, "data.train_clips=1")
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.pt").write_bytes(b"epoch 3 of 5")
    line = one_error_line(bench_proc("run", "--out", str(tmp_path), *FAST, "--set", "data.train_clips=1", "--force"))
    assert "one training clip" in line
    assert (run_dir / "checkpoint.pt").read_bytes() == b"epoch 3 of 5"


@pytest.mark.parametrize("option, said", [
    ("--force", "--force: {}, an unfinished attempt's, is removed; training starts from epoch 1"),
    ("--no-resume", "--no-resume: {} is not resumed (it is replaced when epoch 1 ends); training starts from epoch 1")])
def test_a_checkpoint_that_force_or_no_resume_passes_over_is_said(tmp_path, bench_here, option, said):
    """An interrupted run trained again from its start by ``--force`` or ``--no-resume`` says which checkpoint it
    passes over, rather than starting at epoch 1 without a word where a resume was to be expected."""
    run_dir = run_dir_of(tmp_path)
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.pt").write_bytes(b"epoch 3 of 5")  # never read: neither option resumes it
    code, out, err = bench_here("run", "--out", tmp_path, *FAST, option)
    assert code == 0, err
    assert said.format(run_dir / "checkpoint.pt") in " ".join(out.split()), out
    assert (run_dir / "result.json").is_file() and not (run_dir / "checkpoint.pt").exists()
    code, out, err = bench_here("run", "--out", tmp_path, *FAST, option)  # nothing passed over: nothing said
    assert code == 0 and option + ":" not in out, (err, out)


def test_a_complete_result_without_its_weights_is_done_with_a_warning(finished, tmp_path, bench_proc):
    """result.json copied without model.pt (to rebuild a report): complete, kept, and bench run says what is
    missing for eval and predict and how to train it again."""
    import shutil

    run_dir = tmp_path / finished.name
    shutil.copytree(finished, run_dir)
    (run_dir / "model.pt").unlink()
    before = (run_dir / "result.json").read_text()
    r = bench_proc("run", "--out", str(tmp_path), *FAST)
    said = " ".join(r.stdout.split())
    assert r.returncode == 0 and "already complete" in said, r.stderr
    assert f"warning: {run_dir / 'model.pt'} is missing, so bench eval and bench predict cannot use this run" in said
    assert "--force" in said and (run_dir / "result.json").read_text() == before
    assert one_error_line(bench_proc("eval", str(run_dir))) == f"error: {run_dir / 'model.pt'} is missing, though " \
        f"run {run_dir.name} is finished (result.json is there): put back run {run_dir.name}'s own model.pt, or " \
        "train the run again (its bench run command with --force, or remove the run folder and rerun its bench sweep)"
    (run_dir / "model.pt").symlink_to("model.pt")  # a link to itself: named as such, not merely "missing"
    loop = f"{run_dir / 'model.pt'} is missing (its symbolic links lead back to themselves)"
    assert one_error_line(bench_proc("eval", run_dir)).startswith(f"error: {loop}, though run {run_dir.name}")
    said = " ".join(bench_proc("run", "--out", str(tmp_path), *FAST).stdout.split())
    assert f"warning: {loop}, so bench eval" in said
    (run_dir / "model.pt").unlink()
    (run_dir / "model.pt").symlink_to(tmp_path)  # a link to a folder is that folder, not a link to nothing
    said = " ".join(bench_proc("run", "--out", str(tmp_path), *FAST).stdout.split())
    assert f"warning: {run_dir / 'model.pt'} is a folder, not a file, so bench eval" in said
    (run_dir / "model.pt").unlink()
    (run_dir / "model.pt").mkdir()
    assert f"{run_dir / 'model.pt'} is a folder, not a file, though" in one_error_line(bench_proc("eval", run_dir))


def test_a_hand_edited_config_in_a_result_is_one_line(finished, tmp_path, bench_proc):
    import shutil

    run_dir = tmp_path / finished.name
    shutil.copytree(finished, run_dir)
    result = json.loads((run_dir / "result.json").read_text())
    result["config"]["data"]["frames"] = [4]
    (run_dir / "result.json").write_text(json.dumps(result))
    line = one_error_line(bench_proc("eval", str(run_dir)))
    assert "its config is not valid here (result.json: data.frames must be an integer" in line, line


def test_data_root_with_the_synthetic_dataset_is_refused(tmp_path, bench_proc):
    for command in (["run", "--out", str(tmp_path)], ["data", "check", "--dataset", "synthetic"]):
        line = one_error_line(bench_proc(*command, "--data-root", str(tmp_path)))
        assert f"--data-root {tmp_path}: the synthetic dataset is generated" in line
    assert not any(tmp_path.iterdir())
    line = one_error_line(bench_proc("data", "check", "--dataset", "synthetic", "--format", "mars2019"))
    assert line.startswith("error: --format mars2019: the synthetic dataset is generated and has no annotation format")


def test_eval_of_a_failed_or_unfinished_run_says_so(finished, tmp_path, bench_proc):
    import shutil

    failed = tmp_path / "crashed"
    shutil.copytree(finished, failed)
    _tamper_json(failed, lambda r: r.update(status="failed", error="ValueError: the loss is nan"))
    assert one_error_line(bench_proc("eval", str(failed))) == (
        "error: run crashed failed (ValueError: the loss is nan); fix that and run it again with bench run")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "checkpoint.pt").write_bytes(b"epoch 1")
    assert "run unfinished has not finished (a checkpoint, no result.json): finish it first by rerunning" in \
        one_error_line(bench_proc("eval", str(unfinished)))
    # The same run while a process trains it (holds its lock): said, with who.
    with RunLock(unfinished, log=lambda *_: None) as lock:
        assert one_error_line(bench_proc("eval", str(unfinished))) == (
            f"error: run unfinished is being trained by pid {os.getpid()} on {os.uname().nodename} since "
            f"{lock.owner['started']}, so it has no result.json until that ends: use it then")
    # A lock file left by a killed trainer whose pid now names a live process: the kernel lock is free, so no one
    # trains it. Stopped in a --force rerun: how to finish it, and the earlier result.
    (unfinished / LOCK).write_text(json.dumps({"host": os.uname().nodename, "pid": os.getpid(), "started": "then"}))
    (unfinished / "result.previous.json").write_text((finished / "result.json").read_text())
    assert one_error_line(bench_proc("eval", str(unfinished))) == (
        "error: run unfinished was stopped while being trained again (bench run --force): finish it by rerunning "
        f"that command without --force, which resumes it; its earlier result is {unfinished / 'result.previous.json'}")


def _copy_made_with_frames(finished: Path, tmp_path: Path, frames: int) -> Path:
    """A copy of the run ``finished`` whose result.json says it took clips of ``frames`` frames, as if trained so on
    a machine with room for them."""
    from benchmark.results import config_digest

    run_dir = tmp_path / finished.name
    shutil.copytree(finished, run_dir)

    def made_so(r):
        r["config"]["data"].update(frames=frames)
        r["config_sha256"] = config_digest(r["config"])

    _tamper_json(run_dir, made_so)
    return run_dir


def test_eval_of_settings_it_cannot_change_says_so(finished, tmp_path, bench_proc):
    """eval takes a run's settings from its result.json: frames of which not one clip fits, or attribute names
    edited there, are said without advice that eval has no option for."""
    run_dir = _copy_made_with_frames(finished, tmp_path, 10**7)
    line = one_error_line(bench_proc("eval", str(run_dir)))
    assert re.fullmatch(rf"error: one batch of \d+ clips x 10000000 frames at 64 px is [\d.]+ GiB, more than the "
                        rf"[\d.]+ GiB this machine has available: run {run_dir.name}'s settings \(data.frames "
                        r"10000000, train.eval_batch_size \d+\) need more memory than that", line), line
    shutil.rmtree(run_dir)
    shutil.copytree(finished, run_dir)
    _tamper_json(run_dir, lambda r: r["data"].update(attributes=r["data"]["attributes"][:-1]))
    assert one_error_line(bench_proc("eval", str(run_dir))) == (
        f"error: {run_dir / 'result.json'}: its data.attributes name 22 attributes, not the 23 of the synthetic "
        "dataset: the file was edited or written by another version of bench; rerun the run with --force")


def test_eval_names_its_device_option(finished, bench_proc):
    assert one_error_line(bench_proc("eval", str(finished), "--device", "cuda:99")).startswith("error: --device ")


def test_eval_of_a_synthetic_run_refuses_a_data_root(finished, tmp_path, bench_proc):
    line = one_error_line(bench_proc("eval", str(finished), "--data-root", str(tmp_path)))
    assert line == (f"error: --data-root {tmp_path}: run {finished.name} was trained on the synthetic dataset, "
                    "which is generated and reads no files; drop --data-root")


def test_corrupt_result_and_weights_are_one_line(finished, tmp_path, bench_proc):
    import shutil

    run_dir = tmp_path / finished.name
    shutil.copytree(finished, run_dir)
    (run_dir / "model.pt").write_bytes(b"")
    assert "model.pt" in one_error_line(bench_proc("eval", str(run_dir)))
    for broken in ("{not json", "[" * 100_000 + "]" * 100_000):  # nested deeper than json reads: RecursionError
        (run_dir / "result.json").write_text(broken)
        assert "result.json" in one_error_line(bench_proc("eval", str(run_dir)))
        assert "result.json" in one_error_line(bench_proc("run", "--out", str(tmp_path), *FAST))
        assert (run_dir / "result.json").read_text() == broken
    good = json.loads((finished / "result.json").read_text())
    (run_dir / "result.json").write_text(json.dumps({**good, "schema": 9}))
    assert one_error_line(bench_proc("eval", str(run_dir))) == f"error: {run_dir / 'result.json'}: schema 9: written " \
        "by a newer version of bench, which this one (schema 2) cannot read; update bench to read it"
    (run_dir / "result.json").write_text(json.dumps({**good, "schema": "2"}))
    assert "(its schema is '2', not a version number)" in one_error_line(bench_proc("eval", str(run_dir)))


PARTIAL = json.dumps({"schema": 2, "status": "complete", "run_id": "r", "method": "frozen", "dataset": "synthetic",
                      "seed": 0, "config": {}, "metrics": {"f1": 0.5}, "baselines": {}, "params": {}})


@pytest.mark.parametrize("content", ['{"a": 1}', '{"schema": 2, "status": "complete", "metrics": {}}', PARTIAL])
def test_a_result_file_without_a_result_in_it_is_one_line(tmp_path, content, bench_proc):
    """JSON that is not a complete result (an older schema implies "complete"), or one cut short of what the
    readers of a result use (mA, the parameter counts): named, kept, never a KeyError; a sweep that meets it
    reports the run failed and keeps the file as it is too."""
    run_dir = run_dir_of(tmp_path)
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text(content)
    line = one_error_line(bench_proc("run", "--out", str(tmp_path), *FAST))
    assert "result.json is not a result file (a complete result without " in line and "--force" in line
    assert (run_dir / "result.json").read_text() == content
    if content == PARTIAL:
        assert "metrics.mA, metrics.accuracy, metrics.precision and 3 more" in line
        sweep = bench_proc("sweep", "--methods", "frozen", "--datasets", "synthetic", "--seeds", "0", "--out",
                           str(tmp_path), "--no-report", "--set", "train.epochs=1",
                           *[a for a in FAST[2:] if a not in ("--method", "frozen")])
        assert sweep.returncode == 1 and "not a result file" in sweep.stdout + sweep.stderr
        assert (run_dir / "result.json").read_text() == content


def test_a_failure_never_replaces_a_complete_result(finished, tmp_path):
    """A duplicate or concurrent attempt at a finished run that fails must not mark it failed."""
    import shutil

    from benchmark.results import failed_result, read_result, record_failure

    run_dir = tmp_path / finished.name
    shutil.copytree(finished, run_dir)
    before = (run_dir / "result.json").read_bytes()
    cfg = load_config(None, {"run": {"out": str(tmp_path)}}, None)
    assert not record_failure(run_dir, failed_result(cfg, run_dir.name, RuntimeError("late duplicate")))
    assert (run_dir / "result.json").read_bytes() == before
    fresh = tmp_path / "fresh"
    assert record_failure(fresh, failed_result(cfg, "fresh", RuntimeError("boom")))
    assert read_result(fresh)["status"] == "failed" and "boom" in read_result(fresh)["error"]
    (tmp_path / "a_file").write_text("")  # a folder that cannot be made: still failed, and no traceback
    assert record_failure(tmp_path / "a_file" / "run", failed_result(cfg, "run", RuntimeError("boom")))
    (tmp_path / "odd" / "result.json").mkdir(parents=True)  # a folder where the result goes: the same
    assert record_failure(tmp_path / "odd", failed_result(cfg, "odd", RuntimeError("boom")))
    # While another process holds the run (training it again, or tidying what killed writers left): not written
    # there, where that process may be removing the temporaries of cut-short writes; still failed, and said.
    held = tmp_path / "held"
    with RunLock(held, log=lambda *_: None):
        assert record_failure(held, failed_result(cfg, "held", RuntimeError("boom")))
    assert not (held / "result.json").exists() and not list(held.glob(".result.json.*"))
    assert record_failure(held, failed_result(cfg, "held", RuntimeError("boom")))  # free again: recorded
    assert read_result(held)["status"] == "failed" and not (held / LOCK).exists()


def test_a_run_named_twice_in_a_sweep_runs_once(tmp_path):
    from benchmark.sweep import plan

    grid = plan("frozen,bitfit,frozen", "synthetic", "0,0,1", str(tmp_path), None, None)
    assert [(c.run.method, c.run.seed) for c in grid] == [("frozen", 0), ("frozen", 1), ("bitfit", 0), ("bitfit", 1)]


def test_report_skips_a_result_of_the_wrong_shape(finished, tmp_path):
    import shutil

    shutil.copytree(finished, tmp_path / finished.name)
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "result.json").write_text("[]")
    loaded = load_runs(tmp_path)
    assert len(loaded.table) == 1 and [Path(p).parent.name for p, _ in loaded.problems] == ["odd"]


def _tamper_json(run_dir: Path, change) -> None:
    r = json.loads((run_dir / "result.json").read_text())
    change(r)
    (run_dir / "result.json").write_text(json.dumps(r))


def _tamper_weights(run_dir: Path, change) -> None:
    saved = torch.load(run_dir / "model.pt", weights_only=True)
    change(saved)
    torch.save(saved, run_dir / "model.pt")


def _first_tensor_halved(saved):
    name = next(iter(saved["state"]))
    saved["state"][name] = saved["state"][name][..., :1]


@pytest.mark.parametrize("where,change,fragment", [
    ("json", lambda r: r.update(config="x"), "its config cannot be read"),
    ("json", lambda r: r["config"]["train"].update(epochs=0), "train.epochs must be >= 1"),
    ("json", lambda r: r["config"]["run"].update(method="lora"), "its method 'frozen' is not its config's run.method"),
    ("json", lambda r: [r["config"]["run"].update(method="lora"), r.update(method="lora")],
     "run.method is 'lora' but the method section"),
    ("json", lambda r: [r["config"][k].update({key: "nosuch"}) for k, key in (("run", "method"), ("method", "name"))]
     + [r.update(method="nosuch")], "unknown method 'nosuch'"),
    ("json", lambda r: r.pop("data"), "lacks the run's attribute names"),
    ("json", lambda r: r["data"].update(attributes=5), "lacks the run's attribute names"),
    ("json", lambda r: r["data"].update(attributes=r["data"]["attributes"][:3]), "has the run's 3 attributes"),
    ("weights", lambda s: s.update(state="x"), "holds no weights of a model"),
    ("weights", _first_tensor_halved, "size mismatch for"),
    ("weights", lambda s: next(iter(s["state"].values())).view(-1)[0].fill_(float("nan")),
     "holds NaN or infinite weights ("),
    ("weights", lambda s: s["state"].update({k: v.long() for k, v in list(s["state"].items())[:1]}),
     "holds whole numbers where the model's weights are floating point ("),  # not cast without a word
    ("weights", lambda s: s.update(run_id="synthetic_frozen_clip-tiny_s1_0123456789"),  # another seed's, copied in
     "holds the weights of run synthetic_frozen_clip-tiny_s1_0123456789, not of run "),
])
def test_a_tampered_run_is_one_line_naming_its_file(finished, tmp_path, where, change, fragment):
    """What eval and predict load (in process): each defect names the file and the fix, no traceback."""
    import shutil

    from benchmark.task import load_model

    run_dir = tmp_path / finished.name
    shutil.copytree(finished, run_dir)
    (_tamper_json if where == "json" else _tamper_weights)(run_dir, change)
    with pytest.raises(UserError) as err:
        load_model(run_dir, "cpu")
    message = one_line(err.value)
    named = "result.json" if where == "json" else "model.pt"
    assert fragment in message and f"{run_dir / named}" in message and "--force" in message, message
    if where == "weights":  # eval and predict have no --force: the fix is to put the file back, or to retrain
        assert message.endswith(f"put back run {run_dir.name}'s own model.pt, or train the run again (its bench run "
                                "command with --force, or remove the run folder and rerun its bench sweep)"), message


def test_weights_name_their_run_and_older_ones_that_do_not_are_read(finished, tmp_path):
    import shutil

    from benchmark.task import load_model

    assert torch.load(finished / "model.pt", weights_only=True)["run_id"] == json.loads(
        (finished / "result.json").read_text())["run_id"]
    run_dir = tmp_path / finished.name
    shutil.copytree(finished, run_dir)
    _tamper_weights(run_dir, lambda s: s.pop("run_id"))
    load_model(run_dir, "cpu")


BAD_EPOCH, NO_WEIGHTS = "its epoch (", "holds no weights of a model"


@pytest.mark.parametrize("field,value,fragment", [
    ("epoch", "x", BAD_EPOCH), ("epoch", -1, BAD_EPOCH), ("epoch", 2, BAD_EPOCH), ("history", 5, BAD_EPOCH),
    ("history", [1, "x"], BAD_EPOCH), ("history", [{"epoch_seconds": None}], BAD_EPOCH),
    ("model", "x", NO_WEIGHTS), ("model", None, NO_WEIGHTS), ("model", torch.zeros(3), NO_WEIGHTS),
    ("model", {"head.bias": torch.zeros(3)}, "does not match this model"),
    ("unreadable_frames_replaced", -1, "its count of unreadable frames (-1)"),
    ("unreadable_frames_replaced", "3", "its count of unreadable frames ('3')")])
def test_a_tampered_checkpoint_is_one_line_before_any_training(finished, field, value, fragment):
    """A checkpoint of epoch 1 (other weights, a count of unreadable frames) with one field broken: refused with
    the reason, and nothing of it taken (the state stays the fresh one)."""
    from benchmark.step import new_train_state
    from benchmark.task import load_model
    from vtfpar.loss import WeightedBCE
    from vtfpar.model import trainable_state_dict

    model, cfg, attributes, device = load_model(finished, "cpu")
    state = new_train_state(model, WeightedBCE(torch.full((len(attributes),), 0.5)), device, cfg.train, 2)
    before = {k: v.clone() for k, v in trainable_state_dict(model).items()}
    saved = {**state.state_dict(), "epoch": 1, "history": [{"epoch_seconds": 1.5}], "unreadable_frames_replaced": 4,
             "model": {k: v + 1 for k, v in before.items()}}
    state.load_state_dict(dict(saved), "runs/x/checkpoint.pt")  # as it is, it is taken whole
    assert (state.epoch, state.frames_replaced) == (1, 4)
    state = new_train_state(model, WeightedBCE(torch.full((len(attributes),), 0.5)), device, cfg.train, 2)
    model.load_state_dict(before, strict=False)
    saved[field] = value
    with pytest.raises(UserError) as err:
        state.load_state_dict(saved, "runs/x/checkpoint.pt")
    message = one_line(err.value)
    assert message.startswith("runs/x/checkpoint.pt") and fragment in message, message
    assert (state.epoch, state.history, state.frames_replaced) == (0, [], 0)  # nothing of the bad file was taken
    assert all(torch.equal(v, before[k]) for k, v in trainable_state_dict(model).items())


def test_a_checkpoint_without_a_count_of_unreadable_frames_resumes_counting_from_0(finished):
    """Checkpoints written before the count was kept resume as they did: the epochs before them count none."""
    from benchmark.step import new_train_state
    from benchmark.task import load_model
    from vtfpar.loss import WeightedBCE

    model, cfg, attributes, device = load_model(finished, "cpu")
    state = new_train_state(model, WeightedBCE(torch.full((len(attributes),), 0.5)), device, cfg.train, 2)
    state.frames_replaced = 3
    saved = state.state_dict()
    assert saved["unreadable_frames_replaced"] == 3
    state.load_state_dict(saved, "runs/x/checkpoint.pt")
    assert state.frames_replaced == 3
    del saved["unreadable_frames_replaced"]
    state.load_state_dict(saved, "runs/x/checkpoint.pt")
    assert state.frames_replaced == 0


def test_an_epoch_whose_loss_or_weights_are_not_finite_stops_before_its_checkpoint(finished):
    """A NaN loss, or weights broken by the epoch's last step on a finite loss, end the epoch with the one line
    that says what to lower, before the caller writes its checkpoint; a loss already NaN before any update says
    that the starting model, not the learning rate, is at fault."""
    from torch.utils.data import DataLoader, TensorDataset

    from benchmark.step import new_train_state
    from benchmark.task import load_model
    from benchmark.train import _check_finite, _check_finite_weights, train_epoch
    from vtfpar.loss import WeightedBCE

    model, cfg, attributes, device = load_model(finished, "cpu")
    state = new_train_state(model.train(), WeightedBCE(torch.full((len(attributes),), 0.5)), device, cfg.train, 1)
    gen = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(2, cfg.data.frames, 3, 64, 64, generator=gen),
                                    torch.randint(0, 2, (2, len(attributes)), generator=gen).float()), batch_size=2)
    assert train_epoch(state, data, device)["clips"] == 2
    _check_finite_weights(state)  # finite: nothing said
    trainable = [p for p in model.parameters() if p.requires_grad]
    broken = state.optimizer.register_step_post_hook(lambda *_: trainable[-1].data.view(-1)[0].fill_(float("inf")))
    with pytest.raises(UserError, match=r"^the weights became NaN or infinite in epoch 1: lower train.lr"):
        train_epoch(state, data, device)  # its one step breaks them after a finite loss: train_epoch checks
    broken.remove()
    with torch.no_grad():
        trainable[-1].view(-1)[0] = float("inf")
    with pytest.raises(UserError, match=r"^the weights became NaN or infinite in epoch 1: lower train.lr"):
        _check_finite_weights(state)
    with torch.no_grad():
        trainable[0].fill_(float("nan"))
    with pytest.raises(UserError, match=r"^loss became nan in epoch 1: lower train.lr \(or set train.grad_clip\); "
                                        "rerunning resumes from the last finished epoch"):
        train_epoch(state, data, device)
    # The same weights in a run that has not updated them yet: the learning rate cannot be the cause
    state = new_train_state(model, state.loss_fn, device, cfg.train, 1)
    with pytest.raises(UserError, match=r"^loss was not finite in the first training step, before any update, so "
                                        r"train.lr is not the cause: .*check the method's settings \(a scale, say\) "
                                        "and the weights loaded$"):
        train_epoch(state, data, device)
    with pytest.raises(UserError, match=r"weights loaded; or set train.amp to bf16 or off \(fp16 overflowed\?\)$"):
        _check_finite(torch.tensor(float("inf")), 0, torch.tensor(1.0), fp16=True)
    _check_finite(torch.tensor(1.0), 0, torch.tensor(1.0), fp16=False)  # a finite sum is never judged by its first loss


def test_a_checkpoint_past_the_last_epoch_is_refused(finished, tmp_path, bench_proc):
    """A checkpoint bench never writes (epoch 5 of a 1-epoch run) is refused and kept, not written up as a
    complete run with another run's history."""
    from benchmark.step import new_train_state
    from benchmark.task import load_model
    from vtfpar.loss import WeightedBCE

    model, cfg, attributes, device = load_model(finished, "cpu")
    state = new_train_state(model, WeightedBCE(torch.full((len(attributes),), 0.5)), device, cfg.train, 2)
    rows = [{"epoch": e + 1, "loss": 0.5, "epoch_seconds": 1.0} for e in range(5)]
    run_dir = run_dir_of(tmp_path)
    run_dir.mkdir(parents=True)
    torch.save({**state.state_dict(), "epoch": 5, "history": rows}, run_dir / "checkpoint.pt")
    content = (run_dir / "checkpoint.pt").read_bytes()
    line = one_error_line(bench_proc("run", "--out", str(tmp_path), *FAST))
    assert line == f"error: {run_dir / 'checkpoint.pt'}: it is past epoch 5 of a run of {cfg.train.epochs} epochs, " \
        "which bench never writes; delete it, or train the run again with bench run ... --no-resume", line
    assert (run_dir / "checkpoint.pt").read_bytes() == content and not (run_dir / "result.json").exists()


@pytest.mark.parametrize("change,said", [
    (lambda c: c["optimizer"]["param_groups"][0].update(lr="x"), "its optimiser's lr ('x') is not what bench writes;"),
    (lambda c: c["optimizer"]["param_groups"][0].update(betas=(0.9, float("nan"))),
     "its optimiser's betas ((0.9, nan)) is not what bench writes;"),
    (lambda c: c["scheduler"].update(last_epoch="x"), "its optimiser's last_epoch ('x') is not what bench writes;"),
    (lambda c: c.update(fusion_start="x"), "its fusion_start ('x') is not what bench writes;"),
    (lambda c: c.update(labels_read=99), "its labels_read (99) is not what bench writes;"),
    (lambda c: c["optimizer"]["state"][0].pop("exp_avg"),
     "its optimiser state does not fit this model (a parameter's state lacks exp_avg);"),
    (lambda c: c["optimizer"]["state"][0]["exp_avg_sq"].fill_(float("nan")),
     "its optimiser state does not fit this model (state 'exp_avg_sq' holds NaN or infinite values);"),
])
def test_a_checkpoint_with_values_bench_never_writes_is_refused_before_training(finished, tmp_path, bench_proc, change,
                                                                                 said):
    """Values of the wrong type or range in a checkpoint (torch loads any learning rate or step count and fails on
    it in the first step; a start or label reading of no version would be written into the result), or Adam's
    moments missing (a KeyError deep in its first step) or not finite (a non-finite loss blamed on the learning
    rate, again at every rerun, as each resumes the same file): one line, the file kept."""
    from benchmark.step import CHECKPOINT_FIX, new_train_state
    from benchmark.task import load_model
    from vtfpar.loss import WeightedBCE

    model, cfg, attributes, device = load_model(finished, "cpu")
    state = new_train_state(model, WeightedBCE(torch.full((len(attributes),), 0.5)), device, cfg.train, 2)
    for group in state.optimizer.param_groups:  # one step: the moments a checkpoint holds
        for p in group["params"]:
            p.grad = torch.ones_like(p)
    state.optimizer.step()
    checkpoint = {**state.state_dict(), "epoch": 1, "history": [{"epoch": 1, "loss": 0.5, "epoch_seconds": 1.0}]}
    change(checkpoint)
    run_dir = run_dir_of(tmp_path)
    run_dir.mkdir(parents=True)
    torch.save(checkpoint, run_dir / "checkpoint.pt")
    content = (run_dir / "checkpoint.pt").read_bytes()
    line = one_error_line(bench_proc("run", "--out", str(tmp_path), *FAST))
    assert line == f"error: {run_dir / 'checkpoint.pt'}: {said} {CHECKPOINT_FIX}", line
    assert (run_dir / "checkpoint.pt").read_bytes() == content and not (run_dir / "result.json").exists()


@pytest.mark.parametrize("change,skipped", [(lambda r: r.update(history=[1, 2]), "history epoch"),
                                            (lambda r: r["metrics"].update(per_attribute=["x"]),
                                             "metrics.per_attribute"),
                                            (lambda r: r["params"].update(trainable="many"), "params.trainable"),
                                            (lambda r: r["params"].update(trainable=-5), "params.trainable"),
                                            (lambda r: r["metrics"].update(per_attribute={"hat": 0.5}),
                                             "metrics.per_attribute is \"{'hat': 0.5}\", not a list"),
                                            (lambda r: r.update(env=None), None)])  # a run without a device
def test_report_skips_a_result_with_fields_of_the_wrong_type(finished, tmp_path, change, skipped):
    import shutil

    shutil.copytree(finished, tmp_path / finished.name)
    shutil.copytree(finished, tmp_path / "odd")
    from benchmark.results import config_digest

    _tamper_json(tmp_path / "odd", lambda r: (change(r), r.update(run_id="odd", seed=1),  # another run: seed 1
                                              r["config"]["run"].update(seed=1),
                                              r.update(config_sha256=config_digest(r["config"]))))
    loaded = load_runs(tmp_path)
    if skipped:
        assert len(loaded.table) == 1 and [Path(p).parent.name for p, _ in loaded.problems] == ["odd"]
        assert skipped in loaded.problems[0][1], loaded.problems  # names what is wrong
    else:
        assert len(loaded.table) == 2 and not loaded.problems and loaded.table["device"].isna().sum() == 1


def test_files_and_folders_in_the_way_are_one_line(finished, tmp_path, monkeypatch):
    from benchmark.config import _read_toml
    from benchmark.report import write_report
    from benchmark.task import resolve_device
    from benchmark.writes import check_writable_folder
    from vtfpar.data.layouts import read_mars2019_csv

    binary = tmp_path / "bin.toml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(UserError, match="bin.toml: not a TOML file"):
        _read_toml(binary)
    with pytest.raises(UserError, match="mars_attributes.csv: the MARS-Attribute CSV is not UTF-8 text"):
        read_mars2019_csv(binary.rename(tmp_path / "mars_attributes.csv"))
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(UserError, match="it is a file, not a folder; choose another --out"):
        check_writable_folder(afile, "choose another --out")
    with pytest.raises(UserError, match=f"cannot write in {afile}/a/b: {afile} is a file, not a folder; choose"):
        check_writable_folder(afile / "a" / "b", "choose another --out")
    with monkeypatch.context() as m:  # Python 3.11's pathlib under a folder this user may not search
        def refuse(self, *a, **k):
            raise PermissionError(13, "Permission denied", str(self))

        for name in ("exists", "is_dir", "is_file"):
            m.setattr(Path, name, refuse)
        with pytest.raises(UserError, match=f"cannot write in {afile}/a: {afile} is a file, not a folder"):
            check_writable_folder(afile / "a", "choose another --out")
        with pytest.raises(UserError, match="cannot be created"):
            atomic_write_text(afile / "a" / "b.txt", "x")
    with pytest.raises(UserError, match=f"its folder {afile}/a cannot be created \\({afile} is a file, not a "
                                        "folder\\); nothing was written"):
        atomic_write_text(afile / "a" / "b.txt", "x")
    assert afile.read_text() == "x"
    with pytest.raises(UserError, match=f"cannot write in {afile}: it is a file, not a folder; choose another --out"):
        write_report(load_runs(finished.parent), afile)
    for device in ("meta", "mps"):
        with pytest.raises(UserError, match=f"run.device '{device}' is not supported"):
            resolve_device(device)
    for device in ("cuda:abc", "cudax"):  # not a device name on any machine, CUDA or not
        with pytest.raises(UserError, match=f"^run.device '{device}' is not a device"):
            resolve_device(device)



def test_a_gpu_named_by_its_index_becomes_the_current_device(monkeypatch):
    """--device cuda:1 in one process: the loader's pinned memory and empty_cache act on torch's current device,
    which would stay GPU 0 (a stray context there). This machine has no GPU, so torch.cuda's answers are those of
    a machine with two; what is checked is which device bench makes current."""
    from benchmark.task import resolve_device

    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert resolve_device("cuda:1") == torch.device("cuda:1") and current == [torch.device("cuda:1")]
    assert resolve_device("cuda") == torch.device("cuda") and len(current) == 1  # the current one: left as it is
    assert resolve_device("cuda:1", make_current=False) == torch.device("cuda:1") and len(current) == 1  # torchrun
    with pytest.raises(UserError, match="this machine has 2 CUDA device"):
        resolve_device("cuda:2")
    assert len(current) == 1

def test_two_perf_runs_on_one_device_or_table_do_not_overlap(tmp_path, bench_proc):
    """Two measurements at once would time each other's work (one device) or mix rows (one table): the
    second stops before measuring, naming the first; the lock goes with the process that held it."""
    from benchmark.perf import MeasurementBusy, measuring

    args = ("perf", "--backbone", "clip-tiny", "--methods", "frozen", "--iters", "1", "--warmup", "0",
            "--out", tmp_path)
    with measuring(tmp_path / "elsewhere", "other_table", torch.device("cpu")):
        line = one_error_line(bench_proc(*args))
        assert line.startswith(f"error: another bench perf is measuring on cpu (pid {os.getpid()} on ")
        with pytest.raises(MeasurementBusy, match="another bench perf is measuring on cpu"):
            measuring(tmp_path, "other_table", torch.device("cpu"))
    busy = pytest.raises(MeasurementBusy, match=f"another bench perf is writing {tmp_path / 'a_table.json'} \\(pid ")
    with measuring(tmp_path, "a_table", torch.device("cpu")), busy:
        measuring(tmp_path, "a_table", torch.device("meta"))  # another device, the same table
    assert not list(tmp_path.glob("*.json"))
    measuring(tmp_path, "a_table", torch.device("cpu")).close()  # free again
    assert not list(tmp_path.glob("*.lock"))


def test_a_perf_lock_folder_that_is_a_file_is_named_with_its_variable(tmp_path, bench_proc, monkeypatch):
    from benchmark.perf import LOCK_DIR_ENV

    (tmp_path / "locks").write_text("not a folder")
    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path / "locks"))
    r = bench_proc("perf", "--backbone", "clip-tiny", "--methods", "frozen", "--iters", "1", "--warmup", "0",
                   "--out", tmp_path / "perf")
    assert r.returncode == 2 and one_error_line(r) == (
        f"error: cannot write in {tmp_path / 'locks'}: it is a file, not a folder; set ${LOCK_DIR_ENV} to a writable "
        f"folder, or unset it for {tempfile.gettempdir()}")
    assert (tmp_path / "locks").read_text() == "not a folder" and not list((tmp_path / "perf").glob("*.json"))


def test_a_lock_file_that_is_a_pipe_or_a_device_is_refused_in_one_line_not_read(tmp_path):
    """The holder is read from the lock file: from a named pipe that waited for a writer forever, and from a link to
    /dev/zero it read until memory ran out (said as "out of memory" with advice on batch sizes)."""
    from benchmark.lock import trainer_of

    pipe, zero = tmp_path / "pipe", tmp_path / "zero"
    pipe.mkdir()
    os.mkfifo(pipe / LOCK)
    zero.mkdir()
    (zero / LOCK).symlink_to("/dev/zero")
    said = {}

    def check():
        for run_dir, kind in ((pipe, "a named pipe"), (zero, "a device")):
            assert trainer_of(run_dir) is None  # nobody trains there: no lock file holds it
            with pytest.raises(UserError) as refused, RunLock(run_dir):
                pass
            said[kind] = str(refused.value)

    checking = threading.Thread(target=check, daemon=True)
    checking.start()
    checking.join(60)
    assert not checking.is_alive(), "reading the lock file blocked"
    for kind, run_dir in (("a named pipe", pipe), ("a device", zero)):
        assert said[kind] == (f"cannot lock run {run_dir.name}: {run_dir / LOCK} is {kind}, not a lock file; remove "
                              "it, or choose another --out"), said
    assert stat.S_ISFIFO((pipe / LOCK).lstat().st_mode) and (zero / LOCK).is_symlink()  # left as they were
    (tmp_path / LOCK).write_text(" " * 10**6)  # longer than any lock bench writes: read as naming nobody
    with RunLock(tmp_path, log=lambda *_: None):
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()


def test_a_lock_file_of_the_wrong_kind(tmp_path):
    (tmp_path / LOCK).write_text("[1, 2]")  # not what a trainer writes: taken over like a stale one
    with RunLock(tmp_path, log=lambda *_: None):
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    (tmp_path / LOCK).mkdir()
    with pytest.raises(UserError, match="cannot lock run .*Is a directory"), RunLock(tmp_path):
        pass
    with RunLock(tmp_path / "gone"):  # its folder removed by a holder that failed early: made again
        assert (tmp_path / "gone" / LOCK).is_file()
    import pickle

    from benchmark.lock import RunLocked
    again = pickle.loads(pickle.dumps(RunLocked("r", "pid 1 on h")))  # crosses process boundaries whole
    assert (again.run, again.who, str(again)) == ("r", "pid 1 on h", str(RunLocked("r", "pid 1 on h")))


def test_a_file_system_without_locks_is_one_line(tmp_path, monkeypatch):
    """Some NFS and FUSE mounts refuse flock (ENOLCK): the run is refused with the file and the fix, not a traceback,
    and a lock that can be taken is unaffected. (No such mount here: flock is made to fail as it does there.)"""
    import errno
    import fcntl

    from benchmark import lock as lock_module

    real = fcntl.flock

    def no_locks(fd, op):
        if op & fcntl.LOCK_EX:
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
        return real(fd, op)

    monkeypatch.setattr(lock_module.fcntl, "flock", no_locks)
    with pytest.raises(UserError, match="cannot lock run .*No locks available.*does not keep file locks.*choose "
                                        "another --out on a local disk") as raised, RunLock(tmp_path):
        pass
    assert "\n" not in str(raised.value)
    held = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")]
    assert not [p for p in held if p.startswith(str(tmp_path / LOCK))]  # the lock file's descriptor is closed
    assert not (tmp_path / LOCK).exists()  # and the file it made removed: the folder is as it was
    monkeypatch.setattr(lock_module.fcntl, "flock", real)
    with RunLock(tmp_path, log=lambda *_: None):
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()


def test_running_out_of_memory_is_one_line(tmp_path, bench_proc):
    """Settings too large for the machine end in one line naming what to lower (an export of more frames than the
    address space holds is refused by its bound; one that runs out of memory is tested with a ceiling in
    test_predict)."""
    from benchmark.memory import out_of_memory as _out_of_memory

    frames = str(10**13)
    line = one_error_line(bench_proc("data", "export", "--count", "1", "--frames", frames, "--out", str(tmp_path)))
    assert line == f"error: --frames {frames}: a tracklet of an export has at most 100,000 frames"
    assert _out_of_memory(RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried"))
    assert _out_of_memory(RuntimeError("Caught _ArrayMemoryError in DataLoader worker process 0. ..."))
    assert not _out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    from benchmark.memory import out_of_memory_message  # in the options of the command that ran out

    assert out_of_memory_message(MemoryError(), "bench pretrain-clip") == (
        "out of memory (MemoryError): lower --batch-size, --images or --heldout (the pairs are drawn in memory), or "
        "--threads")
    from benchmark.results import failed_result  # a sweep records the same line, not the allocator's text

    cfg = load_config(None)
    error = failed_result(cfg, "r", RuntimeError("[enforce fail at alloc_cpu.cpp:117] err == 0. DefaultCPUAllocator: "
                                                 "can't allocate memory: you tried to allocate 8 bytes"))["error"]
    assert error.startswith("out of memory (DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 "
                            "bytes): lower the batch")
    assert failed_result(cfg, "r", ValueError("x"))["error"] == "ValueError: x"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA bounds mmap on Linux only")
def test_settings_past_the_memory_ceiling_end_in_one_line_not_in_swapping(tmp_path):
    """A spatial side network of 256 blocks of width 2400 needs tens of GB: under a ceiling the allocation fails at
    once, in one line that names the ceiling, instead of taking the machine's memory until the kernel steps in.
    VTFPAR_MEMORY_LIMIT is what the command may map beyond what it maps to start (1G is enough to run)."""
    env = {**os.environ, "VTFPAR_MEMORY_LIMIT": "3G", "OMP_NUM_THREADS": "2"}
    t0 = time.perf_counter()
    r = subprocess.run([*BENCH, "run", "--out", str(tmp_path / "runs"), *TINY, "--method", "side_tuning", "--set",
                        "measure.enabled=false", "--set", "methods.side_tuning.depth=256", "--set",
                        "methods.side_tuning.width=2400"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    line = one_error_line(r)
    assert line.startswith("error: out of memory (") and "--frames" in line, line
    assert re.search(r"\(this command could map [\d.]+ GiB: set by VTFPAR_MEMORY_LIMIT, 3.0 GiB beyond what bench "
                     r"maps to start\)$", line), line
    assert time.perf_counter() - t0 < 120 and not any((tmp_path / "runs").glob("*"))  # no run folder left
    # 3000 clips of 6 frames are 0.8 GiB, under the check of one batch's size, and fail on the way through the model
    perf = subprocess.run([*BENCH, "perf", "--methods", "frozen", "--batch", "3000", "--out", str(tmp_path / "perf")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**env, "VTFPAR_MEMORY_LIMIT": "1G"})
    line = one_error_line(perf)  # in the options bench perf takes: it has no settings file
    assert re.match(r"error: out of memory \(.*\): lower --batch or --frames, leave the largest rows out of --methods, "
                    r"or use a device with more memory \(this command could map", line), line
    small = subprocess.run([*BENCH, "list", "--no-counts"], capture_output=True, text=True, cwd=ROOT, timeout=120,
                           env={**env, "VTFPAR_MEMORY_LIMIT": "1G"})
    assert small.returncode == 0 and "side_tuning" in small.stdout, small.stderr


_FAILS_INSIDE_PYTHON = """
import sys
import vtfpar.side
from benchmark import cli

HOW = sys.argv.pop()


def build_block(self, *args, **kwargs):  # as building a model block by block reaches the ceiling
    held = []
    if HOW != "room":
        try:
            while True:
                held.append(bytearray(8 * 2**20))
        except MemoryError:
            del held[-2:]  # room to say it in, still at the ceiling
    if HOW == "other":
        raise SystemError("bad argument to internal function")
    raise SystemError("<function _Attention.__init__ at 0x7f6bda6d8e00> returned NULL without setting an exception")

vtfpar.side.SideBlock.__init__ = build_block
sys.argv[0] = "bench"
cli.main()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA bounds mmap on Linux only")
def test_an_allocation_the_interpreter_fails_at_the_ceiling_is_the_out_of_memory_line(tmp_path):
    """At the ceiling, the allocation that fails may be one the interpreter makes for itself, which surfaces as a
    SystemError ("... returned NULL without setting an exception") instead of a MemoryError: where the ceiling
    falls among a large model's many small allocations decides which. At the ceiling it is the out-of-memory line;
    a SystemError far from it, or of another kind, is a bug, and stays a traceback."""
    from benchmark.memory import out_of_memory

    env = {**os.environ, "VTFPAR_MEMORY_LIMIT": "1G"}
    args = [sys.executable, "-c", _FAILS_INSIDE_PYTHON, "run", "--out", str(tmp_path / "runs"), *TINY, "--method",
            "side_tuning", "--set", "measure.enabled=false"]
    full = subprocess.run([*args, "fill"], capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    line = one_error_line(full)
    assert line.startswith("error: out of memory (an allocation inside Python failed): lower the batch"), line
    assert re.search(r"\(this command could map [\d.]+ GiB: set by VTFPAR_MEMORY_LIMIT, 1.0 GiB beyond", line), line
    assert not any((tmp_path / "runs").glob("*"))
    bug = subprocess.run([*args, "room"], capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert bug.returncode == 1 and "SystemError: <function _Attention.__init__" in bug.stderr, bug.stderr[-2000:]
    other = subprocess.run([*args, "other"], capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert other.returncode == 1 and "SystemError: bad argument to internal function" in other.stderr, \
        other.stderr[-2000:]  # at the ceiling too, a SystemError that says something else is not memory's
    assert not out_of_memory(SystemError("returned NULL without setting an exception"))  # no ceiling here


@pytest.mark.parametrize("limit", ["", "3G"])
def test_a_batch_too_large_for_the_memory_is_refused_before_any_data(tmp_path, limit):
    """--set data.frames=10000000: one batch of clips is petabytes. Refused at once, naming the settings, not after
    minutes of rendering frames up to the ceiling."""
    env = {**os.environ, "VTFPAR_MEMORY_LIMIT": limit}
    t0 = time.perf_counter()
    r = subprocess.run([*BENCH, "run", "--out", str(tmp_path / "runs"), *FAST, "--set", "data.frames=10000000"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    line = one_error_line(r)
    where = "VTFPAR_MEMORY_LIMIT allows" if limit else "this machine has available"
    # The synthetic profile evaluates 64 clips at a time and trains on 32, but the test split here has fewer than
    # 32 clips: the training batch is the larger one, and is named.
    assert re.fullmatch(rf"error: one batch of 32 clips x 10000000 frames at 64 px is [\d.]+ GiB, more than the "
                        rf"[\d.]+ GiB {where}: lower data.frames \(--frames\) or train.batch_size \(--batch-size\)",
                        line), line
    assert time.perf_counter() - t0 < 60 and not any((tmp_path / "runs").glob("*"))


def test_eval_of_a_batch_too_large_here_names_the_batch_size_that_fits(finished, tmp_path, bench_proc, monkeypatch):
    """A run whose evaluation batch does not fit this machine, though one of its clips does (10^5 frames: 4.6 GiB a
    clip against a VTFPAR_MEMORY_LIMIT of 5 GiB), is told the --batch-size that fits before any data is read; one
    clip that does not fit at all is the run's settings (test_eval_of_settings_it_cannot_change_says_so)."""
    run_dir = _copy_made_with_frames(finished, tmp_path, 10**5)
    monkeypatch.setenv("VTFPAR_MEMORY_LIMIT", "5G")
    for asked, batch in ((), r"\d+"), (("--batch-size", "2"), "2"):
        line = one_error_line(bench_proc("eval", run_dir, *asked))
        assert re.fullmatch(rf"error: one batch of {batch} clips x 100000 frames at 64 px is [\d.]+ GiB, more than the "
                            r"5.0 GiB VTFPAR_MEMORY_LIMIT allows: lower --batch-size \(clips evaluated at once\) to 1 "
                            "or fewer", line), line
    from benchmark.memory import out_of_memory_message  # out of memory on the device: the same option

    assert out_of_memory_message(MemoryError(), "bench eval") == out_of_memory_message(MemoryError(), "bench predict") \
        == ("out of memory (MemoryError): lower --batch-size (clips evaluated at once; by default the run's "
            "train.eval_batch_size), or use a device with more memory (--device)")


def test_a_batch_larger_than_its_split_is_checked_as_the_split(tmp_path, bench_proc):
    """A batch setting larger than a synthetic split makes batches of the split's size: only those need to fit."""
    r = bench_proc("run", "--out", tmp_path / "runs", *FAST, "--set", "train.eval_batch_size=1000000", "--set",
                   "data.test_clips=2")
    assert r.returncode == 0, r.stderr
    # measured, the run times batches of the settings' size: refused before any work, as before
    line = one_error_line(bench_proc("run", "--out", tmp_path / "measured", *TINY, "--method", "frozen", "--set",
                                     "train.eval_batch_size=1000000", "--set", "data.test_clips=2"))
    assert line.startswith("error: one batch of 1000000 clips"), line
    assert not (tmp_path / "measured").exists() or not any((tmp_path / "measured").rglob("*"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA bounds mmap on Linux only")
def test_memory_ceiling_is_set_restored_and_never_raised(monkeypatch):
    import resource

    from benchmark.memory import ENV, GPU_DRIVER_FILES, Ceiling, find_ceiling, memory_ceiling, parse_size

    assert [parse_size(t) for t in ("16G", "2048m", "1.5G", "1073741824", " 3 GiB ", "0", "0.0G")] == \
        [16 * 2**30, 2 * 2**30, 3 * 2**29, 2**30, 3 * 2**30, None, None]
    for bad in ("lots", "-1G", "1Q", "G", "1e3", "9" * 400):
        with pytest.raises(UserError, match=f"^{ENV}='{bad}' is not a size"):
            parse_size(bad)
    for small in ("512M", "0.1", "1023M"):
        with pytest.raises(UserError, match=f"^{ENV}='{small}' is below 1 GiB, too little for a model and a batch"):
            parse_size(small)
    before = resource.getrlimit(resource.RLIMIT_DATA)
    finite = [b for b in before if b != resource.RLIM_INFINITY]
    monkeypatch.setenv(ENV, "0")
    assert find_ceiling() is None
    monkeypatch.setenv(ENV, "999999999T")  # past what setrlimit takes: no ceiling rather than a traceback
    with memory_ceiling() as huge:
        assert huge is None or huge.bytes < 2**63
    monkeypatch.setenv(ENV, "64G")
    wanted = find_ceiling()  # 64 GiB beyond what this process maps now (and the margins)
    assert wanted.source == "env" and wanted.asked == 64 * 2**30 < wanted.bytes
    with memory_ceiling() as ceiling:
        assert ceiling.bytes == resource.getrlimit(resource.RLIMIT_DATA)[0]
        if min(finite, default=2**63) <= wanted.bytes:
            assert ceiling.source == "ulimit" and ceiling.bytes == min(finite)
        else:  # what the process maps may have grown a little since
            assert ceiling.source == "env" and abs(ceiling.bytes - wanted.bytes) < 2**26
        monkeypatch.setenv(ENV, "128G")
        with memory_ceiling() as inner:  # never raises a ceiling already in force, and says whose it is
            assert inner == Ceiling(ceiling.bytes, "ulimit")
            assert "ulimit -d" in inner.describe()
    assert resource.getrlimit(resource.RLIMIT_DATA) == before
    monkeypatch.delenv(ENV)
    default = find_ceiling()  # what the process maps + what the machine has available + margins
    assert (default is None) == any(Path(f).exists() for f in GPU_DRIVER_FILES)
    if default is not None:
        assert default.source == "available" and default.bytes > 2**30


def test_a_malformed_memory_ceiling_is_one_line(bench_proc, monkeypatch):
    monkeypatch.setenv("VTFPAR_MEMORY_LIMIT", "lots")
    assert "VTFPAR_MEMORY_LIMIT='lots' is not a size" in one_error_line(bench_proc("list"))


def test_a_run_that_fails_before_writing_leaves_no_folder(tmp_path):
    from benchmark.train import train_run

    cfg = load_config(None, {"run": {"out": str(tmp_path)}, "model": {"backbone": "nosuch"}}, None)
    with pytest.raises(UserError, match="unknown backbone"):
        train_run(cfg, progress=False, log=lambda *a, **k: None)
    assert list(tmp_path.iterdir()) == []


def test_results_honour_the_umask(finished, tmp_path):
    atomic_write_text(tmp_path / "a.txt", "x")
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == FILE_MODE
    for f in ("result.json", "model.pt"):
        assert stat.S_IMODE((finished / f).stat().st_mode) == FILE_MODE
    # a process started under another umask writes by that one: private under 077, group-writable under 002
    script = ("import os, stat, sys; os.umask(int(sys.argv[1], 8)); from pathlib import Path; "
              "from benchmark.writes import atomic_write_text; p = Path(sys.argv[2]); atomic_write_text(p, 'x'); "
              "print(oct(stat.S_IMODE(p.stat().st_mode)))")
    for umask, mode in (("077", "0o600"), ("002", "0o664")):
        r = subprocess.run([sys.executable, "-c", script, umask, str(tmp_path / f"{umask}.txt")], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert r.stdout.strip() == mode, r.stderr


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    atomic_write_json(path, {"v": 1})

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(UserError, match="No space left on device.*the previous file is intact"):
        atomic_write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary file left


def test_a_name_of_wide_characters_near_the_length_limit_is_written(tmp_path):
    """A file name of 63 four-byte characters (252 bytes) is one the file system takes: its temporary file's name,
    which repeats the start of it, must stay within 255 bytes too (cut by bytes, not by characters)."""
    path = tmp_path / ("\N{GRINNING FACE}" * 63)
    atomic_write_json(path, {"v": 1})
    assert json.loads(path.read_text()) == {"v": 1} and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_folder_that_cannot_be_created_names_where_it_was_to_be_made(tmp_path, bench_proc, finished):
    """``bench report --out RO/sub`` in a folder no file can be created in: the line names RO (a read-only file
    system here, which refuses root too), not only the report's own subfolder."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("mounting a read-only tmpfs needs root")
    try:
        line = one_error_line(bench_proc("report", "--runs", finished.parent, "--out", ro / "sub"))
    finally:
        subprocess.run(["umount", "--lazy", str(ro)], check=True)
    assert line == f"error: cannot write in {ro / 'sub'}: it cannot be created in {ro} (Read-only " \
        "file system); choose another --out", line


def test_a_frame_cache_that_cannot_be_made_or_written_is_one_line(small_disk, tmp_path):
    """data.frame_cache is made when the dataset is built and filled by loader workers: a file in its place, or a
    full disk, is one line naming it and the fix (not a worker's traceback), with no partial entry left."""
    import numpy as np

    from vtfpar.data import default_attributes
    from vtfpar.data.tracklets import TrackletDataset, _write_atomic

    (tmp_path / "afile").write_text("")
    with pytest.raises(UserError, match=f"^data.frame_cache {tmp_path / 'afile'} cannot be made \\(it is a file, not "
                                        "a folder\\); set data.frame_cache to a writable folder"):
        TrackletDataset([], default_attributes("synthetic"), 2, 32, False, frame_cache=tmp_path / "afile")
    cache = small_disk / "cache"
    TrackletDataset([], default_attributes("synthetic"), 2, 32, False, frame_cache=cache)
    with pytest.raises(UserError, match=f"^could not write the frame cache in {cache} \\(.*\\); set "
                                        'data.frame_cache to a writable folder with space, or to ""'):
        _write_atomic(cache / "entry.npy", np.zeros((3, 256, 256), np.float32))  # 768 KiB, then 1 MiB more
        _write_atomic(cache / "another.npy", np.zeros((3, 256, 256), np.float32))
    assert [p.name for p in cache.iterdir()] in ([], ["entry.npy"])  # no temporary file left


def test_pretrained_weights_that_do_not_fit_on_the_disk_are_one_line(small_disk):
    """The disk fills only when the trained weights are saved: one line naming the file, no pending file left.
    (A process of its own: pretraining sets torch's thread count.)"""
    out = small_disk / "w.safetensors"
    line = one_error_line(subprocess.run([*BENCH, "pretrain-clip", "--images", "64", "--heldout", "16", "--epochs",
                                          "1", "--batch-size", "32", "--no-progress", "--out", str(out)],
                                         capture_output=True, text=True, cwd=ROOT, timeout=300))
    assert line.startswith(f"error: could not write {out} (") and "No space left on device" in line, line
    assert line.endswith("the previous file is intact; free space there or choose another --out"), line
    assert list(small_disk.iterdir()) == []


def test_a_checkpoint_that_does_not_fit_on_the_disk_says_why_and_keeps_the_previous_one(small_disk):
    """A disk that fills during torch.save is reported by its cause, not torch's "unexpected pos" from
    inline_container.cc, and the previous checkpoint stays whole."""
    from benchmark.writes import atomic_torch_save

    path = small_disk / "checkpoint.pt"
    atomic_torch_save(path, {"epoch": 1})
    before = path.read_bytes()
    with pytest.raises(UserError) as err:
        atomic_torch_save(path, {"epoch": 2, "model": torch.zeros(1 << 19)})  # 2 MiB
    assert str(err.value) == f"could not write {path} (No space left on device); the previous file is intact; " \
        "free space there or write elsewhere"
    assert path.read_bytes() == before and [p.name for p in small_disk.iterdir()] == ["checkpoint.pt"]


def test_an_export_that_fills_the_disk_says_what_it_left(small_disk, bench_proc):
    out = small_disk / "export"
    r = bench_proc("data", "export", "--count", "200", "--out", out)
    line = one_error_line(r)
    assert re.fullmatch(rf"error: could not write {out}/test_0_(\d{{4}})/frame_00\d\.png \(No space left on device\): "
                        rf"the export stopped at tracklet (\d+) of 200, the \d+ before it are in {out} and labels.csv "
                        r"is not written for them; free space and rerun the same command \(it writes every tracklet "
                        r"again\), or choose another --out", line), line
    assert not (out / "labels.csv").exists()


def test_an_export_that_would_meet_a_file_in_its_way_stops_before_writing(tmp_path, bench_proc):
    """A file where the third tracklet's folder goes is found before any tracklet is written (a disk that fills
    halfway is said with where the export stopped: ``test_an_export_that_fills_the_disk_says_what_it_left``)."""
    (tmp_path / "test_0_0002").write_text("kept")
    line = one_error_line(bench_proc("data", "export", "--out", tmp_path))
    assert line == f"error: {tmp_path}/test_0_0002 is a file, where the export writes the frames of tracklet " \
        "test_0_0002; move it away or choose another --out", line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test_0_0002"]
    assert (tmp_path / "test_0_0002").read_text() == "kept"


def test_a_name_longer_than_the_file_system_takes_or_a_link_loop_is_one_line(tmp_path, bench_proc, finished):
    """Python 3.11's pathlib raises where a name is over 255 bytes or links lead back to themselves: one line, exit
    2, in every command; a sweep's report folder (named after --out) is checked before any run."""
    long = tmp_path / ("a" * 300)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for args in (("run", "--method", "frozen", "--out", long / "runs"), ("run", "--config", f"{long}.toml"),
                 ("data", "export", "--out", long), ("data", "check", "--dataset", "duke", "--data-root", long),
                 ("report", "--runs", finished.parent, "--out", long), ("eval", long),
                 ("predict", finished, long), ("report", "--runs", finished.parent, "--out", tmp_path / "loop"),
                 ("sweep", "--methods", "frozen", "--out", tmp_path / ("r" * 250))):
        line = one_error_line(bench_proc(*args))
        assert any(why in line for why in ("longer than", "lead back to themselves")), (args, line)
    assert not (tmp_path / ("r" * 250)).exists() or not any((tmp_path / ("r" * 250)).iterdir())
    near = tmp_path / ("n" * 251 + ".txt")  # at the limit: written, its temporary file's name kept short
    atomic_write_text(near, "x")
    assert near.read_text() == "x"


def test_an_output_folder_behind_a_link_to_nothing_names_the_link(tmp_path, bench_proc):
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    for args, start in ((("run", "--out", tmp_path / "link", *FAST), f"cannot write runs under {tmp_path / 'link'}: "),
                        (("data", "export", "--out", tmp_path / "link" / "x"),
                         f"cannot write in {tmp_path / 'link' / 'x'}: ")):
        assert one_error_line(bench_proc(*args)) == f"error: {start}{tmp_path / 'link'} is a symbolic link to " \
            f"{tmp_path / 'gone'}, which does not exist; create that folder, or choose another --out" + \
            (" (run.out)" if args[0] == "run" else "")
    assert not (tmp_path / "gone").exists()


def test_an_empty_data_root_for_eval_and_a_short_loader_annotation_say_what_to_give(tmp_path, bench_proc, finished):
    assert one_error_line(bench_proc("eval", finished, "--data-root", "")) == "error: --data-root is empty: give the " \
        "folder the dataset is in now, or leave --data-root out for the one the run recorded"
    from benchmark.loader_bench import DEFAULT_ANNOTATION

    if not DEFAULT_ANNOTATION.is_file():
        pytest.skip(f"{DEFAULT_ANNOTATION} (the public MARS-Attribute CSV) is not beside this checkout")
    short = tmp_path / "mars_attributes.csv"
    short.write_text("\n".join(DEFAULT_ANNOTATION.read_text().splitlines()[:3]) + "\n")  # header, two tracklets
    line = one_error_line(bench_proc("perf", "--loader", "--annotation", short, "--out", tmp_path))
    assert line.startswith(f"error: {short}: 2 tracklet rows, the loader measurement builds its tree from ") and \
        line.endswith("rows (the public one, mars_attributes.csv, has over 16,000)"), line


def test_perf_names_every_row_it_cannot_build_and_a_backbone_no_row_can_use_before_measuring(tmp_path, bench_proc):
    """Checked before the CLIP floor is timed, which on ViT-B/16 takes minutes before the first row."""
    r = bench_proc("perf", "--methods", "frozen,st_adapter,side_tuning", "--frames", "2", "--batch", "2", "--out",
                   tmp_path)
    assert one_error_line(r) == (
        "error: st_adapter cannot be measured with --frames 2 on clip-tiny (the shipped settings of --profile "
        "synthetic: st_adapter: temporal kernel size 3 does not fit 2 frames): leave it out of --methods (--methods "
        "frozen,side_tuning), or change --frames, --backbone or --profile")
    assert r.stdout == "" and not list(tmp_path.iterdir())  # refused before the first measurement
    r = bench_proc("perf", "--methods", "st_adapter", "--frames", "2", "--batch", "2", "--out", tmp_path / "a" / "b")
    assert r.returncode == 2 and not list(tmp_path.iterdir())  # the --out it made to check is not left behind
    r = bench_proc("perf", "--backbone", "RN50", "--methods", "frozen", "--frames", "1", "--batch", "2", "--out",
                   tmp_path)
    assert one_error_line(r) == "error: --backbone RN50: backbone image tower ModifiedResNet is not a ViT; use a ViT " \
        "CLIP model"
    assert r.stdout == "" and not list(tmp_path.iterdir())


@pytest.mark.parametrize("part", ["", ".partial"])
def test_a_folder_where_the_perf_table_goes_is_named_before_measuring(part, tmp_path, bench_proc):
    """Not after every row was measured, with only half of the table written."""
    from benchmark.perf import stem_of

    stem = stem_of({"backbone": "clip-tiny", "device": "cpu", "batch": 2, "frames": 2, "rows": ["frozen"]})
    (tmp_path / f"{stem}{part}.md").mkdir()
    r = bench_proc("perf", "--methods", "frozen", "--frames", "2", "--batch", "2", "--device", "cpu", "--out", tmp_path)
    assert one_error_line(r) == (f"error: --out {tmp_path}: {stem}{part}.md is a folder where this table is written; "
                                 "move it away, or choose another --out")
    assert r.stdout == "" and [p.name for p in tmp_path.iterdir()] == [f"{stem}{part}.md"]


def test_a_loader_batch_beyond_the_annotations_tracklets_names_batch_and_its_largest(tmp_path, bench_proc):
    from benchmark.loader_bench import DEFAULT_ANNOTATION

    if not DEFAULT_ANNOTATION.is_file():
        pytest.skip(f"{DEFAULT_ANNOTATION} (the public MARS-Attribute CSV) is not beside this checkout")
    short = tmp_path / "mars_attributes.csv"
    lines = DEFAULT_ANNOTATION.read_text().splitlines()[:401]  # header, 400 tracklets, one not text past 8 KiB
    short.write_bytes("\n".join(lines[:350]).encode() + b"\n\xff\n" + "\n".join(lines[351:]).encode() + b"\n")
    line = one_error_line(bench_proc("perf", "--loader", "--annotation", short, "--batch", "64", "--out", tmp_path))
    assert line == (f"error: --batch 64: the loader measurement builds its tree from 801 tracklets at this batch and "
                    f"{short} has 400; give --batch 31 or less with --loader")  # counted whatever a row holds
    short.write_text("\r".join(lines) + "\r")  # old Mac line endings, which the csv reader takes: counted alike
    line = one_error_line(bench_proc("perf", "--loader", "--annotation", short, "--batch", "64", "--out", tmp_path))
    assert line.startswith("error: --batch 64: ") and line.endswith(f"{short} has 400; give --batch 31 or less with "
                                                                    "--loader"), line


def test_two_exports_into_one_folder_at_once_keep_both_labels(tmp_path):
    procs = [subprocess.Popen([*BENCH, "data", "export", "--split", split, "--count", "20", "--out", str(tmp_path)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for split in ("train", "test")]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    names = [row.split(",", 1)[0] for row in (tmp_path / "labels.csv").read_text().splitlines()[1:]]
    assert sorted(names) == sorted(f"{split}_0_{i:04d}" for split in ("train", "test") for i in range(20))
    assert not (tmp_path / ".labels.lock").exists()


def test_an_interrupted_export_says_where_it_stopped_and_that_labels_csv_is_not_written(tmp_path):
    out = tmp_path / "export"
    proc = subprocess.Popen([*BENCH, "data", "export", "--count", "5000", "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not list(out.glob("*_0003")) and time.time() < deadline and proc.poll() is None:  # rows 0-2 are kept
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1]
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    (line,) = [ln for ln in err.splitlines() if ln.strip()]
    match = re.fullmatch(rf"stopped \(terminated\) at tracklet (\d+) of 5000: the (\d+) before it are in {out} and "
                         r"labels.csv is not written for them; rerun the same command to export them all \(it writes "
                         r"every tracklet again\)", line)
    assert match and int(match[1]) == int(match[2]) + 1 >= 4, line
    assert not (out / "labels.csv").exists() and not list(out.glob("**/*.tmp"))


@pytest.mark.parametrize("writer", ["folder", "through", "frame cache", "pretrained weights"])
def test_a_stop_just_as_a_temporary_file_is_made_leaves_none_behind(tmp_path, monkeypatch, writer):
    """SIGTERM landing just after the temporary file is made, before the call that made it returns (a frame of an
    export, a report table, a CSV written through to a stream, a frame cache entry, pretrained weights): the
    writer knows the file's name already, so its cleanup removes it, in a folder or in the temporary folder."""
    import numpy as np

    from benchmark import writes
    from benchmark.pretrain import _save_pending
    from benchmark.signals import Terminated, stop_on_signals
    from vtfpar.data.tracklets import _write_atomic

    made, real = [], os.open

    def open_then_stop(name, flags, *args, **kw):
        fd = real(name, flags, *args, **kw)
        if str(name).endswith((".tmp", ".pending.safetensors")) and flags & os.O_CREAT:
            made.append(str(name))
            os.kill(os.getpid(), signal.SIGTERM)  # its handler raises here, before the descriptor is returned
        return fd

    monkeypatch.setattr(os, "open", open_then_stop)
    target = tmp_path / "frame.png"
    if writer == "through":  # as --csv /dev/stdout is: written through from a file in the temporary folder
        monkeypatch.setattr(writes, "writes_through", lambda path: True)
    write = {"frame cache": lambda: _write_atomic(target, np.zeros(3, np.uint8)),
             "pretrained weights": lambda: _save_pending(torch.nn.Linear(2, 2), target)}.get(
        writer, lambda: writes.atomic_write_with(target, lambda tmp: Path(tmp).write_bytes(b"png")))
    with stop_on_signals(), pytest.raises(Terminated):
        write()
    assert len(made) == 1 and not os.path.exists(made[0]) and not target.exists()
    assert os.listdir(tmp_path) == []


def test_an_export_stopped_between_two_tracklets_says_where_as_one_stopped_inside_one(tmp_path, monkeypatch):
    """A signal lands wherever the export is: after a tracklet's frames, before its row is kept, it is said with
    the place it stopped, as inside a tracklet, not as a bare "stopped". Its labels row is where it lands here."""
    import benchmark.export as export
    from benchmark.signals import CommandStopped

    class Labels:
        def __init__(self, labels):
            self.labels = labels

        def __getitem__(self, i):
            if i == 2:
                raise KeyboardInterrupt
            return self.labels[i]

    class StoppedAtTheThirdRow(export.SyntheticPedestrians):
        def __init__(self, *args):
            super().__init__(*args)
            self.labels = Labels(self.labels)

    monkeypatch.setattr(export, "SyntheticPedestrians", StoppedAtTheThirdRow)
    out = tmp_path / "export"
    with pytest.raises(KeyboardInterrupt) as stopped:  # a bare one too, so that a failure fails only this test
        export.export_synthetic(out, split="test", count=5, frames=2, seed=0)
    assert isinstance(stopped.value, CommandStopped)
    assert str(stopped.value) == (f"stopped (interrupted) at tracklet 3 of 5: the 2 before it are in {out} and "
                                  "labels.csv is not written for them; rerun the same command to export them all (it "
                                  "writes every tracklet again)")
    assert not (out / "labels.csv").exists()


def test_an_export_refuses_a_folder_where_its_labels_go_before_writing(tmp_path, bench_proc):
    (tmp_path / "labels.csv").mkdir()
    line = one_error_line(bench_proc("data", "export", "--out", tmp_path))
    assert line == f"error: {tmp_path / 'labels.csv'} is a folder, where the export writes its labels; move it " \
        "away or choose another --out", line
    assert [p.name for p in tmp_path.iterdir()] == ["labels.csv"]


def test_writes_go_through_links_and_into_fifos_without_replacing_them(tmp_path):
    """`--csv link.csv` writes the link's target and keeps the link; `--csv /dev/stdout` (a FIFO here) is written
    into, not replaced by a regular file."""
    import threading

    from benchmark.writes import check_writable

    target = tmp_path / "real.csv"
    target.write_text("old")
    link = tmp_path / "link.csv"
    link.symlink_to(target.name)
    check_writable(link, "--csv", "predictions.csv")
    atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to("made.csv")
    atomic_write_text(dangling, "made")
    assert dangling.is_symlink() and (tmp_path / "made.csv").read_text() == "made"

    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    check_writable(fifo, "--csv", "predictions.csv")
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    atomic_write_text(fifo, "a,b\n1,2\n")
    reader.join(timeout=10)
    assert got == ["a,b\n1,2\n"] and stat.S_ISFIFO(fifo.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.csv", "link.csv", "made.csv", "pipe.csv",
                                                          "real.csv"]  # no temporary file left
    loop = tmp_path / "loop.csv"
    loop.symlink_to(loop.name)
    with pytest.raises(UserError, match="loop.csv is a loop of symbolic links"):
        atomic_write_text(loop, "x")
    assert loop.is_symlink()


@pytest.mark.parametrize("stdout", ["a", "w", "pipe"])
def test_a_write_to_dev_stdout_goes_to_the_stream(tmp_path, stdout):
    """`--csv /dev/stdout`: into a pipe, or appended to the file the shell sent stdout to (after what was printed
    before), never replacing that file."""
    code = ("import sys; print('before', flush=True); from benchmark.writes import atomic_write_text, "
            "check_writable; from pathlib import Path; check_writable(Path('/dev/stdout'), '--csv', 'p.csv'); "
            "atomic_write_text(Path('/dev/stdout'), 'a,b\\n'); print('after', flush=True)")
    if stdout != "pipe":  # `>> log.txt` and `> log.txt`
        log = tmp_path / "log.txt"
        with open(log, stdout) as f:
            subprocess.run([sys.executable, "-c", code], stdout=f, cwd=ROOT, check=True, timeout=60)
        assert log.read_text() == "before\na,b\nafter\n"
    else:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert r.returncode == 0 and r.stdout == "before\na,b\nafter\n", r.stderr


def test_a_second_process_for_the_same_run_exits_2_naming_the_owner(tmp_path):
    run_dir = run_dir_of(tmp_path)
    run_dir.mkdir(parents=True)
    with RunLock(run_dir, log=lambda *_: None):  # this test process trains the run
        line = one_error_line(bench("run", "--out", str(tmp_path), *FAST))
    assert f"pid {os.getpid()}" in line and "--wait" in line and not (run_dir / "result.json").exists()


def test_a_lock_left_by_an_ended_process_is_taken_over(tmp_path):
    run_dir = run_dir_of(tmp_path)
    run_dir.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / LOCK).write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid, "started": "then"}))
    r = bench("run", "--out", str(tmp_path), *FAST)
    assert r.returncode == 0, r.stderr
    assert f"left by pid {dead.pid}" in r.stdout and (run_dir / "result.json").is_file()
    assert not (run_dir / LOCK).exists()


def test_wait_waits_for_the_owner(tmp_path):
    holder = RunLock(tmp_path, log=lambda *_: None)
    holder.__enter__()
    threading.Timer(1.0, holder.__exit__, (None, None, None)).start()
    t0 = time.perf_counter()
    messages = []
    with RunLock(tmp_path, wait=True, log=messages.append, poll_seconds=0.05):
        assert time.perf_counter() - t0 >= 0.9
    assert "waiting for" in messages[0] and not (tmp_path / LOCK).exists()


def test_a_lock_still_held_by_the_children_of_an_ended_owner_is_taken_over_when_they_end(tmp_path):
    """Loader workers share their trainer's lock descriptor and outlive it by a moment: a rerun started in that
    moment waits for them instead of saying that the ended process trains the run."""
    code = textwrap.dedent(f"""
        import os, time
        from benchmark.lock import RunLock
        lock = RunLock({str(tmp_path)!r}, log=lambda *_: None).__enter__()
        worker = os.fork()
        if worker == 0:  # a worker: holds the inherited lock descriptor (not the pipes), ends 6 s later
            os.close(1), os.close(2)
            time.sleep(6)
            os._exit(0)
        print(os.getpid(), worker, flush=True)
        os._exit(0)  # the owner ends without unlocking
    """)
    owner = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    pid, worker = map(int, owner.stdout.split())
    assert Path(f"/proc/{worker}").exists()  # the lock is still held when the rerun starts
    messages = []
    with RunLock(tmp_path, log=messages.append):
        stat = Path(f"/proc/{worker}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"  # ended (maybe unreaped)
    assert messages == [f"taking over the lock of run {tmp_path.name} left by pid {pid} on {os.uname().nodename}, "
                        "which has ended"], messages


def test_a_run_whose_terminal_hangs_up_stops_with_129_and_its_checkpoint(tmp_path):
    """A closed terminal (ssh dropped): writes to it fail from then on, yet the run stops as for SIGTERM, exit 129,
    the last epoch's checkpoint intact, instead of dying of the first failed progress write."""
    import pty

    master, terminal = pty.openpty()
    args = ["run", "--out", str(tmp_path), "--method", "frozen", "--epochs", "500", "--progress", "--set",
            "data.train_clips=64", "--set", "data.test_clips=16", "--set", "data.num_workers=1", "--set",
            "measure.enabled=false"]

    def own_terminal() -> None:  # in the child, a session leader: the terminal becomes its controlling one
        import fcntl
        import termios

        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        fcntl.ioctl(1, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([*BENCH, *args], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal,
                            start_new_session=True, preexec_fn=own_terminal)
    os.close(terminal)
    closing = threading.Event()

    def drain() -> None:  # what a terminal does with the output, until it is closed
        import select

        with contextlib.suppress(OSError):
            while not closing.is_set():
                if select.select([master], [], [], 0.1)[0]:
                    os.read(master, 1 << 16)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    deadline = time.time() + 300
    while not list(tmp_path.glob("*/checkpoint.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    closing.set()
    reader.join()
    os.close(master)  # the terminal hangs up: the kernel sends SIGHUP, and writes to it fail with EIO
    assert proc.wait(timeout=120) == 129
    (ckpt,) = tmp_path.glob("*/checkpoint.pt")
    assert torch.load(ckpt, weights_only=True)["epoch"] >= 1


def test_sighup_is_left_ignored_under_nohup():
    from benchmark.signals import stop_on_signals

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with stop_on_signals():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, previous)


@pytest.mark.parametrize("signum,code,how", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGHUP, 129, "hung up")])
def test_a_signal_stops_with_one_line_naming_the_epoch_to_resume_from(tmp_path, signum, code, how):
    args = ["run", "--out", str(tmp_path), "--method", "frozen", "--epochs", "500", "--no-progress", "--set",
            "data.train_clips=64", "--set", "data.test_clips=16", "--set", "data.num_workers=1", "--set",
            "measure.enabled=false"]
    proc = subprocess.Popen([*BENCH, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,  # SIGHUP as a terminal sends it, even where tests run under nohup
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    deadline = time.time() + 300
    while not list(tmp_path.glob("*/checkpoint.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signum)  # as a scheduler or a terminal does: the trainer and its loader worker
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.strip()]
    assert line.startswith(f"stopped ({how}); rerun the same command to resume from epoch ")
    (ckpt,) = tmp_path.glob("*/checkpoint.pt")
    state = torch.load(ckpt, weights_only=True)
    assert line.endswith(f"epoch {state['epoch'] + 1}")


_STOPPED_AS_THE_CHECKPOINT_LANDS = """
import os
import signal
import sys
import benchmark.train
from benchmark import cli

saved = benchmark.train.atomic_torch_save

def save_then_stop(path, *args, **kwargs):  # a scheduler's SIGTERM landing the moment the checkpoint is on disk
    saved(path, *args, **kwargs)
    if path.name == "checkpoint.pt":
        os.kill(os.getpid(), signal.SIGTERM)

benchmark.train.atomic_torch_save = save_then_stop
sys.argv[0] = "bench"
cli.main()
"""


def test_a_stop_as_the_checkpoint_lands_names_the_epoch_that_checkpoint_resumes_from(tmp_path):
    """A signal between writing an epoch's checkpoint and counting the epoch done named the epoch before: the
    rerun then resumed from a later epoch than the line said."""
    r = subprocess.run([sys.executable, "-c", _STOPPED_AS_THE_CHECKPOINT_LANDS, "run", "--out", str(tmp_path),
                        *FAST, "--epochs", "3"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 143 and "Traceback" not in r.stderr, r.stderr[-2000:]
    (ckpt,) = tmp_path.glob("*/checkpoint.pt")
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    assert [ln for ln in r.stderr.splitlines() if ln.strip()] == [
        "stopped (terminated); rerun the same command to resume from epoch 2"]


def test_ctrl_c_reaching_a_finaliser_or_a_loader_worker_prints_nothing(monkeypatch):
    """Ctrl-C reaches the terminal's whole process group. In the trainer it may land inside a finaliser (a loader
    iterator shutting its workers down), where Python drops the exception with a traceback: not shown, and raised
    again at the next ``check_stop``. A forked loader worker ignores it (its trainer shuts it down) instead of
    raising it inside whatever finaliser it runs."""
    from benchmark import signals
    from benchmark.signals import check_stop, stop_on_signals

    dropped = []  # what Python would print as "Exception ignored in ..."
    monkeypatch.setattr(sys, "unraisablehook", dropped.append)
    monkeypatch.setitem(signals._requested, "signalled", False)  # put back after: later tests see no signal

    class InterruptedWhileCollected:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # the handler runs here, inside the finaliser

    with stop_on_signals():
        pid = os.fork()
        if pid == 0:  # as a loader worker is: forked inside, with the trainer's handlers
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.3)
                os.kill(os.getpid(), signal.SIGINT)  # ignored from the first on
                time.sleep(0.3)
            except KeyboardInterrupt:
                os._exit(3)
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        InterruptedWhileCollected()  # collected at once
        assert dropped == []
        with pytest.raises(KeyboardInterrupt):
            check_stop()
        signals._requested["stop"] = None  # raised and handled: an error in a finaliser now is shown again
        problem = type("Problem", (), {"__del__": lambda self: 1 / 0})
        problem()
        assert [type(e.exc_value) for e in dropped] == [ZeroDivisionError]
    assert sys.unraisablehook == dropped.append  # put back on leaving


def test_a_stop_that_lands_as_the_last_batch_is_done_is_raised_not_lost():
    """``_batches`` checks for a stop once more after its loader has shut down (where a signal may have been
    dropped in the iterator's finaliser): the final evaluation of a run, bench eval or predict, stop too."""
    from benchmark import signals
    from benchmark.train import _batches

    batches = _batches([1, 2])
    assert next(batches) == 1 and next(batches) == 2
    signals._requested["stop"] = KeyboardInterrupt  # what a signal dropped in that finaliser leaves
    try:
        with pytest.raises(KeyboardInterrupt):
            next(batches)
    finally:
        signals._requested["stop"] = None


class _WorkerPids(torch.utils.data.Dataset):
    def __len__(self):
        return 1000

    def __getitem__(self, i):
        time.sleep(0.01)
        return os.getpid()


def _kill_worker(pid: int) -> None:
    """SIGTERM from another process (a loader worker that its own trainer terminates exits quietly), then
    a wait until it has ended (a zombie: torch looks at it without reaping it) and its SIGCHLD is handled."""
    subprocess.run(["kill", "-TERM", str(pid)], check=True)
    with contextlib.suppress(OSError):
        for _ in range(200):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX":
                break
            time.sleep(0.02)
    time.sleep(0.3)


@pytest.mark.parametrize("stopping", [True, False])
def test_a_worker_killed_with_the_trainer_ends_quietly_and_alone_is_reported(monkeypatch, stopping):
    from torch.utils.data import DataLoader

    from benchmark.signals import Terminated, start_loader, stop_on_signals
    dropped = []  # what Python would print as "Exception ignored in ..." (e.g. from the iterator's finaliser)
    monkeypatch.setattr(sys, "unraisablehook", dropped.append)
    with stop_on_signals():
        batches = start_loader(DataLoader(_WorkerPids(), num_workers=1))
        (worker,) = next(batches).tolist()
        if stopping:  # a scheduler signals the process group: this process and its loader worker
            with pytest.raises(Terminated):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            _kill_worker(worker)
            del batches
        else:  # the worker alone dies: still an error
            with pytest.raises(RuntimeError, match=f"DataLoader worker \\(pid {worker}\\) is killed by signal"):
                _kill_worker(worker)
                next(batches)
            del batches
    assert dropped == []


class _ServedFds(torch.utils.data.Dataset):
    """Each item: the id of a file descriptor served by its worker's resource sharer, as a worker serves the
    tensors of a batch to the trainer."""

    def __len__(self):
        return 1

    def __getitem__(self, i):
        import multiprocessing.resource_sharer as sharer
        return sharer.DupFd(os.open(os.devnull, os.O_RDONLY))._id


def test_a_trainer_stopped_while_it_takes_a_batch_leaves_the_worker_quiet(capfd):
    """A trainer stopped between connecting to a worker for a batch's tensors and asking for them: the worker
    prints nothing (it printed the EOFError of the ended connection under the trainer's stop line)."""
    import multiprocessing.resource_sharer as sharer
    from multiprocessing import current_process
    from multiprocessing.connection import Client

    from benchmark.train import loader
    batches = iter(loader(_ServedFds(), 1, 1, None, False, torch.device("cpu")))
    (address,), key = next(batches)
    Client(address, authkey=current_process().authkey).close()  # the stopped trainer's connection
    handoff = sharer.DupFd.__new__(sharer.DupFd)
    handoff._id = (address, int(key))
    os.close(handoff.detach())  # served by the same thread once it has dealt with the ended connection
    del batches
    err = capfd.readouterr().err
    assert "EOFError" not in err and "Traceback" not in err, err


def test_a_quiet_worker_still_prints_every_other_exception(monkeypatch):
    from benchmark.signals import quiet_worker
    printed = []
    monkeypatch.setattr(sys, "excepthook", lambda *exc: printed.append(exc[0]))
    quiet_worker(0)
    for error in (EOFError, BrokenPipeError, ValueError):  # raised here, not in a resource sharer's thread
        try:
            raise error()
        except error:
            sys.excepthook(*sys.exc_info())
    assert printed == [EOFError, BrokenPipeError, ValueError]


def test_an_error_from_a_loader_worker_is_one_line():
    from torch.utils.data import DataLoader, Dataset

    class Broken(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            raise UserError("no readable frame in tracklet 0001C1T0001 (/data/0001): all 3 files failed")

    with pytest.raises(UserError) as err:
        next(iter(DataLoader(Broken(), num_workers=1)))
    assert one_line(err.value) == "no readable frame in tracklet 0001C1T0001 (/data/0001): all 3 files failed"


# ---------------------------------------------------------------------------------- property-based
SETTING_KEYS = ["run.seed", "run.method", "run.dataset", "model.fusion_width", "model.fusion_heads", "model.drop_path",
                "data.frames", "data.num_workers", "data.format", "data.eval_all_clips", "train.lr", "train.epochs",
                "train.amp", "train.threshold", "measure.iters", "methods.lora.rank", "methods.lora.targets",
                "methods.side_tuning.taps", "methods.vpt.variant", "nosection.key", "train", "a.b.c.d"]
VALUES = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=12), st.sampled_from(["[1, 2]", "['q', 'x']", "true", "nan", "-inf", "[", "{}",
                                                          "'deep'", "\"\"", "1e400"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(SETTING_KEYS), VALUES), max_size=4))
@example([("run.dataset", "[0]")])  # once looked up as a dataset profile name: TypeError (unhashable)
def test_any_set_values_give_a_config_or_a_user_error(pairs):
    with contextlib.suppress(UserError):
        load_config(None, {}, [f"{k}={v}" for k, v in pairs])


CSV_CELLS = st.one_of(st.integers(-3, 12).map(str), st.sampled_from(["", "x", "1.5", " 2", "-", "\"", "10**9"]))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(header=st.sampled_from([
    "person-id,camera,tracklet,Tops.c,Bottoms.c,Age,Tops.l,Bottoms.l,shoulder bag,backpack,hat,handbag,hair,gender,"
    "Bottoms.t", "person-id,camera,tracklet,Tops.c", "person_id,camera_id,tracklets_id," + ",".join(["c"] * 21), ""]),
    rows=st.lists(st.lists(CSV_CELLS, min_size=0, max_size=26), max_size=5))
def test_malformed_annotation_csvs_give_a_user_error_or_labels(tmp_path_factory, header, rows):
    from vtfpar.data.layouts import read_mars2019_csv, read_release_csv
    from vtfpar.data.mars import MARS43_ATTRIBUTES

    path = tmp_path_factory.mktemp("csv") / "mars_attributes.csv"
    path.write_text("\n".join([header, *(",".join(r) for r in rows)]) + "\n")
    for read in (read_mars2019_csv, lambda p: read_release_csv(p, "mars", MARS43_ATTRIBUTES)):
        with contextlib.suppress(UserError):
            read(path)


def test_an_interrupt_after_the_last_epoch_says_how_to_finish_and_the_rerun_does(tmp_path):
    """Ctrl-C while a trained run is measured: one line, exit 130; the rerun evaluates and writes the result
    from the last epoch's checkpoint instead of training again."""
    args = ["run", "--out", str(tmp_path), "--method", "frozen", "--epochs", "1", "--no-progress", "--set",
            "data.train_clips=32", "--set", "data.test_clips=16", "--set", "data.num_workers=0",
            "--set", "measure.iters=100000", "--set", "measure.flops=false"]
    proc = subprocess.Popen([*BENCH, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lines = []
    while proc.poll() is None and not any("measuring" in ln for ln in lines):
        lines.append(proc.stdout.readline())
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    (line,) = [ln for ln in err.splitlines() if ln.strip()]
    assert line.startswith("stopped (interrupted) with training done (epoch 1 of 1); rerun the same command to "
                           "finish it")
    assert list(tmp_path.glob("*/checkpoint.pt")) and not list(tmp_path.glob("*/result.json"))
    r = subprocess.run([*BENCH, *args[:-4], "--set", "measure.enabled=false"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout and "after epoch 1" in r.stdout, r.stdout
    (result,) = tmp_path.glob("*/result.json")
    assert json.loads(result.read_text())["status"] == "complete"


def test_an_interrupt_outside_a_run_is_one_line_too(tmp_path, bench_proc, monkeypatch):
    """Ctrl-C in any other command (here: while `bench eval` loads a run) is not a silent exit."""
    import benchmark.task

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(benchmark.task, "load_run", interrupted)
    r = bench_proc("eval", tmp_path)
    assert r.returncode == 130 and r.stderr.strip() == "stopped (interrupted)", r.stderr


def test_a_run_trained_on_a_gpu_is_evaluated_on_this_machine_with_device(finished, tmp_path, bench_proc):
    import shutil

    run_dir = tmp_path / finished.name
    shutil.copytree(finished, run_dir)
    result = json.loads((run_dir / "result.json").read_text())
    result["config"]["run"]["device"] = "cuda"
    (run_dir / "result.json").write_text(json.dumps(result))
    if not torch.cuda.is_available():
        assert "--device cpu" in one_error_line(bench_proc("eval", str(run_dir)))
    r = bench_proc("eval", str(run_dir), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert f"f1         {result['metrics']['f1']:.6f}" in r.stdout  # the same model, the same numbers


def test_the_stop_line_says_which_options_a_resuming_rerun_leaves_out():
    """``--force`` removes the checkpoint and ``--no-resume`` ignores it: "the same command" would start over."""
    from benchmark.signals import RunStopped, Terminated

    assert str(RunStopped(KeyboardInterrupt(), 3, 5)) == (
        "stopped (interrupted); rerun the same command to resume from epoch 3")
    stopped = RunStopped(Terminated(), 3, 5, ("--force", "--no-resume"))
    assert stopped.exit_code == 143 and str(stopped) == (
        "stopped (terminated); rerun the same command without --force and --no-resume to resume from epoch 3")
    for drop in ((), ("--force",), ("--no-resume",)):  # nothing to resume from: the same command starts it again
        assert str(RunStopped(Terminated(), 1, 5, drop)) == (
            "stopped (terminated) before its first epoch ended; rerun the same command to start it again")
    assert str(RunStopped(KeyboardInterrupt(), 6, 5, ("--force",))).startswith(
        "stopped (interrupted) with training done (epoch 5 of 5); rerun the same command without --force to finish it")


def test_an_undecodable_image_is_named_without_the_decoder_source(tmp_path):
    from vtfpar.data.video import read_images

    for name, data in (("a.png", b"not a png"), ("b.png", b"\x89PNG\r\n\x1a\n" + b"0" * 40),
                       ("c.jpg", b"\xff\xd8 not a jpeg"), ("d.png", b"\x89PNG\r\n\x1a\nxxxx")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError) as err:
            read_images([tmp_path / name])
        message = str(err.value)
        assert message.startswith(f"{tmp_path / name}: cannot decode this image (") and "\n" not in message
        assert ".cpp" not in message and "csrc" not in message, message


def test_a_folder_of_runs_given_for_one_run_names_one_to_give(tmp_path, bench_proc):
    from tests.test_report import _finished

    runs = tmp_path / "runs"
    (runs / "a_run").mkdir(parents=True)
    (runs / "a_run" / "result.json").write_text("{}")  # first by name, but no complete result: not the one named
    done = _finished(runs)
    from PIL import Image

    person = tmp_path / "person"
    person.mkdir()
    Image.new("RGB", (16, 32)).save(person / "frame_000.png")
    for command in (("eval", runs), ("predict", runs, person)):
        assert one_error_line(bench_proc(*command)) == (f"error: {runs} holds 2 runs, not one: give one of them, such "
                                                        f"as {done}")


def test_an_undecodable_video_is_named_once_and_its_reason_whole(tmp_path):
    from vtfpar.data.video import read_video

    path = tmp_path / ("a_long_folder_name_" * 4) / "clip.mp4"
    path.parent.mkdir()
    path.write_bytes(bytes(range(256)) * 12)
    with pytest.raises(UserError) as err:
        read_video(path, lambda n: [0])
    message = str(err.value)
    fix = "; check that it is a whole video file (ffprobe FILE says), or give a folder of its frames"
    assert message.startswith(f"{path}: cannot decode this video (") and message.endswith(f"){fix}"), message
    reason = message[len(f"{path}: cannot decode this video ("):-len(f"){fix}")]
    assert "a_long_folder_name" not in reason and len(reason) <= 120, message


def test_a_result_whose_config_was_edited_since_the_run_is_refused_by_eval(runs, tmp_path, bench_proc):
    """result.json records a digest of its config: eval (and predict, which loads a run the same way) refuse a
    file whose settings were changed since, whose metrics would be of another run than its id and weights say.
    Where the run is kept and the device it ran on are not part of it (the Ray driver rewrites them)."""
    import shutil

    copy = tmp_path / runs["frozen"][1].name
    shutil.copytree(runs["frozen"][1], copy)
    path = copy / "result.json"
    result = json.loads(path.read_text())
    result["config"]["run"].update(out="/elsewhere", device="cpu")
    path.write_text(json.dumps(result))
    assert bench_proc("eval", copy).returncode == 0
    result["config"]["train"]["threshold"] = 0.3
    path.write_text(json.dumps(result))
    r = bench_proc("eval", copy)
    assert r.returncode == 2 and " ".join(r.stderr.split()) == (
        f"error: {path}: its config is not the one run {copy.name} was made with (it was edited since; "
        "config_sha256 differs): restore it, or train the run again with bench run ... --force"), r.stderr


def test_a_path_that_is_a_loop_or_a_link_to_nothing_says_so(finished, tmp_path, bench_proc):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "gone").symlink_to(tmp_path / "nothing")
    for path, why in ((tmp_path / "a", "its symbolic links lead back to themselves"),
                      (tmp_path / "gone", f"a symbolic link to {tmp_path / 'nothing'}, which leads to nothing")):
        assert one_error_line(bench_proc("eval", path)) == (f"error: {path}: {why}; give a finished run directory "
                                                            "(results/runs/<run-id>)")
        assert one_error_line(bench_proc("predict", finished, path)) == f"error: {path}: {why}"


def test_backbones_whose_towers_bench_cannot_read_are_one_line_before_any_model_is_built(tmp_path, bench_proc):
    """open_clip lists them, so they pass for names: a Hugging Face text tower (fetched from the Hub before a model
    exists, a page of network errors offline) and CoCa's pooled image tower (a traceback where its attention is
    rebuilt), in bench perf, bench list (through a config file) and bench run."""
    hf = ("backbone 'roberta-ViT-B-32' has a Hugging Face text tower (roberta-base), which bench does not read: use a "
          "CLIP model with its own text transformer, such as ViT-B-16")
    coca = ("backbone 'coca_ViT-B-32' is a CoCa model, whose image tower ends in an attentional pooler that bench "
            "does not read: use a CLIP ViT model, such as ViT-B-16")
    (tmp_path / "coca.toml").write_text('[model]\nbackbone = "coca_ViT-B-32"\n')
    for args, line in ((("perf", "--backbone", "roberta-ViT-B-32", "--out", tmp_path), hf),
                       (("perf", "--backbone", "coca_ViT-B-32", "--out", tmp_path), coca),
                       (("list", "--config", tmp_path / "coca.toml"), f"{tmp_path / 'coca.toml'}: {coca}"),
                       (("run", "--backbone", "roberta-ViT-B-32", "--out", tmp_path), f"command line: {hf}")):
        assert one_error_line(bench_proc(*args)) == f"error: {line}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coca.toml"]


def test_perf_tables_and_pretrained_weights_are_not_written_among_runs(tmp_path, bench_proc):
    """bench perf's tables and pretrain-clip's weights, card and record went into a run's folder, beside its result
    and weights, or among a runs tree's run folders, as --out took them: refused before any work, as bench report,
    bench predict and bench data export refuse theirs."""
    from benchmark.results import check_not_among_runs

    runs, r1, r2 = tmp_path / "runs", "mars_lora_ViT-B-16_s0_0123456789", "mars_lora_ViT-B-16_s1_abcdef0123"
    (runs / r1).mkdir(parents=True)
    (runs / r1 / "result.json").write_text("{}")
    (runs / r2).mkdir()
    (runs / r2 / "checkpoint.pt").write_bytes(b"")  # a run stopped in its first training is a run too
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    weights = ("pretrain-clip", "--images", "64", "--batch-size", "32", "--no-progress", "--out")
    for args, line in (
            (("perf", "--methods", "frozen", "--out", runs / r1),
             f"--out {runs / r1} is the run folder {runs / r1}, among its files; write the tables elsewhere"),
            (("perf", "--methods", "frozen", "--out", runs / r2 / "perf"),
             f"--out {runs / r2 / 'perf'} is inside the run folder {runs / r2}, among its files; write the tables "
             "elsewhere"),
            (("perf", "--methods", "frozen", "--out", runs),
             f"--out {runs} holds runs ({r1}, ...); write the tables in a folder of its own"),
            ((*weights, runs / r1 / "w.safetensors"),
             f"--out {runs / r1 / 'w.safetensors'} is inside the run folder {runs / r1}, among its files; write the "
             "weights elsewhere"),
            ((*weights, runs / "w.safetensors"),
             f"--out {runs / 'w.safetensors'} is among the run folders of {runs} ({r1}, ...); write the weights in a "
             "folder of its own")):
        assert one_error_line(bench_proc(*args)) == f"error: {line}"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    # another tool's checkpoint.pt or result.json, in a folder not named as a run, makes no run of it
    other = tmp_path / "other"
    (other / "model").mkdir(parents=True)
    for name in ("checkpoint.pt", "result.json"):
        (other / name).write_text("{}")
        (other / "model" / name).write_text("{}")
    check_not_among_runs(other / "perf", "--out", "the tables")
    check_not_among_runs(other, "--out", "the tables")
    check_not_among_runs(other / "w.safetensors", "--out", "the weights", is_file=True)


def test_a_tokenizer_from_the_hub_that_cannot_be_fetched_is_one_line_before_any_model_is_built(
        tmp_path, bench_proc, monkeypatch):
    """CLIPA's text tower is open_clip's own, but its tokenizer is BERT's, which transformers fetches from the Hub:
    without network that was a page of retries and a traceback, after minutes spent building a ViT-L."""
    import huggingface_hub
    import open_clip

    from vtfpar.backbone import clip_tokenizer

    if isinstance(huggingface_hub.try_to_load_from_cache("bert-base-uncased", "tokenizer_config.json"), str):
        pytest.skip("bert-base-uncased's tokenizer is in this machine's Hugging Face cache")
    monkeypatch.setattr("vtfpar.backbone._hub_reachable", lambda: False)  # no network, as here and in CI

    def built(*args, **kwargs):
        raise AssertionError("a model was built before its tokenizer was fetched")

    monkeypatch.setattr(open_clip, "create_model", built)
    line = ("could not fetch backbone ViT-L-14-CLIPA's tokenizer 'bert-base-uncased' from Hugging Face (OSError; no "
            "network?): fetch it once where you have network (it is then cached under ~/.cache/huggingface), or use a "
            "CLIP model with its own tokenizer, such as ViT-B-16")
    (tmp_path / "clipa.toml").write_text('[model]\nbackbone = "ViT-L-14-CLIPA"\npretrained = "none"\n')
    for args in (("run", "--backbone", "ViT-L-14-CLIPA", "--pretrained", "none", "--out", tmp_path / "runs"),
                 ("list", "--config", tmp_path / "clipa.toml")):
        assert one_error_line(bench_proc(*args)) == f"error: {line}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clipa.toml"]

    def needs_a_package(*args, **kwargs):
        raise ImportError("the tokenizer needs sentencepiece")

    monkeypatch.setattr(open_clip, "get_tokenizer", needs_a_package)  # not the network: not blamed on it
    with pytest.raises(UserError, match=re.escape(
            "could not build backbone ViT-L-14-CLIPA's tokenizer 'bert-base-uncased' (ImportError: the tokenizer needs "
            "sentencepiece); use a CLIP model with its own tokenizer")):
        clip_tokenizer("ViT-L-14-CLIPA")


def test_links_in_a_loop_are_said_as_such_where_a_folder_or_file_is_given(tmp_path, bench_proc):
    """Not as a link to a folder "which does not exist" (it does) with "create that folder" as the fix, nor as a
    path not found: for an --out, a dataset root, an annotation and the loader measurement's --annotation."""
    loop, other = tmp_path / "a", tmp_path / "b"
    loop.symlink_to(other)
    other.symlink_to(loop)
    loops = f"{loop}: its symbolic links lead back to themselves"
    for args, line in (
            (("perf", "--methods", "frozen", "--out", loop / "tables"),
             f"cannot write in {loop / 'tables'}: the symbolic links of {loop} lead back to themselves; mend them, or "
             "choose another --out"),
            (("run", "--method", "frozen", "--out", loop),
             f"cannot write runs under {loop}: the symbolic links of {loop} lead back to themselves; mend them, or "
             "choose another --out (run.out)"),
            (("data", "check", "--dataset", "mars", "--data-root", loop),
             f"dataset root {loops} (pass an existing folder with --data-root)"),
            (("data", "check", "--dataset", "mars", "--data-root", tmp_path, "--set", f"data.annotation={loop}"),
             f"annotation file {loops} (set data.annotation to the label CSV)"),
            (("perf", "--loader", "--annotation", loop),
             f"--annotation {loops}; give a MARS-Attribute CSV (mars_attributes.csv of "
             "github.com/VisualComputingInstitute/MARS-Attribute)")):
        assert one_error_line(bench_proc(*args)) == f"error: {line}"


def test_an_export_that_fills_the_disk_in_its_first_tracklet_does_not_say_nothing_was_written(small_disk, bench_proc):
    """The frames of the first tracklet written before the disk filled stay: the line says where the export stopped
    and that no labels.csv was written, not that nothing was."""
    (small_disk / "filler").write_bytes(bytes((1 << 20) - (24 << 10)))  # 24 KiB left: a frame or two of 64 px
    out = small_disk / "export"
    line = one_error_line(bench_proc("data", "export", "--count", "3", "--frames", "8", "--out", out))
    assert re.fullmatch(rf"error: could not write {out}/test_0_0000/frame_00\d\.png \(No space left on device\): the "
                        r"export stopped at tracklet 1 of 3, labels.csv is not written; free space and rerun the same "
                        r"command \(it writes every tracklet again\), or choose another --out", line), line
    assert list((out / "test_0_0000").glob("frame_*.png")) and not (out / "labels.csv").exists()


def test_paths_this_user_cannot_read_end_in_one_line_naming_them(finished, tmp_path):
    """A run folder, a runs folder, a frame folder, a video or a checkpoint without read permission (Python's
    ``Path.is_file`` raises there instead of answering False; a file that cannot be opened is not a corrupt one to
    delete): one line naming the path and the fix, exit 2, not a traceback, and the file kept."""
    from benchmark.export import export_synthetic
    from tests.test_predict import FRAMES

    run, readable, runs = tmp_path / "run", tmp_path / "readable", tmp_path / "runs"
    shutil.copytree(finished, run)
    shutil.copytree(finished, readable)
    shutil.copytree(finished, tmp_path / "closed")
    result = tmp_path / "closed" / "result.json"
    runs.mkdir()
    (folder,) = export_synthetic(tmp_path / "frames", split="test", count=1, frames=FRAMES, seed=7, video=True)
    video = folder.with_suffix(".mp4")
    checkpoint = run_dir_of(tmp_path / "resumed") / "checkpoint.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"epoch 3 of 5")
    # root reads whatever the mode bits say: run bench without the capabilities that let it
    unprivileged = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    cases = [(["eval", run], run), (["report", "--runs", runs, "--out", tmp_path / "report"], runs),
             (["predict", readable, folder], folder), (["predict", readable, video], video),
             (["run", "--out", tmp_path / "resumed", *FAST], checkpoint), (["eval", result.parent], result)]
    batch = tmp_path / "batch"  # a frame folder it may read, and one it may not
    shutil.copytree(folder, batch / "open")
    shutil.copytree(folder, batch / "closed")
    for path in (run, runs, folder, video, checkpoint, result, batch / "closed"):
        path.chmod(0)
    try:
        for args, path in cases:
            r = subprocess.run([*unprivileged, *BENCH, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                               timeout=300)
            assert r.returncode == 2, r.stderr
            (line,) = [ln for ln in r.stderr.splitlines() if ln.strip()]
            assert line.startswith(f"error: {path}: ") and "permission denied" in line, line
            assert line.endswith("fix its permissions, or give another path"), line
        # A batch goes on past the input it may not read: one line for it, the others predicted, exit code 1.
        r = subprocess.run([*unprivileged, *BENCH, "predict", str(readable), str(batch), "--csv",
                            str(tmp_path / "p.csv")], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 1, r.stderr
        assert [ln for ln in r.stderr.splitlines() if ln.startswith("error:")] == [
            f"error: {batch / 'closed'}: cannot list its frames (permission denied): fix its permissions, or give "
            "another path"], r.stderr
        assert [row.split(",")[0] for row in (tmp_path / "p.csv").read_text().splitlines()[1:]] == [
            str(batch / "open")]
    finally:
        for path in (run, runs, folder, video, checkpoint, result, batch / "closed"):
            path.chmod(0o755)
    assert checkpoint.read_bytes() == b"epoch 3 of 5"


def test_a_run_whose_out_is_one_run_folder_stops_before_training(finished, tmp_path, bench_proc):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = sorted(p.name for p in run.iterdir())
    assert one_error_line(bench_proc("run", "--out", run, *FAST)) == (
        f"error: --out {run} is one run's folder: this run would be trained inside it; give the folder that holds the "
        f"run folders (such as {tmp_path})")
    assert sorted(p.name for p in run.iterdir()) == before


@pytest.mark.parametrize("setting", ["methods.lora.rank=99999999999999999999", "methods.aim.ratio=1e300",
                                     "methods.vpt.tokens=9223372036854775807"])
def test_a_size_past_what_torch_can_allocate_is_one_line_and_writes_nothing(setting, tmp_path, bench_proc):
    """torch does not call these out of memory (a TypeError or RuntimeError about overflowing a 64-bit size): the
    same one line as a size that does not fit, naming what to lower, exit 2."""
    method = setting.split(".")[1]
    line = one_error_line(bench_proc("run", "--method", method, "--dataset", "synthetic", "--set", setting,
                                     "--out", tmp_path / "runs", "--epochs", "1"))
    assert line.startswith("error: out of memory (a tensor size past what torch can allocate): lower the batch"), line
    assert "methods.<method>.* sizes" in line
    assert not (tmp_path / "runs").exists()

