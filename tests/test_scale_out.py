"""Scale-out: ``bench sweep --engine ray`` on a local Ray instance (2 CPUs)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmark.results import WEIGHTS
from benchmark.sweep import plan, run_grid
from tests.conftest import tiny_config
from vtfpar.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
BENCH = [sys.executable, "-m", "benchmark.cli"]
TINY = ["train.epochs=1", "data.train_clips=24", "data.test_clips=16", "data.num_workers=0", "measure.enabled=false"]


@pytest.fixture
def local_ray():
    ray = pytest.importorskip("ray")
    yield {"num_cpus": 2}
    ray.shutdown()


def _metrics(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("*/result.json"))}


def test_ray_sweep_equals_the_local_sweep_and_lands_in_the_driver_tree(tmp_path, local_ray):
    from benchmark.ray_engine import run_grid_ray

    local, remote = tmp_path / "local", tmp_path / "ray"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # as each Ray task trains (cpus_per_run=2): rounding depends on the thread count
    try:
        assert run_grid(plan("frozen,bitfit", "synthetic", "0,1", str(local), TINY, None), progress=False,
                        log=lambda *a, **k: None) == []
    finally:
        torch.set_num_threads(threads)
    finished = []
    grid = plan("frozen,bitfit", "synthetic", "0,1", str(remote), TINY, None)
    failed = run_grid_ray(grid, cpus_per_run=2, init_kwargs=local_ray,
                          on_finish=lambda f, counts: finished.append((f, counts)))
    assert failed == [] and len(finished) == 4
    assert finished[-1][1] == {"done": 4, "failed": 0, "total": 4, "running": 0, "queued": 0}
    a, b = _metrics(local), _metrics(remote)
    assert a.keys() == b.keys() and len(a) == 4
    for run_id in a:
        assert b[run_id]["status"] == "complete"
        assert b[run_id]["metrics"] == a[run_id]["metrics"], run_id  # exactly: same seed, threads, arithmetic
        assert b[run_id]["config"]["run"]["out"] == str(remote)
        assert b[run_id]["command"] == shlex.join(sys.argv)  # the driver's command, not the Ray worker's
        worker = b[run_id]["worker"]
        assert worker["node_id"] and worker["host"] and worker["device"] == "cpu"
        assert b[run_id]["config"]["run"]["device"] == a[run_id]["config"]["run"]["device"]  # as asked
        assert (remote / run_id / "model.pt").is_file() and not (remote / run_id / "checkpoint.pt").exists()
    skipped = []
    assert run_grid_ray(grid, cpus_per_run=2, init_kwargs=local_ray, on_skip=skipped.extend) == []
    assert sorted(skipped) == sorted(a)  # rerunning continues where it stopped: nothing left


def test_a_stopped_ray_sweep_keeps_the_runs_that_finished_before_it_stopped(tmp_path, local_ray):
    """A task sends its run's files and removes its scratch copy: a run that finished while the driver was busy
    (here: reporting the first) is written on Ctrl-C, not cancelled with the unfinished ones and lost."""
    from benchmark.ray_engine import run_grid_ray

    grid = plan("frozen,bitfit", "synthetic", "0", str(tmp_path / "runs"), TINY, None)
    ids = [cfg.run_id() for cfg in grid]

    import ray

    def stop_once_both_finished(finished, counts):
        deadline = time.monotonic() + 300
        while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # until the other task has returned its files and freed its CPU
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_grid_ray(grid, cpus_per_run=1, init_kwargs=local_ray, on_finish=stop_once_both_finished)
    results = _metrics(tmp_path / "runs")
    assert sorted(results) == sorted(ids) and all(r["status"] == "complete" for r in results.values())
    assert all((tmp_path / "runs" / i / "model.pt").is_file() for i in ids)


def test_a_ray_run_the_driver_cannot_write_fails_alone(tmp_path, local_ray):
    """The driver writes each run's files into --out; a run it cannot write (here a file where its folder goes)
    is reported failed, and the sweep writes the others rather than stopping with a traceback."""
    from benchmark.ray_engine import run_grid_ray

    grid = plan("frozen,bitfit", "synthetic", "0", str(tmp_path / "runs"), TINY, None)
    blocked = tmp_path / "runs" / grid[0].run_id()
    blocked.parent.mkdir()
    blocked.write_text("not a folder")
    failed = run_grid_ray(grid, cpus_per_run=1, init_kwargs=local_ray)
    assert [run_id for run_id, _ in failed] == [grid[0].run_id()]
    assert "but its files could not be written into" in failed[0][1] and "trains it again" in failed[0][1]
    assert blocked.read_text() == "not a folder"
    assert _metrics(tmp_path / "runs")[grid[1].run_id()]["status"] == "complete"


def test_ray_refuses_a_run_larger_than_any_one_node():
    """A head of 2 CPUs and a node of 1 CPU and 1 GPU: the cluster has 3 CPUs and a GPU, but a task asking for a
    GPU and 2 CPUs fits on no node, and would wait for ever."""
    pytest.importorskip("ray")
    import ray
    from ray.cluster_utils import Cluster

    from benchmark.ray_engine import connect

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
    try:
        cluster.add_node(num_cpus=1, num_gpus=1)
        cluster.wait_for_nodes()
        with pytest.raises(UserError) as err:
            connect(cluster.address, 1, 2)
        assert str(err.value) == ("--gpus-per-run 1 --cpus-per-run 2: no node of the Ray cluster has that much (its "
                                  "nodes have 1 CPUs and 1 GPUs, 2 CPUs and 0 GPUs), and a run is a task on one node; "
                                  "ask for less (--gpus-per-run 0 trains on CPUs)")
        with pytest.raises(UserError) as err:  # CPUs alone short: no GPU advice, and the most a node has
            connect(cluster.address, 0, 3)
        assert str(err.value) == ("--cpus-per-run 3: no node of the Ray cluster has that many CPUs (its nodes have 1 "
                                  "CPUs and 1 GPUs, 2 CPUs and 0 GPUs), and a run is a task on one node; ask for at "
                                  "most 2")
        assert [connect(cluster.address, g, c)[1] for g, c in ((1, 1), (0, 2), (None, 1))] == [1, 0, 1]
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_terminated_ray_sweep_stops_in_one_line_keeping_its_finished_runs(tmp_path):
    """SIGTERM (a scheduler's stop) once a run has finished: the sweep's own stop (one line, exit 143, finished
    runs kept), not Ray's handler, which exits at once with 15."""
    pytest.importorskip("ray")
    out = tmp_path / "runs"
    sets = [arg for s in TINY for arg in ("--set", s)]
    proc = subprocess.Popen([*BENCH, "sweep", "--engine", "ray", "--methods", "frozen,bitfit", "--seeds", "0",
                             "--out", str(out), "--no-report", "--no-progress", "--cpus-per-run", "2", *sets],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:  # one run at a time (2 CPUs each)
        if line.startswith("done: "):
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().endswith("stopped (terminated): unfinished runs cancelled, finished runs kept; rerun the same "
                                "command to continue"), err
    results = _metrics(out)
    assert line.split()[1] in results and all(r["status"] == "complete" for r in results.values())
    m = results[line.split()[1]]["metrics"]  # said as the local engine says it (a fraction, with mA)
    assert f"  F1 {m['f1']:.4f}, mA {m['mA']:.4f}  on " in line, line


def test_ray_sweep_records_a_failed_run_and_finishes_the_others(tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "runs"
    sets = [arg for s in TINY for arg in ("--set", s)]
    empty = tmp_path / "MARS"  # a folder, but no dataset: found when the task reads it
    empty.mkdir()
    r = subprocess.run([*BENCH, "sweep", "--engine", "ray", "--methods", "frozen", "--datasets", "synthetic,mars",
                        "--seeds", "0", "--out", str(out), "--no-report", "--no-progress", "--cpus-per-run", "1",
                        *sets, "--set", f"data.root={empty}", "--set", "model.backbone=clip-tiny", "--set",
                        "model.pretrained=none"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 1, r.stderr
    assert "1 of 2 runs failed" in r.stderr and "done: synthetic_frozen" in r.stdout
    (said,) = [ln for ln in r.stderr.splitlines() if ln.startswith("failed: ")]  # once, as the local engine says it
    assert said.startswith("failed: mars_frozen_") and ": no annotation CSV in it" in said, said
    assert "Error: " not in said, said
    results = {v["dataset"]: v for v in _metrics(out).values()}
    assert results["synthetic"]["status"] == "complete"
    failed = results["mars"]
    assert failed["status"] == "failed" and "no annotation CSV in it" in failed["error"]
    assert failed["error"].split(": ", 1)[0].endswith("Error")  # recorded as the local engine records it: typed
    assert "Traceback" in failed["traceback"] and failed["worker"]["host"]


def test_ray_addresses_from_the_environment_or_a_stale_ray_start_are_one_line(tmp_path, monkeypatch, bench_here):
    """$RAY_ADDRESS is named as such; ``auto`` is the head the last ``ray start`` recorded, which may be gone (a
    head killed with its cluster job leaves its record): nothing answering there is said at once, not retried."""
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    code, _, err = bench_here("sweep", "--methods", "frozen", "--out", tmp_path / "runs", "--engine", "ray")
    assert code == 2 and err.strip() == ("error: $RAY_ADDRESS 127.0.0.1:1: nothing answers at 127.0.0.1:1 "
                                         "(Connection refused); check that the Ray head runs there and the port is "
                                         "open, or leave out $RAY_ADDRESS for a local instance"), err
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # where Ray keeps the record of the last `ray start`
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")
    started = time.monotonic()
    code, out, err = bench_here("sweep", "--methods", "frozen", "--out", tmp_path / "runs", "--engine", "ray",
                                "--address", "auto")
    assert code == 2 and err.strip() == ("error: --address auto: the last `ray start` on this machine recorded a "
                                         "head at 127.0.0.1:1, and nothing answers there (stopped, or its job "
                                         "ended); start one with `ray start --head`, give its HOST:PORT, or leave "
                                         "out --address for a local instance"), err
    assert "runs to train on Ray" not in out and time.monotonic() - started < 60
    # $RAY_ADDRESS is what Ray joins for auto: that one is checked and named, not the record of `ray start`
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")  # what users of `ray job submit` export
    code, _, err = bench_here("sweep", "--methods", "frozen", "--out", tmp_path / "runs", "--engine", "ray",
                              "--address", "auto")
    assert code == 2 and err.strip() == (
        "error: $RAY_ADDRESS (which Ray joins for --address auto) http://127.0.0.1:8265: that is a Ray dashboard's "
        "address (what `ray job submit` takes); give --address with the head's HOST:PORT (its GCS port, 6379 unless "
        "`ray start --head --port` said otherwise), which Ray joins instead, or unset RAY_ADDRESS for a local "
        "instance"), err


def test_rays_token_notice_is_kept_off_a_local_instances_start_only(caplog):
    import logging

    from benchmark.ray_engine import TOKEN_NOTICE, _quiet_local_start

    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    off = "Token authentication is disabled for this Ray cluster. Anyone with network access ..."
    for address, said in ((None, [off]), ("local", [off]), ("10.0.0.1:6379", [TOKEN_NOTICE + ".", off])):
        caplog.clear()
        with caplog.at_level(logging.WARNING), _quiet_local_start(address):
            log.warning(TOKEN_NOTICE + ".")
            log.warning(off)
        assert [r.getMessage() for r in caplog.records] == said, address
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        log.warning(TOKEN_NOTICE + ".")  # after the start: nothing is left filtered
    assert len(caplog.records) == 1


def test_a_ray_node_without_the_dataset_says_so_in_the_clusters_terms(tmp_path, local_ray):
    """A cluster's nodes hold the data, so the driver checks only that a root is given; a node that lacks it fails
    the run with a line that names the node and how the root is given in a sweep (not bench run's --data-root)."""
    import platform

    from benchmark.ray_engine import run_grid_ray

    grid = plan("frozen", "mars", "0", str(tmp_path / "runs"), [*TINY, f"data.root={tmp_path / 'nope'}"], None,
                check_roots=False)
    ((run_id, error),) = run_grid_ray(grid, cpus_per_run=1, init_kwargs=local_ray)
    assert run_id == grid[0].run_id() and error == (
        f"dataset root not found: {tmp_path / 'nope'} (on {platform.node()}: every node of the Ray cluster must hold "
        "the dataset at the root the sweep gives; mars: pass an existing folder with --set data.root=DIR, or set its "
        "root = \"DIR\" under [datasets.mars.data] in your config file (--config FILE or ./bench.toml, read over the "
        "shipped one))"), error


def test_a_ray_node_that_cannot_write_its_scratch_folder_says_it_is_the_nodes_not_out(tmp_path, monkeypatch):
    import platform

    from benchmark.ray_engine import scratch_config, scratch_key

    (tmp_path / "vtfpar-bench-ray").write_text("")  # a file where the node's scratch folders go
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    cfg = tiny_config("frozen", out=str(tmp_path / "runs"))
    key = scratch_key(cfg.run.out)
    with pytest.raises(UserError) as err:
        scratch_config(cfg, key)
    scratch = tmp_path / "vtfpar-bench-ray"
    assert str(err.value) == f"cannot write in {scratch / key}: {scratch} is a file, not a folder; a Ray task " \
        f"trains its run there before the sweep copies it to --out: give the Ray workers on {platform.node()} a " \
        "writable TMPDIR with space"
    (tmp_path / "vtfpar-bench-ray").unlink()
    assert scratch_config(cfg, key).run.out == str(tmp_path / "vtfpar-bench-ray" / key)
    assert cfg.run.out == str(tmp_path / "runs")


def test_two_ray_sweeps_into_different_trees_train_a_run_in_scratch_folders_of_their_own(tmp_path, monkeypatch):
    """Two sweeps that train one run id on one node, into two --out trees: each task's scratch copy is its own
    sweep's (one sending the run would otherwise remove the files the other is about to send), while the same
    --out, however spelled, is one sweep that resumes what it left there."""
    from benchmark.ray_engine import scratch_key

    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    keys = [scratch_key(out) for out in ("a", str(tmp_path / "a"), "./a/", "link", "b", str(tmp_path / "b"))]
    assert len(set(keys[:4])) == 1 and len(set(keys[4:])) == 1 and keys[0] != keys[4]
    assert all(re.fullmatch(r"[0-9a-f]{12}", k) for k in keys)


def test_ray_engine_without_ray_says_how_to_install_it(monkeypatch):
    from benchmark.ray_engine import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray gives
    with pytest.raises(UserError, match=r"--engine ray needs Ray.*pip install 'vtfpar-bench\[ray\]'"):
        import_ray()


@pytest.mark.parametrize("args,fragment", [
    (["--engine", "dask"], "--engine 'dask': choose local or ray"),
    (["--gpus-per-run", "1"], "--address, --gpus-per-run and --cpus-per-run apply to --engine ray only"),
    (["--cpus-per-run", "4"], "--address, --gpus-per-run and --cpus-per-run apply to --engine ray only"),
    (["--engine", "ray", "--cpus-per-run", "0"], "--cpus-per-run 0: must be a finite number > 0"),
    (["--engine", "ray", "--cpus-per-run", "inf"], "--cpus-per-run inf: must be a finite number > 0"),
    (["--engine", "ray", "--gpus-per-run", "2"], "--gpus-per-run 2: a run trains on one GPU"),
    (["--engine", "ray", "--gpus-per-run", "0.00001"], "--gpus-per-run 1e-05: a run trains on one GPU, or on a share"),
    (["--gpus-per-run", "2"], "--address, --gpus-per-run and --cpus-per-run apply to --engine ray only"),
    (["--engine", "ray", "--address", "127.0.0.1:1"], "--address 127.0.0.1:1: nothing answers at 127.0.0.1:1"),
    (["--engine", "ray", "--address", "headnode"], "--address headnode: give HOST:PORT of a Ray head"),
    (["--engine", "ray", "--address", "http://127.0.0.1:8265"], "--address http://127.0.0.1:8265: that is a Ray "
     "dashboard's address (what `ray job submit` takes); give the head's HOST:PORT"),
    (["--engine", "ray", "--address", "127.0.0.1:1", "--datasets", "mars"], "no dataset root given (mars: pass an "
     "existing folder with --set data.root=DIR"),  # empty on every node: said before any node is asked
])
def test_sweep_engine_options_are_checked_in_one_line(args, fragment, tmp_path, bench_here):
    code, _, err = bench_here("sweep", "--methods", "frozen", "--out", tmp_path, *args)
    assert code == 2 and fragment in err and "Traceback" not in err


# Stochastic depth off (its draws are per process). The paper's learning rate. The loss divided by the number of
# attributes (eq. 6 as printed), the normaliser whose per-process share needs scaling (WeightedBCE).
DDP = ["--method", "bitfit", "--epochs", "2", "--batch-size", "8", "--no-progress",
       "--set", "train.loss_normalize=attributes",
       "--set", "data.train_clips=64", "--set", "data.test_clips=21", "--set", "data.num_workers=0",
       "--set", "measure.enabled=false", "--set", "model.drop_path=0"]


def _torchrun(args: list[str], procs: int) -> list[str]:
    bench = str(Path(sys.executable).parent / "bench")
    if procs == 1:
        return [bench, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--no-python", bench, *args]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _bench(*args, procs: int = 1, timeout: int = 600):
    return subprocess.run(_torchrun(list(args), procs), capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env=ENV)


def test_torchrun_two_processes_train_what_one_process_trains_and_resume(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = _bench("run", *DDP, "--out", str(one))
    assert r1.returncode == 0, r1.stderr
    # two processes, stopped by SIGTERM once the first epoch's checkpoint is written, then resumed
    proc = subprocess.Popen(_torchrun(["run", *DDP, "--out", str(two)], 2), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)
    deadline = time.monotonic() + 300
    while proc.poll() is None and not list(two.glob("*/checkpoint.pt")) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "rerun the same command to resume from epoch 2" in err
    assert not list(two.glob("*/result.json"))
    r2 = _bench("run", *DDP, "--out", str(two), procs=2)
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout.count("resuming ") == 1 and r2.stdout.count("epoch 2 ") == 1  # rank 1 is silent
    assert "epoch 1 " not in r2.stdout and r2.stdout.count("wrote ") == 1
    (a,), (b,) = _metrics(one).values(), _metrics(two).values()
    assert a["run_id"] == b["run_id"]
    assert b["distributed"] == {"processes": 2, "backend": "gloo", "batch_per_process": 4}
    assert [h.get("processes") for h in a["history"] + b["history"]] == [None, None, 2, 2]  # each epoch's count
    for ha, hb in zip(a["history"], b["history"], strict=True):  # the training, to float rounding
        assert abs(ha["loss"] - hb["loss"]) <= 1e-6 * ha["loss"]
    for k in ("f1", "mA", "accuracy", "precision", "recall"):  # a probability at the threshold may round either way:
        assert abs(a["metrics"][k] - b["metrics"][k]) <= 5e-3, k  # one of 21 x 23 decisions moves them by ~2e-3
    # The weights, to float rounding (here <= 5e-6), but for the key biases (the key third of the fusion's q/k/v bias,
    # BitFit's k_proj biases): softmax is invariant to them, so their gradient is rounding noise, which differs
    # between 1 and 2 processes and which Adam scales to steps of ~lr. No other parameter may have such a gradient:
    # the head's bias and the fusion's last LayerNorm shift, which the head's BatchNorm removes, had one, and the
    # running mean that followed their steps differed by 4e-3 between 1 and 2 processes.
    (wa,), (wb,) = ([torch.load(p, weights_only=True)["state"] for p in out.glob(f"*/{WEIGHTS}")] for out in (one, two))
    width = wa["fusion.blocks.0.attn.qkv.bias"].shape[0] // 3
    for name, x in wa.items():
        y = wb[name]
        if name.endswith("qkv.bias"):
            x, y = torch.cat([x[:width], x[2 * width:]]), torch.cat([y[:width], y[2 * width:]])
        if x.is_floating_point() and not name.endswith("k_proj.bias"):
            torch.testing.assert_close(x, y, atol=1e-4, rtol=0, msg=lambda m, name=name: f"{name}: {m}")
    files = {p.relative_to(one).as_posix() for p in one.rglob("*")}
    assert {p.relative_to(two).as_posix() for p in two.rglob("*")} == files  # nothing more from rank 1
    # What rank 0 decides, every rank follows (none waits for a partner that has gone): complete ...
    r3 = _bench("run", *DDP, "--out", str(two), procs=2, timeout=300)
    assert r3.returncode == 0 and r3.stdout.count("already complete") == 1, r3.stderr
    assert "wrote " not in r3.stdout and "result in " in r3.stdout  # nothing was written
    # ... or locked by another trainer: one line from each rank, exit 2, the finished run untouched.
    from benchmark.lock import RunLock

    with RunLock(next(two.iterdir()), log=lambda *a: None):
        r4 = _bench("run", *DDP, "--out", str(two), "--force", procs=2, timeout=300)
    assert r4.returncode != 0 and "is being trained by" in r4.stderr and "benchmark/" not in r4.stderr, r4.stderr
    assert _metrics(two) == {a["run_id"]: b}


RENDEZVOUS = {"MASTER_ADDR": "localhost", "MASTER_PORT": "29500"}


@pytest.mark.parametrize("env, why", [
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE 0"), ({"WORLD_SIZE": "-2"}, "WORLD_SIZE -2"),
    ({"WORLD_SIZE": "2", "RANK": "2", **RENDEZVOUS}, "RANK 2, WORLD_SIZE 2"),
    ({"WORLD_SIZE": "2", "RANK": "-1", **RENDEZVOUS}, "RANK -1"), ({"LOCAL_RANK": "-1"}, "LOCAL_RANK -1"),
    ({"RANK": "x"}, "not integers"),
    # a torchrun environment's ranks left behind without its rendezvous (or with a broken one)
    ({"WORLD_SIZE": "2", "RANK": "0"}, "WORLD_SIZE 2 but MASTER_ADDR and MASTER_PORT not set"),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_PORT": "29500"}, "WORLD_SIZE 2 but MASTER_ADDR not set"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "localhost", "MASTER_PORT": "abc"},
     "MASTER_PORT 'abc' is not a port (1 to 65535)"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "localhost", "MASTER_PORT": "70000"}, "MASTER_PORT '70000'")])
def test_a_torchrun_environment_that_cannot_be_is_one_line(env, why, tmp_path, monkeypatch, bench_proc):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    r = bench_proc("run", "--method", "frozen", "--dataset", "synthetic", "--out", tmp_path / "runs", "--no-progress")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "torchrun --nproc-per-node N" in r.stderr, r.stderr
    assert r.stderr.startswith("error: ") and why in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_sweep_under_torchrun_is_one_line_not_a_failed_result_per_run(tmp_path, monkeypatch, bench_proc):
    for env in ({"WORLD_SIZE": "2", "RANK": "0", **RENDEZVOUS}, {"WORLD_SIZE": "2", "RANK": "0"}):  # torchrun's, left
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        r = bench_proc("sweep", "--methods", "frozen,bitfit", "--out", tmp_path / "runs", "--no-progress")
        assert r.returncode == 2 and "bench sweep runs in one process" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_torchrun_counts_the_unreadable_frames_of_every_process(tmp_path):
    """Each process reads its own share of the clips, so a frame only rank 1 reads is counted (and warned of) by
    rank 0, which writes the result, only if the counts are summed over the processes."""
    from tests.test_data_real import load, make_mars

    root = tmp_path / "mars"
    make_mars(root)
    _, test_set, _ = load("mars", root)
    assert len(test_set.tracklets[1].frames) == 2  # its one clip of 2 frames reads both; evaluation gives it rank 1
    test_set.tracklets[1].frames[1].write_bytes(b"")
    r = _bench("run", "--dataset", "mars", "--data-root", str(root), "--backbone", "clip-tiny", "--pretrained",
               "vtfpar-synthetic", "--method", "frozen", "--epochs", "1", "--batch-size", "2", "--frames", "2",
               "--out", str(tmp_path / "runs"), "--no-progress", "--set", "data.num_workers=0", "--set",
               "data.eval_all_clips=false", "--set", "measure.enabled=false", procs=2)
    assert r.returncode == 0, r.stderr
    (result,) = _metrics(tmp_path / "runs").values()
    assert result["distributed"]["processes"] == 2
    assert result["data"]["unreadable_frames_replaced"] == 1
    assert r.stdout.count("1 frame reads fell back to a neighbouring frame") == 1


def test_each_process_draws_stochastic_depth_for_its_own_clips():
    """Inside the model (stochastic depth, dropout) every rank draws from a seed of its own, rank 0 from the one
    process's: with one seed for all, rank r's k-th clip would get rank 0's k-th mask, and with N processes as
    large as the batch every clip of a step would drop the same blocks."""
    import torch
    from timm.layers import DropPath

    from benchmark.distributed import Ranks, model_draws_seed

    def masks(ranks: Ranks, clips: int) -> torch.Tensor:
        torch.manual_seed(model_draws_seed(7 * 100_003 + 2, ranks))
        return DropPath(0.5).train()(torch.ones(clips, 1)).flatten() > 0

    one = masks(Ranks(), 64)
    two = [masks(Ranks(r, 2, r), 32) for r in range(2)]
    assert torch.equal(two[0], one[:32])  # rank 0 draws as one process does
    assert not torch.equal(two[0], two[1])  # 32 clips each: equal masks by chance with probability 2^-32


def _claim_on_rank(rank: int, store: str, run_dir: str, poll: float, answers, ready) -> None:
    """One of two gloo ranks whose collectives time out after 5 s, claiming ``run_dir`` with --wait."""
    import contextlib
    from datetime import timedelta

    import torch.distributed as dist

    from benchmark.claim import claim_together
    from benchmark.config import load_config
    from benchmark.distributed import Ranks

    cfg = load_config(None, {"run": {"method": "frozen", "dataset": "synthetic", "out": run_dir}})
    ready.wait()  # both ranks imported: the 5 s timeout is never spent on start-up
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=5))  # a file store: no port another test could take
    lines = []
    try:
        with contextlib.ExitStack() as held:
            decision = claim_together(Path(run_dir), cfg, held, Ranks(rank, 2, rank), force=False, wait=True,
                                       log=lines.append, poll=poll)
            owner = json.loads((Path(run_dir) / ".lock").read_text())["pid"] if rank == 0 else None
        answers.put((rank, decision, lines, owner == os.getpid() if rank == 0 else None))
    except Exception as exc:  # noqa: BLE001 - the test reports what ended a rank
        answers.put((rank, "failed", [f"{type(exc).__name__}: {exc}"], None))
    finally:
        dist.destroy_process_group()


def test_torchrun_wait_outlasts_the_process_group_timeout(tmp_path):
    """With --wait, rank 0 looks at the lock every poll and tells rank 1 each time: a wait three times
    the group's timeout ends with both ranks training, rank 0 holding the lock."""
    import multiprocessing
    import socket
    import threading

    from benchmark.lock import RunLock

    ctx = multiprocessing.get_context("spawn")
    answers, ready = ctx.Queue(), ctx.Barrier(3)
    holder = RunLock(tmp_path, log=lambda *a: None).__enter__()  # another trainer, for 15 s after the ranks start
    procs = [ctx.Process(target=_claim_on_rank, args=(r, str(tmp_path.parent / f"{tmp_path.name}.store"),
                                                      str(tmp_path), 0.5, answers, ready)) for r in (0, 1)]
    for p in procs:
        p.start()
    try:
        ready.wait(timeout=120)
        release = threading.Timer(15.0, holder.__exit__, (None, None, None))
        release.start()
        got = sorted(answers.get(timeout=120) for _ in procs)
        release.join()
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert [g[1] for g in got] == [("train", None), ("train", None)], got
    assert got[0][2] == [f"waiting for pid {os.getpid()} on {socket.gethostname()} since {holder.owner['started']} "
                         f"to finish run {tmp_path.name} ..."] and got[0][3] is True, got
    assert got[1][2] == []
