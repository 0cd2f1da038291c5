"""``bench sweep --engine ray``: every run of a grid as one Ray task, results in the driver's runs tree.

Ray schedules the tasks over whatever it has: a local instance started here (one node, all its
GPUs and CPUs) or a running cluster (``--address auto`` or ``HOST:PORT``). Each task asks for
``--gpus-per-run`` GPUs and ``--cpus-per-run`` CPUs; Ray gives it those GPUs alone
(``CUDA_VISIBLE_DEVICES``), so ``run.device = auto`` trains on them, and a task given none trains on
the CPU.

A task trains into a scratch folder on its own node (``<tmp>/vtfpar-bench-ray/<sweep>/<run-id>``, ``<sweep>``
naming the driver's host and ``run.out``; a run cancelled there resumes from its checkpoint when the same sweep
runs it on that node again, and two sweeps into different trees never share one) and returns the run's
files, removing its scratch copy; the driver writes them atomically into ``run.out``, so the workers
need no shared file system. Each result
records where it ran (``worker``: host, Ray node id, GPUs). The sweep's contract is that of the local
engine (``benchmark.sweep``): every config validated first, complete runs skipped before anything is
submitted, a failed run recorded as failed with its error and traceback while the others go on (a run
the driver cannot write into ``run.out`` too). Ctrl-C or SIGTERM cancels what has not finished and
keeps every finished run (``keep_finished``); the same command continues.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmark.config import Config
from benchmark.lock import LOCK, Busy, FileLock, RunLock
from benchmark.results import (
    CHECKPOINT,
    PREVIOUS_RESULT,
    RESULT,
    WEIGHTS,
    failed_result,
    failure_line,
    is_done,
    read_result,
    record_failure,
    recorded_error,
)
from benchmark.signals import Terminated
from benchmark.writes import atomic_write_json, atomic_write_with, check_writable_folder
from vtfpar.data import check_root
from vtfpar.errors import UserError, one_line

INSTALL = "pip install 'vtfpar-bench[ray]' (or pip install ray)"


class RemoteRunError(Exception):
    """A run that failed inside a Ray task: its error line and the task's traceback."""

    def __init__(self, error: str, remote_traceback: str):
        super().__init__(error)
        self.remote_traceback = remote_traceback


@dataclass(frozen=True)
class Finished:
    run_id: str
    ok: bool
    error: str = ""
    result: dict | None = None


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(f"--engine ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


def scratch_root() -> Path:
    return Path(tempfile.gettempdir()) / "vtfpar-bench-ray"


def scratch_key(out: str) -> str:
    """The sweep a scratch folder belongs to, made on the driver: its host and ``out`` as it resolves there. Two
    sweeps training the same run id into different trees on one node would otherwise share that run's scratch
    copy, and one could send (and remove) the other's files; the same sweep rerun finds its own and resumes."""
    return hashlib.sha256(f"{platform.node()}:{Path(out).resolve()}".encode()).hexdigest()[:12]


def scratch_config(cfg: Config, key: str) -> Config:
    """``cfg`` trained in this node's scratch folder for the sweep ``key`` (``scratch_key``), which is checked
    first: a folder the node cannot write is the node's (its temporary folder), not ``--out``'s, and the error
    says so."""
    folder = scratch_root() / key
    check_writable_folder(folder, f"a Ray task trains its run there before the sweep copies it to --out: "
                          f"give the Ray workers on {platform.node()} a writable TMPDIR with space")
    return replace(cfg, run=replace(cfg.run, out=str(folder)))


def train_in_task(cfg: Config, threads: int, key: str) -> dict[str, Any]:
    """The body of one Ray task: train ``cfg`` into this node's scratch folder for the sweep ``key``
    (``scratch_key``); return its files or its error."""
    import ray
    import torch

    from benchmark.sweep import root_hint
    from benchmark.train import train_run

    torch.set_num_threads(max(1, threads))
    context = ray.get_runtime_context()
    gpus = ray.get_gpu_ids()
    worker = {"host": platform.node(), "node_id": context.get_node_id(), "gpus": [str(g) for g in gpus]}
    if not gpus and cfg.run.device == "auto":  # asked for no GPU: none taken, even where the node has some
        cfg = replace(cfg, run=replace(cfg.run, device="cpu"))  # (newer Rays leave them visible to such a task)
    try:
        # the driver checked only that a root is given: this node's copy is checked here, in the cluster's terms
        check_root(cfg.run.dataset, cfg.data.root, f"on {platform.node()}: every node of the Ray cluster must hold "
                   f"the dataset at the root the sweep gives; {root_hint(cfg.run.dataset, 1)}")
        result, run_dir = train_run(scratch_config(cfg, key), progress=False, wait=True, log=lambda *a, **k: None)
        # Read and removed under the run's lock, as every writer of a run's files works: a task of the same sweep
        # started twice, waiting for this run on this node, finds either the whole run or none of it.
        with RunLock(run_dir, wait=True, log=lambda *a, **k: None):
            files = {name: (run_dir / name).read_bytes() for name in (RESULT, WEIGHTS) if (run_dir / name).is_file()}
            if len(files) < 2:
                raise UserError(f"{run_dir} on {platform.node()} lost its {RESULT} or {WEIGHTS} before they were "
                                "sent (the same sweep, started twice, sending this run at once?); the same command "
                                "trains it again")
            # The driver keeps the run; the scratch copy only served resuming. The result goes first: a cleanup cut
            # short leaves an unfinished run (resumed), never a result without its weights.
            for path in [run_dir / RESULT, *(p for p in run_dir.iterdir() if p.name not in (RESULT, LOCK))]:
                with contextlib.suppress(OSError):  # what stays behind (an NFS .nfs file) costs nothing sent
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
        with contextlib.suppress(OSError):  # empty now, unless another task has taken the run since
            run_dir.rmdir()
    except Exception as exc:  # noqa: BLE001 - the driver records it and the sweep goes on
        # recorded as the local engine records it, and said in its words (made here, where the type is known)
        return {"ok": False, "worker": worker, "error": recorded_error(exc), "line": failure_line(exc),
                "traceback": traceback.format_exc()}
    return {"ok": True, "worker": worker, "files": files, "device": result.get("env", {}).get("device")}


def _write_run(cfg: Config, reply: dict[str, Any]) -> dict:
    """The task's files into ``cfg.run.out/<run-id>`` (weights first, the result last: a result file is
    only ever there with its weights); the result says where it ran and where it now lives."""
    import json

    run_dir = Path(cfg.run.out) / cfg.run_id()
    run_dir.mkdir(parents=True, exist_ok=True)
    files = reply["files"]
    result = json.loads(files[RESULT])
    result["worker"] = {**reply["worker"], "device": reply.get("device"), "trained_in": result["config"]["run"]["out"]}
    result["config"]["run"]["out"] = cfg.run.out
    result["config"]["run"]["device"] = cfg.run.device  # as asked (the task may have taken "cpu" for "auto")
    result["command"] = shlex.join(sys.argv)  # the sweep that made it, not the Ray worker process that trained it
    with RunLock(run_dir, wait=True, log=print):  # as every writer of a run's files (bench run tidies under it)
        for name, data in files.items():
            if name != RESULT:
                atomic_write_with(run_dir / name, lambda tmp, data=data: Path(tmp).write_bytes(data))
        atomic_write_json(run_dir / RESULT, result)
        for stale in (CHECKPOINT, PREVIOUS_RESULT):  # of an earlier, stopped attempt at this run in this tree
            (run_dir / stale).unlink(missing_ok=True)
    return result


def _write_failure(cfg: Config, exc: BaseException, worker: dict | None = None) -> bool:
    """Record a failed run; whether it stands failed (False: a complete result was already there, kept)."""
    run_dir = Path(cfg.run.out) / cfg.run_id()
    result = failed_result(cfg, run_dir.name, exc)
    if isinstance(exc, RemoteRunError):  # the error as recorded, made in the task where the exception was raised
        result["error"] = str(exc)
        result["traceback"] = exc.remote_traceback
    if worker:
        result["worker"] = worker
    return record_failure(run_dir, result)


def pending(grid: list[Config]) -> tuple[list[Config], list[str]]:
    """The runs still to do, and the ids of those already complete (skipped, as the local engine does)."""
    todo, done = [], []
    for cfg in grid:
        run_dir = Path(cfg.run.out) / cfg.run_id()
        if is_done(run_dir):  # an unreadable result is trained again, as train_run would
            done.append(run_dir.name)
        else:
            todo.append(cfg)
    return todo, done


LOCAL = (None, "", "local")  # addresses that mean a local instance the sweep starts and stops itself


def check_reachable(address: str | None, timeout: float = 5.0, given: str = "--address") -> None:
    """A ``HOST:PORT`` (or ``ray://HOST:PORT``) address answers a TCP connection within ``timeout`` seconds:
    ``ray.init`` would otherwise retry an unreachable head for minutes. ``auto`` is the head that the last
    ``ray start`` on this machine recorded (``resolve_auto``), checked the same way; ``local`` and None (a local
    instance) need nothing. ``given``: where the address came from (``--address`` or ``$RAY_ADDRESS``), which
    every error names."""
    if address in LOCAL:
        return
    if address == "auto":
        resolved = resolve_auto()
        if resolved is None:
            return  # none recorded: ray.init looks for a running head itself and says so if there is none
        try:
            check_reachable(resolved, timeout)
        except UserError:
            raise UserError(f"{given} auto: the last `ray start` on this machine recorded a head at {resolved}, and "
                            "nothing answers there (stopped, or its job ended); start one with `ray start --head`, "
                            f"give its HOST:PORT, or leave out {given} for a local instance") from None
        return
    scheme, _, hostport = address.rpartition("://")
    if scheme in ("http", "https"):
        head = "the head's HOST:PORT (its GCS port, 6379 unless `ray start --head --port` said otherwise)"
        fix = (f"give {head} or auto" if given == "--address" else
               f"give --address with {head}, which Ray joins instead, or unset RAY_ADDRESS for a local instance")
        raise UserError(f"{given} {address}: that is a Ray dashboard's address (what `ray job submit` takes); {fix}")
    if scheme not in ("", "ray"):  # another client's scheme (anyscale://...): Ray's to resolve
        return
    host, _, port = hostport.rpartition(":")
    if ":" in host and not host.startswith("["):  # an IPv6 address without brackets: Ray's to parse
        return
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"{given} {address}: give HOST:PORT of a Ray head (e.g. 10.0.0.1:6379), or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise UserError(f"{given} {address}: nothing answers at {host}:{port} ({why}); check that the Ray head "
                        f"runs there and the port is open, or leave out {given} for a local instance") from None


def resolve_auto() -> str | None:
    """The ``HOST:PORT`` that ``--address auto`` means: the head the last ``ray start`` on this machine recorded
    (Ray's ``ray_current_cluster`` file, which outlives a head killed with its job), or None where none is
    recorded or this Ray does not say (its helper is internal)."""
    try:
        from ray._private.services import find_bootstrap_address

        found = find_bootstrap_address(None)
    except Exception:  # noqa: BLE001 - an internal of Ray's that may change: then ray.init resolves it alone
        return None
    return found.strip() if isinstance(found, str) and found.strip() else None


TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"


@contextlib.contextmanager
def _quiet_local_start(address: str | None):
    """Ray's notice that a new local instance has token authentication *on*, which it logs on every start, is
    kept off the sweep's output for the instance the sweep starts and stops itself; every other message of Ray's
    (a warning that authentication is off included) is left as it is."""
    import logging

    log = logging.getLogger("ray._private.authentication.authentication_token_setup")

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(TOKEN_NOTICE)

    local = address in LOCAL
    if local:
        log.addFilter(keep)
    try:
        yield
    finally:
        if local:
            log.removeFilter(keep)


def connect(address: str | None, gpus_per_run: float | None, cpus_per_run: float,
            init_kwargs: dict | None = None, given: str = "--address") -> tuple[Any, float]:
    """Start or join Ray; the GPUs per run (default: 1 where the cluster has GPUs, else 0), checked against
    its nodes: a task asking for more than any one node has would wait for ever. Without an address a local
    instance is started ("local"), not a cluster that ``ray start`` left running on this machine. ``given``:
    where ``address`` came from, for the errors."""
    check_reachable(address, given=given)
    ray = import_ray()
    if not ray.is_initialized():
        # ray.init puts its own SIGTERM handler (exit at once) in place of the one that stops the sweep cleanly
        # (keep_finished): the sweep's is put back.
        handler = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
        try:
            with _quiet_local_start(address):
                ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                         configure_logging=False, **(init_kwargs or {}))
        except (ConnectionError, RuntimeError, ValueError) as exc:  # RuntimeError: another Ray or Python version
            why = one_line(exc)[:300]  # there; ValueError: an address Ray cannot parse
            if not address:
                raise UserError(f"a local Ray instance could not start ({why})") from None
            raise UserError(f"{given} {address}: Ray could not join the cluster there ({why}); start one with "
                            "`ray start --head` (the same Ray and Python versions on every node), or leave out "
                            f"{given} for a local instance") from None
        finally:
            if handler is not None:
                signal.signal(signal.SIGTERM, handler)
    nodes = [n.get("Resources") or {} for n in ray.nodes() if n.get("Alive")]
    if gpus_per_run is None:
        gpus_per_run = 1.0 if any(n.get("GPU", 0.0) for n in nodes) else 0.0
    if not any(n.get("GPU", 0.0) >= gpus_per_run and n.get("CPU", 0.0) >= cpus_per_run for n in nodes):
        have = ", ".join(sorted({f"{n.get('CPU', 0.0):g} CPUs and {n.get('GPU', 0.0):g} GPUs" for n in nodes}))
        most = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
        if gpus_per_run == 0:  # CPUs alone are short: say so, without GPU advice
            fix = (f"ask for at most {most:g}" if most > 0 else
                   "give its nodes CPUs (`ray start --num-cpus N`), or wait for workers to join")
            raise UserError(f"--cpus-per-run {cpus_per_run:g}: no node of the Ray cluster has that many CPUs (its "
                            f"nodes have {have or 'nothing'}), and a run is a task on one node; {fix}")
        raise UserError(f"--gpus-per-run {gpus_per_run:g} --cpus-per-run {cpus_per_run:g}: no node of the Ray cluster "
                        f"has that much (its nodes have {have or 'nothing'}), and a run is a task on one node; ask "
                        "for less (--gpus-per-run 0 trains on CPUs)")
    return ray, gpus_per_run


def run_grid_ray(grid: list[Config], *, address: str | None = None, gpus_per_run: float | None = None,
                 cpus_per_run: float = 1, init_kwargs: dict | None = None,
                 on_finish: Callable[[Finished, dict], None] = lambda f, counts: None,
                 on_skip: Callable[[list[str]], None] = lambda ids: None,
                 given: str = "--address") -> list[tuple[str, str]]:
    """Run ``grid`` as Ray tasks; returns ``(run_id, error)`` of the runs that failed.

    ``on_finish(finished, counts)`` is called once per finished run with the counts of done / failed runs
    and of running / queued ones (running: as many as the cluster's CPUs and GPUs hold at once).
    On Ctrl-C or SIGTERM every unfinished task is cancelled, the runs that had finished are written
    (``keep_finished``; a second stop gives that up), and the ``KeyboardInterrupt`` or ``Terminated`` re-raised
    with ``lost`` set on it: the ids of finished runs that could not be written, None where that is not known."""
    todo, skipped = pending(grid)
    if not todo:
        on_skip(skipped)
        return []
    check_lockable(Path(todo[0].run.out))
    ray, gpus = connect(address, gpus_per_run, cpus_per_run, init_kwargs, given)
    on_skip(skipped)  # once Ray is there: a cluster that cannot be reached is said before "N runs to train"
    resources = ray.cluster_resources()
    slots = int(resources.get("CPU", 0) // cpus_per_run)  # runs the cluster can hold at once
    if gpus:
        slots = min(slots, int(resources.get("GPU", 0) // gpus))
    task = ray.remote(train_in_task).options(num_gpus=gpus, num_cpus=cpus_per_run, max_retries=0)
    refs = {task.remote(cfg, int(cpus_per_run), scratch_key(cfg.run.out)): cfg for cfg in todo}
    failed: list[tuple[str, str]] = []
    counts = {"done": 0, "failed": 0, "total": len(todo)}
    waiting = list(refs)
    try:
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1, timeout=1.0)
            for ref in ready:
                finished = _collect(ray, ref, refs[ref])
                del refs[ref]  # its reply (the run's weights) leaves the object store once written
                if finished.ok:
                    counts["done"] += 1
                else:
                    counts["failed"] += 1
                    failed.append((finished.run_id, finished.error))
                running = min(len(waiting), max(slots, 1))
                on_finish(finished, {**counts, "running": running, "queued": len(waiting) - running})
    except (KeyboardInterrupt, Terminated, SystemError) as exc:
        # A stop raised by the signal handler while Ray waits reaches here as SystemError caused by it (Ray's wait
        # turns only a KeyboardInterrupt into one of its own).
        stop = exc.__cause__ if isinstance(exc, SystemError) else exc
        if not isinstance(stop, (KeyboardInterrupt, Terminated)):
            raise
        try:
            stop.lost = keep_finished(ray, refs)
        except (Exception, KeyboardInterrupt, Terminated):  # noqa: BLE001 - stopped again while writing, or Ray
            stop.lost = None  # itself gone (its head lost): what was not written is not known
        raise stop from None
    return failed


def keep_finished(ray, refs: dict, grace: float = 5.0) -> list[str]:
    """On a stop: cancel the tasks still running or queued, and write the runs of those that had finished but
    were not yet written (each task removes its scratch copy once it has sent its files: a reply left unread is
    a run lost). The run being written when the stop came is written again, whole. Returns the ids of finished
    runs that could not be written (a full disk)."""
    if not refs:
        return []
    for ref in refs:
        ray.cancel(ref, force=True)  # a finished task is not affected
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=grace)  # cancelled ones end with an error
    lost = []
    for ref in ready:
        try:
            reply = ray.get(ref)
        except Exception:  # noqa: BLE001 - cancelled, or died: nothing to keep (its scratch copy resumes it)
            continue
        if reply.get("ok"):
            try:
                _write_run(refs[ref], reply)
            except (UserError, OSError):
                lost.append(refs[ref].run_id())
    return lost


def check_lockable(out: Path) -> None:
    """``out`` keeps the file locks the driver takes to write each run's files: found before any run trains,
    not once the first has finished."""
    with FileLock(out / f".lock-check.{os.getpid()}", Busy, f"--out {out}", fix="choose another --out"):
        pass


def _collect(ray, ref, cfg: Config) -> Finished:
    run_id = cfg.run_id()
    try:
        reply = ray.get(ref)
    except Exception as exc:  # noqa: BLE001 - the task died (node lost, out of memory): recorded as failed
        failed, line = _write_failure(cfg, exc), failure_line(exc)
    else:
        if reply["ok"]:
            try:
                return Finished(run_id, True, result=_write_run(cfg, reply))
            except (UserError, OSError) as exc:  # disk full, a lock refused: this run is lost, the sweep goes on
                return Finished(run_id, False, f"trained on {reply['worker']['host']}, but its files could not be "
                                f"written into {cfg.run.out} ({one_line(exc)}); the same command trains it again")
        failed = _write_failure(cfg, RemoteRunError(reply["error"], reply["traceback"]), reply["worker"])
        line = reply["line"]
    if not failed:  # another attempt had completed the run
        return Finished(run_id, True, result=read_result(Path(cfg.run.out) / run_id))
    return Finished(run_id, False, line)
