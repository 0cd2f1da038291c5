"""Training end to end through ``train_run``: learning, exact reload, resumability, checkpoints."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

import methods
from benchmark.lock import RunLock
from benchmark.results import CHECKPOINT, WEIGHTS, read_result
from benchmark.step import lr_factor
from benchmark.task import load_run
from benchmark.train import evaluate, train_run
from tests.conftest import learn_config as _cfg
from tests.conftest import tiny_config, tiny_model
from vtfpar.fusion import SHARED_START
from vtfpar.loss import WeightedBCE


@pytest.mark.parametrize("method", methods.list_methods())
def test_each_method_learns_above_the_prior_baselines(runs, method):
    result, _ = runs[method]
    bar = max(result["baselines"]["all_positive"]["f1"], result["baselines"]["majority"]["f1"])
    assert result["metrics"]["f1"] > bar + 0.02, (method, result["metrics"]["f1"], bar)
    assert result["history"][-1]["loss"] < result["history"][0]["loss"]


@pytest.mark.parametrize("method", methods.list_methods())
def test_saved_run_reloads_and_reproduces_metrics_exactly(runs, method):
    result, run_dir = runs[method]
    saved = torch.load(run_dir / WEIGHTS, map_location="cpu", weights_only=True)
    p = load_run(run_dir)
    trainable = {n for n, q in p.model.named_parameters() if q.requires_grad}
    frozen = {n for n, q in p.model.named_parameters() if not q.requires_grad}
    assert trainable <= set(saved["state"]) and not (frozen & set(saved["state"]))
    assert saved["backbone"] == "clip-tiny" and saved["method"] == method
    again = evaluate(p)
    for k in ("f1", "mA", "accuracy", "precision", "recall"):
        assert again[k] == result["metrics"][k], k


def test_result_schema(runs):
    result, run_dir = runs["side_tuning"]
    assert read_result(run_dir) == result
    for key in ("method", "dataset", "backbone", "seed", "config", "env", "metrics", "params", "history",
                "baselines"):
        assert key in result
    for key in ("f1", "mA", "accuracy", "precision", "recall", "per_attribute"):
        assert key in result["metrics"]
    assert {"python", "torch", "open_clip", "peft", "git_commit", "device"} <= set(result["env"])
    assert result["params"]["trainable"] < result["params"]["total"]
    # the side networks' own parameters: all that trains but the fusion and head (no video projection: their
    # tokens have the fusion's width)
    side = load_run(run_dir).model.encoder
    assert result["params"]["method"] == sum(p.numel() for p in side.parameters() if p.requires_grad) > 0
    assert runs["frozen"][0]["params"]["method"] == 0
    assert len(result["history"]) == result["config"]["train"]["epochs"] and result["text_encoder_calls"] == 1
    # Each epoch's lr is the rate its last step trained at (the next step's would be a rate no step of the last
    # epoch used): learn_config's 192 clips make 12 steps of 16 an epoch.
    train = SimpleNamespace(**result["config"]["train"])
    assert [h["lr"] for h in result["history"]] == pytest.approx(
        [train.lr * lr_factor(12 * e - 1, 12, train) for e in range(1, train.epochs + 1)], rel=1e-12)
    assert result["config"]["method"]["name"] == "side_tuning"
    assert result["fusion_start"] == SHARED_START
    assert not (run_dir / CHECKPOINT).exists()


def test_a_run_on_the_official_schedule_trains_each_epoch_at_the_paper_codes_rate(tmp_path):
    """``train.schedule = "official"`` through a run: epoch i trains at the rate of t = i (warm-up counted from t = 0,
    the cosine over the whole run, the floor in the last epoch), every step of it, as the history records."""
    import math

    cfg = tiny_config("frozen", out=str(tmp_path), epochs=3, warmup_epochs=2.0, lr=1e-3, warmup_lr=1e-5,
                      min_lr=2e-6, schedule="official")
    cfg.data.train_clips, cfg.data.test_clips = 16, 8
    result, _ = train_run(cfg, progress=False, log=lambda *_: None)
    assert [h["lr"] for h in result["history"]] == pytest.approx(
        [1e-5 + (1e-3 - 1e-5) / 2, 2e-6 + 0.5 * (1e-3 - 2e-6) * (1 + math.cos(math.pi * 2 / 3)), 2e-6], rel=1e-12)
    assert result["config"]["train"]["schedule"] == "official"


def test_readme_names_every_field_of_a_result(runs):
    """README's list of what a ``result.json`` holds names each of its fields (and those of ``metrics`` and
    ``data``), so a field added to the result is documented with it."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    listed = readme.split("- `result.json` (schema")[1].split("- `model.pt`")[0]
    result, _ = runs["side_tuning"]
    in_words = {"train_tracklets", "test_tracklets", "attributes", "sentences"}  # "tracklet counts, attribute names"
    fields = {*result, *result["metrics"], *result["data"]} - in_words
    assert [f for f in sorted(fields) if f"`{f}`" not in listed] == []


def _stop_on_second_evaluation(monkeypatch):
    """Make training's second evaluation a Ctrl-C (after epoch 1's checkpoint); returns the real evaluate."""
    import benchmark.train as train

    real, calls = train.evaluate, {"n": 0}

    def stop_on_second_eval(p, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(p, *a, **k)

    monkeypatch.setattr(train, "evaluate", stop_on_second_eval)
    return real


def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    import benchmark.train as train

    def small(out):
        return _cfg("side_tuning", out, train_clips=48, epochs=3, eval_every=1)

    reference, _ = train_run(small(tmp_path / "straight"), progress=False, log=lambda *_: None)
    cfg = small(tmp_path / "interrupted")
    real = _stop_on_second_evaluation(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, progress=False, log=lambda *_: None)
    run_dir = tmp_path / "interrupted" / cfg.run_id()
    assert (run_dir / CHECKPOINT).is_file() and not (run_dir / "result.json").exists()
    monkeypatch.setattr(train, "evaluate", real)
    messages = []
    resumed, _ = train_run(cfg, progress=False, log=messages.append)
    assert any("resuming" in str(m) for m in messages)
    assert resumed["metrics"]["f1"] == reference["metrics"]["f1"]
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in reference["history"]]


def test_a_run_resumed_from_a_checkpoint_without_a_fusion_start_records_what_can_be_told(tmp_path, monkeypatch):
    """A checkpoint that records how labels were read but no fusion start was written after fusion and head
    started from the seed alone, before checkpoints recorded it: the resumed run records the shared start. One
    that records neither may be older than the shared start: the run records that it cannot be told (None)."""
    import benchmark.train as train

    cfg = _cfg("frozen", tmp_path, train_clips=48, epochs=2, eval_every=1)
    real = _stop_on_second_evaluation(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, progress=False, log=lambda *_: None)
    checkpoint = tmp_path / cfg.run_id() / CHECKPOINT
    saved = torch.load(checkpoint, weights_only=True)
    assert saved.pop("fusion_start") == SHARED_START
    monkeypatch.setattr(train, "evaluate", real)
    for drop, recorded in (((), SHARED_START), (("labels_read",), None)):
        torch.save({k: v for k, v in saved.items() if k not in drop}, checkpoint)
        resumed, _ = train_run(cfg, progress=False, log=lambda *_: None)
        assert resumed["fusion_start"] == recorded and read_result(tmp_path / cfg.run_id())["fusion_start"] == recorded
        (tmp_path / cfg.run_id() / "result.json").unlink()


def test_an_interrupted_force_run_resumes_and_keeps_the_earlier_result_until_then(tmp_path, monkeypatch):
    """``--force`` trains a complete run again; stopped, the rerun without --force resumes it (the earlier
    result is set aside, not in the way) and the new result replaces the earlier one."""
    import json

    import benchmark.train as train

    cfg = _cfg("frozen", tmp_path, train_clips=48, epochs=2, eval_every=1)
    first, _ = train_run(cfg, progress=False, log=lambda *_: None)
    run_dir = tmp_path / cfg.run_id()
    earlier = (run_dir / "result.json").read_text()
    real = _stop_on_second_evaluation(monkeypatch)
    with pytest.raises(KeyboardInterrupt, match="rerun the same command without --force to resume from epoch 2"):
        train_run(cfg, force=True, progress=False, log=lambda *_: None)
    assert (run_dir / "result.previous.json").read_text() == earlier and not (run_dir / "result.json").exists()
    assert (run_dir / CHECKPOINT).is_file()
    monkeypatch.setattr(train, "evaluate", real)
    messages = []
    again, _ = train_run(cfg, progress=False, log=messages.append)
    assert any("resuming" in str(m) for m in messages)
    assert again["metrics"]["f1"] == first["metrics"]["f1"]  # seeded: the same run
    assert json.loads((run_dir / "result.json").read_text())["run_id"] == cfg.run_id()
    assert not (run_dir / "result.previous.json").exists() and not (run_dir / CHECKPOINT).exists()
    # A forced attempt that fails (nothing to resume into) leaves the complete result where it was.
    now = (run_dir / "result.json").read_text()

    def fail(p, *a, **k):
        raise RuntimeError("the loss is nan")

    monkeypatch.setattr(train, "evaluate", fail)
    with pytest.raises(RuntimeError, match="the loss is nan"):
        train_run(cfg, force=True, progress=False, log=lambda *_: None)
    assert (run_dir / "result.json").read_text() == now and not (run_dir / "result.previous.json").exists()


def test_a_checkpoint_copied_in_from_another_run_is_refused(tmp_path, monkeypatch):
    """A checkpoint names its run, as model.pt does: one copied into another seed's folder is not resumed as that
    run's (its first epochs would be the other seed's), and it stays where it was."""
    import shutil
    from dataclasses import replace

    from vtfpar.errors import UserError

    cfg = _cfg("frozen", tmp_path, train_clips=48, epochs=2, eval_every=1)
    _stop_on_second_evaluation(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, progress=False, log=lambda *_: None)
    other = replace(cfg, run=replace(cfg.run, seed=1))
    (tmp_path / other.run_id()).mkdir()
    copied = shutil.copy(tmp_path / cfg.run_id() / CHECKPOINT, tmp_path / other.run_id() / CHECKPOINT)
    with pytest.raises(UserError) as err:
        train_run(other, progress=False, log=lambda *_: None)
    assert str(err.value) == f"{copied} is the checkpoint of run {cfg.run_id()}, not of run {other.run_id()} whose " \
        "folder holds it: delete it, or train the run again with bench run ... --no-resume"
    assert Path(copied).read_bytes() == (tmp_path / cfg.run_id() / CHECKPOINT).read_bytes()


def test_a_checkpoint_file_is_part_of_a_run_by_its_contents(tmp_path):
    """A local CLIP checkpoint replaced under the same name is other weights: another run id (not a skip as
    complete), and the earlier run is not evaluated on the new weights."""
    import shutil

    from safetensors.torch import load_file, save_file

    from vtfpar.errors import UserError

    weights = tmp_path / "w.safetensors"
    shutil.copy(Path(methods.__file__).resolve().parents[1] / "vtfpar" / "weights" / "clip-tiny-synthetic.safetensors",
                weights)
    def config():
        cfg = _cfg("frozen", tmp_path / "runs", train_clips=32, epochs=1)
        cfg.model.pretrained = str(weights)
        return cfg

    cfg = config()
    first = cfg.run_id()
    result, _ = train_run(cfg, progress=False, log=lambda *_: None)
    assert len(result["pretrained_sha256"]) == 64
    state = load_file(weights)
    name = next(iter(state))
    state[name] = state[name] + 0.01
    save_file(state, weights)
    assert config().run_id() != first
    assert cfg.run_id() == first  # a config keeps the weights it was made for (a run's id while it trains)
    with pytest.raises(UserError, match=f"is not the checkpoint run {first} was trained on"):
        load_run(tmp_path / "runs" / first)


def test_a_run_finds_its_checkpoint_file_from_any_folder_and_where_it_has_moved(tmp_path, monkeypatch, bench_proc):
    """``--pretrained w.safetensors`` names a file relative to the folder the run was started in: eval and predict
    from another folder use the absolute path the run recorded; once the file has moved they say to pass
    ``--pretrained`` its new place, which must hold the same weights."""
    import shutil

    from benchmark.task import load_model
    from vtfpar.errors import UserError

    shutil.copy(Path(methods.__file__).resolve().parents[1] / "vtfpar" / "weights" / "clip-tiny-synthetic.safetensors",
                tmp_path / "w.safetensors")
    monkeypatch.chdir(tmp_path)
    cfg = _cfg("frozen", tmp_path / "runs", train_clips=32, epochs=1)
    cfg.model.pretrained = "w.safetensors"
    result, _ = train_run(cfg, progress=False, log=lambda *_: None)
    run = tmp_path / "runs" / cfg.run_id()
    assert result["pretrained_file"] == str((tmp_path / "w.safetensors").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_run(run).cfg.model.pretrained == result["pretrained_file"]
    assert load_model(run, "cpu")[1].model.pretrained == result["pretrained_file"]
    (tmp_path / "moved").mkdir()
    (tmp_path / "w.safetensors").rename(tmp_path / "moved" / "w.safetensors")
    for load in (load_run, load_model):
        with pytest.raises(UserError) as err:
            load(run)
        assert str(err.value) == (f"run {run.name} was trained from the checkpoint file {result['pretrained_file']}, "
                                  f"which is not here: pass --pretrained the file where it is now (sha256 "
                                  f"{result['pretrained_sha256'][:12]}...)")
    assert load_run(run, pretrained="../moved/w.safetensors").cfg.model.pretrained == "../moved/w.safetensors"
    assert load_model(run, "cpu", pretrained=str(tmp_path / "moved" / "w.safetensors"))[1].run.method == "frozen"
    r = bench_proc("eval", run, "--pretrained", tmp_path / "moved" / "w.safetensors")  # from the repository root
    assert r.returncode == 0 and r.stdout.startswith("f1 "), r.stderr
    (tmp_path / "person").mkdir()
    from PIL import Image

    Image.new("RGB", (64, 128), (90, 60, 30)).save(tmp_path / "person" / "0001.jpg")
    gone = tmp_path / "w.safetensors"
    r = bench_proc("predict", run, tmp_path / "person", "--pretrained", gone)
    assert r.returncode == 2 and r.stderr.startswith(f"error: --pretrained {gone}: no such file"), r.stderr
    with pytest.raises(UserError, match=r"^--pretrained \.\./w.safetensors: no such file; give the checkpoint file"):
        load_run(run, pretrained="../w.safetensors")
    with pytest.raises(UserError, match="^--pretrained is empty: give the checkpoint file where it is now"):
        load_run(run, pretrained=" ")
    other = tmp_path / "other.safetensors"
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "moved" / "w.safetensors")
    save_file({k: v + 0.01 for k, v in state.items()}, other)
    with pytest.raises(UserError, match=f"is not the checkpoint run {run.name} was trained on .*: restore that file, "
                                        "pass --pretrained the one it was trained on, or train the run again"):
        load_run(run, pretrained=str(other))


def test_a_result_names_the_checkpoint_file_it_started_from_though_it_moved_since(tmp_path):
    """The sha256 and the absolute path are taken together when the run id is first asked for: a file moved while
    the run trains (or before a sweep's run fails) is still recorded, not a traceback at the end of training."""
    import shutil

    from benchmark.results import _identity

    weights = tmp_path / "w.safetensors"
    shutil.copy(Path(methods.__file__).resolve().parents[1] / "vtfpar" / "weights" / "clip-tiny-synthetic.safetensors",
                weights)
    cfg = _cfg("frozen", tmp_path / "runs", train_clips=32, epochs=1)
    cfg.model.pretrained = str(weights)
    cfg.run_id()
    weights.rename(tmp_path / "moved.safetensors")
    identity = _identity(cfg)
    assert identity["pretrained_file"] == str(weights.resolve()) and len(identity["pretrained_sha256"]) == 64


def test_pretrained_is_refused_for_a_run_that_did_not_start_from_a_file(tmp_path):
    from vtfpar.errors import UserError

    cfg = _cfg("frozen", tmp_path, train_clips=32, epochs=1)
    train_run(cfg, progress=False, log=lambda *_: None)
    with pytest.raises(UserError) as err:
        load_run(tmp_path / cfg.run_id(), pretrained="w.safetensors")
    assert str(err.value) == (f"--pretrained w.safetensors: run {cfg.run_id()} did not start from a checkpoint file "
                              f"it recorded (model.pretrained is '{cfg.model.pretrained}'); drop --pretrained")


def test_the_temporaries_found_are_those_an_atomic_write_makes(tmp_path):
    """The pattern of a killed writer's temporaries is the name ``atomic_write_with`` gives them, and nothing else."""
    from benchmark.writes import atomic_write_with, left_temporaries

    decoys = [".result.json.abc.tmp", ".result.jsonx.abcdefgh.tmp", ".result.json.abcdefgh.tmp.keep",
              "result.json.abcdefgh.tmp", ".result.json.ABCDEFGH.tmp", ".other.json.abcdefgh.tmp"]
    for name in decoys:
        (tmp_path / name).write_text("theirs")
    (tmp_path / ".result.json.abcdefgh.tmp").mkdir()  # a folder of that name is not a temporary file
    seen = []

    def write(tmp: str) -> None:
        seen.append(left_temporaries(tmp_path, ("result.json", "model.pt")))
        Path(tmp).write_text("{}")

    atomic_write_with(tmp_path / "result.json", write)
    assert len(seen[0]) == 1 and seen[0][0].name.startswith(".result.json.")
    assert left_temporaries(tmp_path, ("result.json", "model.pt")) == []


def _plant_temporaries(run_dir: Path) -> tuple[list[Path], list[Path]]:
    """What a writer killed in mid-write leaves in ``run_dir`` (one of each of the run's files), and files beside
    them that only look like it, which must stay."""
    run_dir.mkdir(parents=True, exist_ok=True)
    left = [run_dir / name for name in (".checkpoint.pt.k3_9xq0a.tmp", ".model.pt.abcdefgh.tmp",
                                          ".result.json.zz0zz0zz.tmp")]
    others = [run_dir / name for name in (".model.pt.abc.tmp", ".notes.txt.abcdefgh.tmp", "model.pt.abcdefgh.tmp",
                                            ".result.json.abcdefgh.tmp.keep")]
    for path in [*left, *others]:
        path.write_bytes(b"partial")
    return left, others


def test_a_run_removes_the_temporaries_that_killed_writers_left_and_nothing_else(tmp_path):
    cfg = _cfg("frozen", tmp_path, train_clips=48, epochs=1)
    run_dir = tmp_path / cfg.run_id()
    left, others = _plant_temporaries(run_dir)
    messages = []
    train_run(cfg, progress=False, log=messages.append)
    assert not any(p.exists() for p in left) and all(p.read_bytes() == b"partial" for p in others)
    assert f"removed 3 temporary file(s) left in {run_dir} by a write that was cut short: " \
        ".checkpoint.pt.k3_9xq0a.tmp, .model.pt.abcdefgh.tmp, .result.json.zz0zz0zz.tmp" in messages
    # A complete run, when it is next touched, too: not while another process holds its lock (it may be writing).
    result = (run_dir / "result.json").read_bytes()
    left, others = _plant_temporaries(run_dir)
    with RunLock(run_dir, log=lambda *_: None):
        train_run(cfg, progress=False, log=lambda *_: None)
        assert all(p.exists() for p in left)
    messages.clear()
    train_run(cfg, progress=False, log=messages.append)
    assert not any(p.exists() for p in left) and all(p.exists() for p in others)
    assert any(str(m).startswith("removed 3 temporary file(s)") for m in messages), messages
    assert (run_dir / "result.json").read_bytes() == result and not (run_dir / ".lock").exists()


def test_a_checkpoint_left_beside_the_result_it_was_written_from_is_removed(tmp_path, monkeypatch):
    """Stopped between writing result.json and removing checkpoint.pt, a run is complete, and the next bench run
    removes the checkpoint, saying so; a checkpoint the result was not written from (a --force attempt that failed
    after its last epoch, whose earlier result was put back) is kept."""
    import benchmark.train as train

    cfg = _cfg("frozen", tmp_path, train_clips=48, epochs=2, eval_every=1)
    run_dir = tmp_path / cfg.run_id()
    real_write = train.atomic_write_json

    def write_then_stop(path, data):
        real_write(path, data)
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "atomic_write_json", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, progress=False, log=lambda *_: None)
    monkeypatch.setattr(train, "atomic_write_json", real_write)
    result = (run_dir / "result.json").read_bytes()
    assert (run_dir / CHECKPOINT).is_file() and (run_dir / WEIGHTS).is_file()
    messages = []
    train_run(cfg, progress=False, log=messages.append)
    assert not (run_dir / CHECKPOINT).exists() and (run_dir / "result.json").read_bytes() == result
    assert f"removed {run_dir / CHECKPOINT}: the checkpoint of the last epoch, left when the run was stopped after " \
        "writing its result.json and model.pt, which hold all of it" in messages

    def fail(*args, **kwargs):
        raise RuntimeError("out of disk")

    monkeypatch.setattr(train, "complete_result", fail)  # after the last epoch's checkpoint
    with pytest.raises(RuntimeError):
        train_run(cfg, force=True, progress=False, log=lambda *_: None)
    monkeypatch.undo()
    assert (run_dir / "result.json").read_bytes() == result and (run_dir / CHECKPOINT).is_file()
    messages.clear()
    train_run(cfg, progress=False, log=messages.append)
    assert (run_dir / CHECKPOINT).is_file() and not any("removed" in str(m) for m in messages)



def test_a_complete_run_trained_in_another_precision_says_so(runs, tmp_path):
    """train.amp = auto is bf16 autocast on a GPU and fp32 on a CPU, and the run id holds neither: a complete run
    trained on a GPU, found by bench run on this CPU, is returned as complete with a line saying it was trained in
    bf16 and how to train it here; one trained on a CPU, as this one would be, gets no such line."""
    import shutil

    from benchmark.writes import atomic_write_json

    result, run_dir = runs["frozen"]
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(".lock"))
    messages = []
    train_run(_cfg("frozen", tmp_path), progress=False, log=messages.append)
    assert not any("note:" in str(m) for m in messages), messages
    gpu = "cuda (NVIDIA H100 80GB HBM3)"  # as env.device names a GPU
    atomic_write_json(copy / "result.json", {**result, "env": {**result["env"], "device": gpu}})
    messages.clear()
    again = train_run(_cfg("frozen", tmp_path), progress=False, log=messages.append)
    assert not again.trained and again[0]["env"]["device"] == gpu
    assert f"note: run {copy.name}: it was trained in bf16 autocast on {gpu}, and here (cpu) train.amp=auto " \
        "trains in fp32: bench run ... --force trains it again here, and --set train.amp=off trains a run of its " \
        "own beside it (bench report keeps the two apart)" in messages, messages
    for odd in ({**result, "env": {}}, {**result, "config": {**result["config"], "train": {
            **result["config"]["train"], "amp": "fp32"}}, "env": {**result["env"], "device": gpu}}):
        atomic_write_json(copy / "result.json", odd)  # no device recorded; an amp bench never writes: no note
        messages.clear()
        assert not train_run(_cfg("frozen", tmp_path), progress=False, log=messages.append).trained
        assert not any("note:" in str(m) for m in messages), messages

def test_complete_run_is_not_repeated(runs):
    result, run_dir = runs["frozen"]
    cfg = _cfg("frozen", run_dir.parent)
    messages = []
    again = train_run(cfg, progress=False, log=messages.append)
    assert again[0] == result and "already complete" in str(messages[0])
    assert not again.trained  # what `bench run` says: "result in", not "wrote"
    if "PYTEST_XDIST_WORKER" not in os.environ:  # under xdist another worker may have trained the shared run
        assert runs["frozen"].trained


def test_a_failed_run_is_trained_again_with_its_settings_each_epoch_shuffled_anew(tmp_path, monkeypatch):
    """A run whose result.json records a failure is not done: ``bench run`` trains it. The run weighs the loss by its
    training split's positive ratios (eq. 7), draws another order of its clips every epoch (seeded by seed and
    epoch), and is evaluated at its own ``train.threshold``."""
    import benchmark.train as train
    from benchmark.results import existing_result, failed_result, is_done, record_failure

    cfg = _cfg("frozen", tmp_path, train_clips=32, epochs=2, threshold=0.3)
    run_dir = tmp_path / cfg.run_id()
    assert record_failure(run_dir, failed_result(cfg, cfg.run_id(), RuntimeError("CUDA out of memory")))
    assert not is_done(run_dir) and existing_result(run_dir) is None
    ratios, epochs = [], []

    class Weighted(WeightedBCE):
        def __init__(self, positive_ratio, *args):
            ratios.append(positive_ratio.clone())
            super().__init__(positive_ratio, *args)

    def step(state, frames, labels):
        if state.epoch == len(epochs):
            epochs.append([])
        epochs[state.epoch].append(labels.clone())
        return real_step(state, frames, labels)

    real_step = train.train_step
    monkeypatch.setattr(train, "WeightedBCE", Weighted)
    monkeypatch.setattr(train, "train_step", step)
    outcome = train_run(cfg, progress=False, log=lambda *_: None)
    result = outcome[0]
    assert outcome.trained and result["status"] == "complete" and read_result(run_dir)["status"] == "complete"
    labels = torch.as_tensor(load_run(run_dir).train_set.labels, dtype=torch.float32)
    torch.testing.assert_close(ratios[0].float(), labels.mean(0))
    first, second = (torch.cat(e) for e in epochs)
    assert len(epochs) == 2 and len(first) == len(second) == 32
    assert not torch.equal(first, second)  # another order ...
    assert torch.equal(first.sum(0), second.sum(0))  # ... of the same clips
    assert result["metrics"]["threshold"] == 0.3


def test_training_batches_do_not_depend_on_the_number_of_loader_workers(tmp_path):
    """Every clip is augmented from its own seed, so workers are a speed setting (not in the run id)."""
    from torch.utils.data import Subset

    from benchmark.task import prepare
    from benchmark.train import loader
    from vtfpar.errors import UserError

    cfg = _cfg("frozen", tmp_path, train_clips=24)
    dataset = prepare(cfg).train_set

    def batches(workers: int) -> list:
        gen = torch.Generator()
        gen.manual_seed(7)
        return list(loader(dataset, 8, workers, gen, True, torch.device("cpu")))

    torch.manual_seed(3)
    with mock.patch("torch.cuda.manual_seed_all") as cuda_seeded:  # what torch.manual_seed does besides the CPU's
        single = batches(0)
    cuda_seeded.assert_not_called()  # loaded in this process, the clips leave the CUDA generators alone
    after_single = torch.rand(3)  # what training draws next (dropout, drop path) ...
    torch.manual_seed(3)
    parallel = batches(2)
    assert torch.equal(after_single, torch.rand(3))  # ... is what it draws with workers
    for x, y in [*zip(single, parallel, strict=True)]:
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
    assert not torch.equal(single[0][0], single[1][0])
    # So no more workers start than there are batches (2 for training on 16 clips by 8, 2 for evaluating 9 by 5).
    assert loader(Subset(dataset, range(16)), 8, 300, torch.Generator(), True, torch.device("cpu")).num_workers == 2
    assert loader(Subset(dataset, range(9)), 5, 300, None, False, torch.device("cpu")).num_workers == 2
    with pytest.raises(UserError, match="data.num_workers must be >= 0 and <= 256, got 300"):
        _cfg("frozen", tmp_path).data.__class__(num_workers=300)


def test_without_a_progress_bar_long_epochs_log_lines(tmp_path, monkeypatch):
    """In a log file (no terminal) an epoch is not silent until its end: a line every LOG_SECONDS."""
    import benchmark.train

    monkeypatch.setattr(benchmark.train, "PROGRESS_SECONDS", 0.0)
    monkeypatch.setattr(benchmark.train, "LOG_SECONDS", 0.0)
    lines = []
    train_run(_cfg("frozen", tmp_path, train_clips=64, epochs=1, warmup_epochs=2.0), progress=False, log=lines.append)
    inside = [str(ln) for ln in lines if str(ln).startswith("epoch 1/1  batch ")]
    assert [ln.split()[3] for ln in inside] == ["1/4", "2/4", "3/4", "4/4"] and "clips/s" in inside[0], lines
    # A warm-up longer than the run is said before training, with the rate it ends at (about half of train.lr).
    assert [str(ln) for ln in lines if str(ln).startswith("warning:")] == [
        "warning: train.warmup_epochs (2) is more than train.epochs (1): the learning rate warms up for the whole "
        "run, to about 0.00151 at its end, never train.lr (0.003); lower train.warmup_epochs"], lines


def test_a_schedule_that_does_not_do_what_its_settings_say_is_warned_of():
    """``schedule_warnings`` agrees with ``lr_factor``: the rate it says a too-long warm-up ends at is the schedule's
    own at the end of the run; ordinary schedules (the shipped ones) give no warning."""
    from benchmark.config import TrainSection
    from benchmark.step import lr_factor, schedule_warnings

    assert schedule_warnings(TrainSection()) == [] == schedule_warnings(TrainSection(epochs=1, warmup_epochs=1.0))
    long = TrainSection(epochs=3, warmup_epochs=12.0, lr=1e-3, warmup_lr=1e-5)
    (line,) = schedule_warnings(long)
    assert f"to about {lr_factor(3 * 10, 10, long) * long.lr:.3g} at its end, never train.lr (0.001)" in line
    upside_down = schedule_warnings(TrainSection(lr=1e-4, warmup_lr=1e-3, min_lr=5e-4))
    assert [ln.split(" (")[0] for ln in upside_down] == ["warning: train.warmup_lr", "warning: train.min_lr"]
    assert "warms down" in upside_down[0] and "rises after its warm-up" in upside_down[1]
    # Only phases that run are judged: no warm-up, so its start does not matter; a warm-up to the end, no floor.
    assert schedule_warnings(TrainSection(lr=1e-6, warmup_epochs=0.0, min_lr=0.0)) == []
    assert [ln.split(" (")[0] for ln in schedule_warnings(TrainSection(epochs=2, warmup_epochs=3.0, min_lr=1.0))] \
        == ["warning: train.warmup_epochs"]


def _with_the_dropped_shifts(model):
    """``model`` as models of earlier versions were built: a shift in the fusion's last LayerNorm and a bias in the
    head's dense layers (each with a gradient of zero), here set to values of their own, in the parameter order
    those models had (each right after its weight)."""
    head, width = model.head, model.head.weight.shape[1]
    gen = torch.Generator().manual_seed(3)
    norm = torch.nn.LayerNorm(width)
    with torch.no_grad():
        norm.weight.copy_(model.fusion.norm.weight)
        norm.bias.copy_(torch.randn(width, generator=gen) * 0.3)
    model.fusion.norm = norm
    head.bias = torch.nn.Parameter(torch.randn(head.weight.shape[0], generator=gen) * 0.3)
    head.forward = lambda tokens: head.bn((tokens * head.weight).sum(-1) + head.bias)
    return model


def test_a_checkpoint_with_the_dropped_zero_gradient_shifts_resumes_the_same_model_and_optimiser(clips):
    from benchmark.step import new_train_state, train_step

    frames, labels = clips
    cfg, loss_fn, cpu = tiny_config("frozen"), WeightedBCE(labels.mean(0)), torch.device("cpu")
    old = new_train_state(_with_the_dropped_shifts(tiny_model("frozen")), loss_fn, cpu, cfg.train, 4)
    for _ in range(3):
        train_step(old, frames, labels)
    saved = old.state_dict()
    assert {"fusion.norm.bias", "head.bias"} <= set(saved["model"])
    new = new_train_state(tiny_model("frozen"), loss_fn, cpu, cfg.train, 4)
    new.load_state_dict(saved, "checkpoint.pt")
    assert "head.bias" in saved["model"]  # the caller's checkpoint is left as it was
    moments = {n: old.optimizer.state[p] for n, p in zip(old.param_names(), old.params, strict=True)}
    for n, p in zip(new.param_names(), new.params, strict=True):  # each parameter's own moments, none shifted
        assert all(torch.equal(new.optimizer.state[p][k], moments[n][k]) for k in ("exp_avg", "exp_avg_sq")), n
    with torch.no_grad():
        for mode in (False, True):  # evaluation (the running mean holds the shifts) and training (BatchNorm removes)
            old.model.train(mode), new.model.train(mode)
            outputs = [torch.manual_seed(0) and state.model(frames) for state in (old, new)]  # one drop-path draw
            torch.testing.assert_close(*outputs, atol=1e-5, rtol=0)
    assert new.scheduler.get_last_lr() == old.scheduler.get_last_lr()
    # the next step's loss (what the steps after it do is Adam's rounding of near-equal gradients)
    loss_old, loss_new = [torch.manual_seed(1) and train_step(state, frames, labels) for state in (old, new)]
    torch.testing.assert_close(loss_new, loss_old, atol=0, rtol=1e-6)


def test_the_dropped_shifts_are_kept_where_they_cannot_be_folded():
    """Without the running mean (or, for the norm's shift, the head's weight) a fold would change the outputs: the
    shifts stay in the state, for the load to refuse as unexpected."""
    from vtfpar.fusion import fold_dropped_shifts

    full = {"head.bias": torch.ones(2), "fusion.norm.bias": torch.ones(3), "head.weight": torch.ones(2, 3),
            "head.bn.running_mean": torch.zeros(2)}
    for lacking in ("head.bn.running_mean", "head.weight"):
        state = {k: v for k, v in full.items() if k != lacking}
        assert fold_dropped_shifts(state, "") == [] and state.keys() == full.keys() - {lacking}
    assert fold_dropped_shifts(full, "") == ["fusion.norm.bias", "head.bias"]
    assert full.keys() == {"head.weight", "head.bn.running_mean"}
    assert torch.equal(full["head.bn.running_mean"], torch.full((2,), -4.0))  # -(1 + w . b) = -(1 + 3)
