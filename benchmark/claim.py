"""Claiming a run's folder before it trains: the one owner of what ``bench run`` finds there.

A complete result is returned as it is (with a note where ``train.amp = auto`` trained it in another precision
than here); otherwise the folder is checked to be writable before anything is built, and the run's lock is taken
(``benchmark.lock``: one trainer per run; with ``--wait`` it waits), after which what writers killed outright left
there is removed (``_tidy``). Under torchrun rank 0 decides and every rank learns its decision (``claim_together``).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from benchmark.config import Config, precision_of, resolved_amp
from benchmark.distributed import Ranks, broadcast_object
from benchmark.lock import POLL_SECONDS, RunLock, RunLocked
from benchmark.results import CHECKPOINT, RESULT, WEIGHTS, check_runs_folder, existing_result, stale_labels
from benchmark.step import CHECKPOINT_FIX, CHECKPOINT_KEYS
from benchmark.task import recorded_root, resolve_device
from benchmark.writes import dangling_link, left_temporaries, load_torch_file, probe_folder
from vtfpar.errors import UserError, first_few, not_a_file

RUN_FILES = (RESULT, WEIGHTS, CHECKPOINT)  # what a run writes into its folder, each atomically


def claim(run_dir: Path, cfg: Config, held: contextlib.ExitStack, *, force: bool, wait: bool, log) -> dict | None:
    """The complete result already in ``run_dir`` (unless ``force``); otherwise the output is checked and
    the run's lock entered into ``held`` (looking again once it is ours: the one we waited for may have
    finished it), and None: this process trains the run. Whoever holds the lock first removes what writers
    that were killed left in the folder (``_tidy``)."""
    done = None if force else _complete(run_dir, cfg, log)
    if done is not None:
        _tidy_complete(run_dir, log)
        return done
    _check_output(run_dir, cfg.run.out)
    held.enter_context(RunLock(run_dir, wait=wait, log=log))
    done = None if force else _complete(run_dir, cfg, log)
    _tidy(run_dir, done, log)
    return done


def _tidy(run_dir: Path, done: dict | None, log) -> None:
    """Under the run's lock (no other process writes the run's files now): remove the temporary files of atomic
    writes that a killed process left (at ViT-B scale hundreds of MB each), and, beside the complete result
    ``done``, the checkpoint it was written from (``_leftover_checkpoint``); each said in one line."""
    if removed := [path.name for path in left_temporaries(run_dir, RUN_FILES) if _removed(path)]:
        log(f"removed {len(removed)} temporary file(s) left in {run_dir} by a write that was cut short: "
            f"{first_few(removed)}")
    ckpt = run_dir / CHECKPOINT
    if done is not None and _leftover_checkpoint(run_dir, done) and _removed(ckpt):
        log(f"removed {ckpt}: the checkpoint of the last epoch, left when the run was stopped after writing its "
            f"{RESULT} and {WEIGHTS}, which hold all of it")


def _removed(path: Path) -> bool:
    """Remove ``path``; whether it is gone (a folder this user may not write keeps it: tidying is not the run's
    work, and never stops it)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        return False
    return True


def _tidy_complete(run_dir: Path, log) -> None:
    """``_tidy`` a complete run's folder if it holds anything to remove and its lock is free now (never waited
    for: another process holding it is writing there; a folder that cannot be locked is left as it is)."""
    if not (run_dir / CHECKPOINT).is_file() and not left_temporaries(run_dir, RUN_FILES):
        return
    try:
        with RunLock(run_dir, wait=False, log=log):
            _tidy(run_dir, existing_result(run_dir), log)  # looked at again: it is ours only now
    except UserError:  # trained by another process (--force), or a folder this user cannot lock or write
        pass


def _leftover_checkpoint(run_dir: Path, result: dict) -> bool:
    """Whether ``checkpoint.pt`` beside the complete ``result`` is the one that result was written from (killed
    between writing result.json and removing it): same run, every epoch, the same history (wall-clock times
    included, which no other attempt repeats), and model.pt there. Such a checkpoint holds nothing the run
    needs: a rerun returns the result, and a rerun with --force removes the checkpoint before training.

    Any other checkpoint is kept: e.g. that of a --force attempt that failed (whose earlier result was put
    back), which would resume if its result were removed."""
    ckpt = run_dir / CHECKPOINT
    if not ckpt.is_file() or ckpt.is_symlink() or not (run_dir / WEIGHTS).is_file():
        return False
    try:
        saved = load_torch_file(ckpt, CHECKPOINT_KEYS, fix=CHECKPOINT_FIX)
    except UserError:  # unreadable: not known to be the finished run's; left for resume to report
        return False
    history = result.get("history")
    return (saved.get("run_id") == run_dir.name == result.get("run_id") and isinstance(history, list)
            and saved["epoch"] == len(history) and _same_rows(saved["history"], history))


def _same_rows(a: Any, b: Any) -> bool:
    """Whether two histories are equal as result.json writes them (NaN equal to NaN, numbers as JSON has them)."""
    try:
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    except (TypeError, ValueError):
        return False


def claim_together(run_dir: Path, cfg: Config, held: contextlib.ExitStack, ranks: Ranks, *, force: bool, wait: bool,
                    log, poll: float = POLL_SECONDS) -> tuple[str, Any]:
    """Rank 0's ``claim`` as every rank's decision: ("done", result), ("train", None) or ("error", line).
    Rank 0 never blocks on the lock: with ``wait`` it looks again every ``poll`` seconds and tells the
    others each time, so that a long wait is many short collectives rather than one that outlasts the
    process group's timeout (30 min on gloo, 10 on NCCL) and ends the run."""
    waited = False
    while True:
        decision: tuple[str, Any] = ("train", None)
        if ranks.main:
            try:
                done = claim(run_dir, cfg, held, force=force, wait=False, log=log)
                decision = ("done", done) if done is not None else decision
            except RunLocked as exc:
                decision = ("wait", exc.waiting()) if wait else ("error", str(exc))
            except UserError as exc:
                decision = ("error", str(exc))
        decision = broadcast_object(decision, ranks)
        if decision[0] != "wait":
            return decision
        if not waited and ranks.main:
            log(decision[1])
        waited = True
        time.sleep(poll)


def _complete(run_dir: Path, cfg: Config, log) -> dict | None:
    existing = existing_result(run_dir)
    if existing is not None:
        log(f"run {run_dir.name} is already complete (bench run ... --force runs it again)")
        if why := _other_precision(existing, cfg):
            log(f"note: run {run_dir.name}: {why}")
        if why := stale_labels(existing):
            log(f"warning: run {run_dir.name}: {why}")
        if why := _other_root(existing, cfg):
            log(f"warning: run {run_dir.name}: {why}")
        weights = run_dir / WEIGHTS
        if not weights.is_file():  # its numbers stand (report), but eval and predict need the weights
            log(f"warning: {weights} {not_a_file(weights)}, so bench eval and bench predict cannot use this run: put "
                "it back, or train it again with bench run ... --force")
    return existing


PRECISION_NAMES = {"off": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}


def _other_precision(existing: dict, cfg: Config) -> str | None:
    """What to say of a complete run of ``train.amp = auto`` that was trained in another precision than it would
    train in here (bf16 on a GPU, fp32 on a CPU: the run id holds ``auto`` either way, as it holds no device);
    None where they agree, or where this run's device is neither a CPU nor a GPU."""
    name = cfg.run.device  # read, not checked: its result stands (the device is checked if the run has to train)
    kind = resolve_device("auto").type if name == "auto" else name.split(":")[0]
    if cfg.train.amp != "auto" or kind not in ("cpu", "cuda"):
        return None
    recorded = ((existing.get("config") or {}).get("train") or {}).get("amp")
    then, now = precision_of(existing), resolved_amp("auto", kind)
    if recorded != "auto" or then not in PRECISION_NAMES or then == now:  # a run of auto, its device recorded
        return None
    return (f"it was trained in {PRECISION_NAMES[then]} on {existing['env']['device']}, and here ({kind}) "
            f"train.amp=auto trains in {PRECISION_NAMES[now]}: bench run ... --force trains it again here, and "
            f"--set train.amp={now} trains a run of its own beside it (bench report keeps the two apart)")


def _other_root(existing: dict, cfg: Config) -> str | None:
    """What to say of a complete run whose dataset root, written relative (the run id holds it as written, so
    that every node of a cluster names the run alike), is another folder from here than the one it trained on:
    its numbers are of that folder's data. None where both are one folder, or the run reads no root."""
    given, then = cfg.data.root, recorded_root(existing)
    if cfg.run.dataset == "synthetic" or not given or not then or os.path.isabs(os.path.expanduser(given)):
        return None
    here = os.path.abspath(os.path.expanduser(given))
    if os.path.realpath(here) == os.path.realpath(then):
        return None
    return (f"it was trained on the data in {then}, and data.root {given} is {here} from this folder: its numbers "
            f"are of {then}; if {here} holds other data, give the run an --out of its own (or an absolute "
            "--data-root)")


def _check_output(run_dir: Path, out: str) -> None:
    """The run directory can be created and written, and holds no folder where a file goes, before any
    training."""
    check_runs_folder(out, "this run")
    try:
        probe_folder(run_dir)
    except OSError as exc:
        if why := dangling_link(run_dir):
            raise UserError(f"cannot write runs under {out}: {why}, or choose another --out (run.out)") from None
        raise UserError(f"cannot write runs under {out} ({run_dir}: {exc.strerror or exc}); choose another --out "
                        "(run.out)") from None
    for name in RUN_FILES:
        if (run_dir / name).exists() and not (run_dir / name).is_file():
            raise UserError(f"{run_dir / name} is not a file, so the run's {name} cannot be written there: remove "
                            "it, or choose another --out (run.out)")
