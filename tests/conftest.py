"""Shared fixtures: the tiny open_clip config, small synthetic data, and a model factory."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import settings

import methods
from benchmark.config import load_config
from vtfpar.backbone import load_clip, register_model_configs
from vtfpar.data.synthetic import SYNTHETIC_ATTRIBUTES, SyntheticPedestrians

register_model_configs()
# Property-based tests draw the same examples on every run (derandomised, no example database): a red run
# is reproducible, and CI does not turn red at random. Examples a search once found are pinned with @example.
settings.register_profile("repeatable", derandomize=True, database=None)
settings.load_profile("repeatable")
logging.getLogger().setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*randomly initialised.*")
# Under pytest-xdist (`make test` runs one worker per core) each worker keeps to its share of the cores, and so do
# the processes it starts: more threads than cores in all would make every worker wait on the others.
# (The cores this process may run on: a container's or taskset's share, not the host's count.)
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // WORKERS))
torch.set_num_threads(2 if WORKERS == 1 else int(os.environ["OMP_NUM_THREADS"]))

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"train_clips": 48, "test_clips": 24, "num_workers": 0}
THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def threads_kept():
    """Every test leaves torch's thread count as it found it: results computed with another count round otherwise,
    so a test that changed it would change the numbers of the tests after it (those that compare exactly)."""
    yield
    assert torch.get_num_threads() == THREADS, f"this test left torch on {torch.get_num_threads()} threads"


@pytest.fixture(scope="session", autouse=True)
def own_perf_locks(tmp_path_factory):
    """bench perf's device locks in this session's own folder (children inherit it): a bench perf measuring on
    this machine does not stop the tests' measurements, nor they it."""
    from benchmark.perf import LOCK_DIR_ENV

    before = os.environ.get(LOCK_DIR_ENV)
    os.environ[LOCK_DIR_ENV] = str(tmp_path_factory.mktemp("perf_locks"))
    yield
    if before is None:
        os.environ.pop(LOCK_DIR_ENV, None)
    else:
        os.environ[LOCK_DIR_ENV] = before


def tiny_config(method: str = "side_tuning", out: str | None = None, measure: bool = False,
                sets: list[str] | None = None, **train):
    """The synthetic profile of the repository's bench.toml, shrunk for unit tests."""
    return load_config(None, {
        "run": {"method": method, "dataset": "synthetic", "out": out},
        "data": SMALL,
        "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 24, **train},
        "measure": {"enabled": measure},
    }, sets)


def tiny_model(method: str = "side_tuning", seed: int = 0, frames: int = 4, overrides: dict | None = None):
    """The tiny task model of ``method`` (random clip-tiny); ``overrides`` are keys of its config."""
    cfg = tiny_config(method, sets=[f"methods.{method}.{k}={json.dumps(v)}" for k, v in (overrides or {}).items()])
    torch.manual_seed(seed)
    clip = load_clip("clip-tiny", "none")
    return methods.build_model(clip, backbone="clip-tiny", attributes=SYNTHETIC_ATTRIBUTES, method=method,
                               method_cfg=cfg.method, frames=frames, fusion=cfg.model, seed=seed)


def losses_and_grads(models, clips, seed: int = 1):
    """One training-mode forward and backward of each model on the same clips (same dropout draws):
    the losses and, per model, the gradients of its trainable parameters by name."""
    from vtfpar.loss import WeightedBCE

    frames, labels = clips
    loss_fn = WeightedBCE(labels.mean(0))
    losses, grads = [], []
    for model in models:
        model.train()
        torch.manual_seed(seed)
        loss = loss_fn(model(frames), labels)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    return losses, grads


def clip_blocks_keep_a_graph(model, frames) -> list[bool]:
    """One training forward and backward of ``model`` on ``frames``: per run of one of its CLIP image blocks, whether
    it ran with gradients enabled or gave an output with a graph. An encoder that runs CLIP under ``no_grad`` gives
    all False, so that nothing upstream (a trainable input) could make CLIP keep a graph."""
    seen = []
    hooks = [block.register_forward_hook(
        lambda m, i, o: seen.append(torch.is_grad_enabled() or o.requires_grad or o.grad_fn is not None))
        for block in model.encoder.clip.blocks]
    model.train()
    model(frames).sum().backward()
    for hook in hooks:
        hook.remove()
    return seen


@pytest.fixture
def bench_here(monkeypatch, capfd):
    """``bench ARGS`` in this process (no interpreter start-up): returns (exit code, stdout, stderr).

    As the console script runs it, as far as one process allows: from the repository root, with Python's
    default warning filters and warnings printed on stderr (not recorded by pytest), and stdout / stderr read
    at the file descriptors (what C libraries print too). What ``main()`` changes for the process (logging
    levels, the warning format, the environment) is put back afterwards."""
    from benchmark.cli import main

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    def run(*args):
        monkeypatch.setattr("sys.argv", ["bench", *map(str, args)])
        monkeypatch.chdir(ROOT)
        monkeypatch.setenv("TOKENIZERS_PARALLELISM", os.environ.get("TOKENIZERS_PARALLELISM", "false"))
        loggers = {name: logging.getLogger(name).level for name in ("", "huggingface_hub", "open_clip")}
        capfd.readouterr()
        try:
            with warnings.catch_warnings():
                warnings.resetwarnings()  # a fresh interpreter's filters (python -W default's, less __main__'s)
                for quiet in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                    warnings.simplefilter("ignore", quiet)
                monkeypatch.setattr(warnings, "showwarning", show)
                monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
                main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            for name, level in loggers.items():
                logging.getLogger(name).setLevel(level)
        out, err = capfd.readouterr()
        return code, out, err

    return run


@pytest.fixture
def bench_proc(bench_here):
    """``bench ARGS`` in this process, answered as ``tests.test_cli.bench`` answers (a ``CompletedProcess``).

    For error paths, which end before any work: the same ``main()`` the console script calls, without the
    seconds an interpreter needs to import torch. The console script itself is run by ``tests/test_cli.py``."""

    def run(*args):
        code, out, err = bench_here(*args)
        return subprocess.CompletedProcess(["bench", *map(str, args)], code, out, err)

    return run


@pytest.fixture
def clips():
    ds = SyntheticPedestrians(8, 4, 64, seed=0)
    frames, labels = zip(*(ds[i] for i in range(8)), strict=True)
    return torch.stack(frames), torch.stack(labels)


LEARN_FRAMES = 3  # frames per clip of learn_config's runs (the shared runs')


def learn_config(method, out, train_clips=192, measure=False, **train):
    """Enough steps (48 of 16 clips of 3 frames) for every method to learn on the tiny random backbone, with
    a margin of at least 0.1 F1 over the prior baselines for each (0.109-0.222 on 2026-12-07); test at the end
    only. Three frames, the fewest st_adapter's temporal kernel takes: a fourth costs a third more and learns no
    more here."""
    settings = {"epochs": 4, "batch_size": 16, "lr": 3e-3, "warmup_epochs": 0.5, "eval_every": 100, **train}
    cfg = tiny_config(method, out=str(out), measure=measure, **settings)
    cfg.measure.warmup, cfg.measure.iters = 1, 2  # the tests check what is measured, not how precisely
    cfg.data.train_clips, cfg.data.test_clips, cfg.data.frames = train_clips, 96, LEARN_FRAMES
    return cfg


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """Every method trained once on the tiny backbone (with measurements), shared by the whole session.

    Under pytest-xdist the workers share one folder and train it together, as concurrent ``bench run``s do: each
    starts at its own place in the list and, reaching a run another worker holds, waits for its lock and takes
    the finished result (``train_run(wait=True)``)."""
    from benchmark.lock import trainer_of
    from benchmark.train import train_run

    names, worker_id = methods.list_methods(), os.environ.get("PYTEST_XDIST_WORKER")
    if worker_id is None:
        out = tmp_path_factory.mktemp("runs")
    else:
        out = tmp_path_factory.getbasetemp().parent / "shared_runs"  # the same for every worker of this session
        start = int(worker_id.removeprefix("gw")) * len(names) // WORKERS
        names = names[start:] + names[:start]
    done = {m: train_run(learn_config(m, out, measure=True), progress=False, log=lambda *_: None, wait=True)
            for m in names}
    # A run another worker finished is returned once its result is written, while that worker may still be removing
    # its checkpoint: the tests copy these folders, so wait until no worker holds any of them.
    while any(trainer_of(run_dir) for _, run_dir in done.values()):
        time.sleep(0.1)
    return {m: done[m] for m in methods.list_methods()}


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB file system (tmpfs), where the machine lets this user mount one (root in a container)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(disk)], capture_output=True)
    except OSError:  # no mount command
        pytest.skip("mounting a small tmpfs needs the mount command")
    if mounted.returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True)  # detached now, freed once nothing holds a file
