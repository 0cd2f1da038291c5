"""The train / evaluate loop. It knows nothing of any one method.

Read it top-down: ``train_run`` (one run: reuse a finished result or take the run's lock, both
``benchmark.claim``, then set up, resume, train epochs, evaluate, measure, save) calls ``train_epoch``
(one pass over the loader through ``benchmark.step.train_step``) and ``evaluate`` (the test split in
deployment form).

* Optimiser: Adam over the ``requires_grad`` parameters, warm-up then cosine (``benchmark.step``).
* Mixed precision: bf16 autocast on CUDA by default; fp16 uses a gradient scaler; CPU runs fp32.
* No host synchronisation per step: losses are summed on the device; the progress bar reads them
  at most every ``PROGRESS_SECONDS``; a non-finite loss stops the run with one line at the end of
  the epoch at the latest, and the previous epoch's checkpoint stays.
* Resumable: after every epoch the ``TrainState`` (trainable part, optimiser, scheduler, scaler,
  history, unreadable frames replaced) goes to ``checkpoint.pt`` atomically; rerunning the same
  command continues from there. Data order and augmentation are seeded per epoch, so a resumed run
  matches an uninterrupted one.
* Evaluation uses the held-out split with deterministic frames, in the method's deployment form.
  The final metrics are those of the last epoch: picking the best epoch on the test split would
  leak it (the paper's sets have no validation split).
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from benchmark.claim import claim, claim_together
from benchmark.config import Config
from benchmark.datacheck import data_warnings, empty_splits
from benchmark.distributed import (
    Ranks,
    SeededItems,
    ShardedBatches,
    all_sum,
    barrier,
    data_parallel,
    device_for,
    gather_rows,
    globalise_batch_norms,
    local_statistics,
    model_draws_seed,
    ranks_from_env,
    session,
    shard,
)
from benchmark.measure import measure_model
from benchmark.results import CHECKPOINT, PREVIOUS_RESULT, RESULT, WEIGHTS, complete_result, stale_labels
from benchmark.signals import RunStopped, Terminated, check_stop, hold_signals, quiet_worker, start_loader
from benchmark.step import (
    CHECKPOINT_FIX,
    CHECKPOINT_KEYS,
    TrainState,
    autocast_for,
    compute_dtype,
    inference,
    last_step_lr,
    new_train_state,
    schedule_warnings,
    train_step,
)
from benchmark.task import Prepared, one_training_clip, prepare, resolve_device
from benchmark.writes import atomic_torch_save, atomic_write_json, kept_only_if_used, load_torch_file
from vtfpar.data.layouts import LABELS_READ
from vtfpar.errors import UserError, first_few
from vtfpar.fusion import SHARED_START
from vtfpar.loss import WeightedBCE
from vtfpar.metrics import HEADLINE_METRICS, compute_metrics, prior_baselines
from vtfpar.model import VTFPAR, count_parameters, non_finite, trainable_state_dict

PROGRESS_SECONDS = 2.0  # how often the progress bar reads the running loss from the device


LOG_SECONDS = 60.0  # without a progress bar (a log file, a batch job): a line this often inside an epoch




def loader(dataset, batch_size: int, workers: int, generator: torch.Generator | None, shuffle: bool, device,
           ranks: Ranks = Ranks()) -> DataLoader:
    """Training (``shuffle``): this rank's share of each seeded global batch, every clip augmented from its
    own seed (``benchmark.distributed.ShardedBatches``); evaluation: ``dataset`` in order.

    ``workers`` is capped at the number of batches: a worker more would start (a process, its memory) for
    nothing, and the batches do not depend on how many there are."""
    pin = device.type == "cuda"
    if shuffle:
        batches = ShardedBatches(len(dataset), batch_size, generator, ranks)
        return DataLoader(SeededItems(dataset), batch_sampler=batches, num_workers=min(workers, len(batches)),
                          pin_memory=pin, persistent_workers=False, worker_init_fn=quiet_worker)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, pin_memory=pin, persistent_workers=False,
                      num_workers=min(workers, math.ceil(len(dataset) / batch_size)), worker_init_fn=quiet_worker)


def _batches(data: DataLoader) -> Iterator:
    """``data``'s batches, with a stop requested by a signal honoured before each and after the last; the loader
    is started by ``benchmark.signals.start_loader`` (signals held while workers fork; workers stopped with us
    are quiet)."""
    batches = start_loader(data)
    for batch in batches:
        check_stop()
        yield batch
    del batches  # shuts the workers down now: a stop that lands in that finaliser is raised here, not lost
    check_stop()


def _probabilities(model: VTFPAR, data: DataLoader, device: torch.device, amp: str,
                   done: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-clip probabilities and labels over a loader, in deployment form; ``done`` is told each batch's clips."""
    autocast, _ = autocast_for(device, amp)
    probs, labels = [], []
    with model.deployed(compute_dtype(device, amp)):
        for frames, y in _batches(data):
            logits = inference(model, frames.to(device, non_blocking=True), autocast)
            probs.append(torch.sigmoid(logits.float()).cpu().numpy())
            labels.append(y.numpy())
            if done is not None:
                done(len(y))
    return np.concatenate(probs), np.concatenate(labels)


def _per_tracklet(probs: np.ndarray, labels: np.ndarray, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Several clips per tracklet (``item_tracklet``): their probabilities averaged per tracklet."""
    owner = getattr(dataset, "item_tracklet", None)
    if owner is not None and len(owner) != len(dataset.labels):
        n = len(dataset.labels)
        summed = np.zeros((n, probs.shape[1]))
        np.add.at(summed, owner, probs)
        probs = summed / np.bincount(owner, minlength=n)[:, None]
        labels = np.asarray(dataset.labels)
    return probs, labels


def predict(model: VTFPAR, data: DataLoader, device: torch.device, amp: str,
            done: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels over a loader (per tracklet), in deployment form; ``done``: see ``_probabilities``."""
    probs, labels = _probabilities(model, data, device, amp, done)
    return _per_tracklet(probs, labels, data.dataset)


def evaluate(p: Prepared, batch_size: int | None = None, ranks: Ranks = Ranks(),
             done: Callable[[int], None] | None = None) -> dict:
    """Metrics on the test split; with several processes each predicts every N-th clip and all gather.
    ``done`` (one process) is told the clips of each batch predicted, for a progress bar."""
    cfg = p.cfg
    size = batch_size or cfg.train.eval_batch_size
    if not ranks.distributed:
        probs, labels = predict(p.model, loader(p.test_set, size, cfg.data.num_workers, None, False, p.device),
                                p.device, cfg.train.amp, done)
    else:
        mine = shard(range(len(p.test_set)), ranks)
        part = loader(Subset(p.test_set, mine), size, cfg.data.num_workers, None, False, p.device)
        probs = np.zeros((len(p.test_set), len(p.attributes.names)))
        labels = np.zeros_like(probs)
        # A rank with no clips (a test split smaller than the process count) still joins the gather.
        own = _probabilities(p.model, part, p.device, cfg.train.amp) if len(mine) else (probs[:0], labels[:0])
        for idx, pr, la in gather_rows((mine, *own), ranks):
            probs[idx], labels[idx] = pr, la
        probs, labels = _per_tracklet(probs, labels, p.test_set)
    return compute_metrics(probs, labels, p.attributes.names, p.attributes.groups, cfg.train.threshold)


def train_epoch(state: TrainState, data: DataLoader, device: torch.device,
                show: Callable[[str], None] = lambda info: None, ranks: Ranks = Ranks(), method: str = "") -> dict:
    """One pass over ``data``; returns the epoch's mean loss and throughput (over all processes).

    Raises ``UserError`` if the loss became non-finite (the caller has not saved this epoch), or if a trainable
    parameter got no gradient in the first step (``method``: the registered method, named in that error).
    """
    t0 = last_shown = time.perf_counter()
    seen, loss_sum = 0, torch.zeros((), device=device)
    # 1 where the run's first loss, from the weights it started with, before any update, was not finite (read only
    # if a sum is not finite; summed over the processes with the losses, so that all of them say the same)
    first_bad, untrained = torch.zeros((), device=device), state.scheduler.last_epoch == 0
    for frames, labels in _batches(data):
        frames, labels = frames.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        loss = train_step(state, frames, labels)
        loss_sum += loss * frames.shape[0]
        if not seen:
            _check_gradients_reached(state, method)
            if untrained:
                first_bad = (~torch.isfinite(loss)).float()
        seen += frames.shape[0]
        now = time.perf_counter()
        if now - last_shown >= PROGRESS_SECONDS and not ranks.distributed:  # the only host sync, rare on purpose
            last_shown = now
            _check_finite(loss_sum, state.epoch, first_bad, state.scaler.is_enabled())
            show(f"loss {loss_sum.item() / seen:.4f}  {seen / (now - t0):.1f} clips/s")
        elif now - last_shown >= PROGRESS_SECONDS:  # several processes: the loss is known at the epoch's end only
            last_shown = now  # (each holds its share; a sum over all would synchronise them), the rate is even
            show(f"{seen * ranks.world / (now - t0):.1f} clips/s (all {ranks.world} processes)")
        else:
            show("")
    totals = all_sum(torch.stack([loss_sum.float(), torch.tensor(float(seen), device=device), first_bad]), ranks)
    # the same sums on every rank: all stop together, with the same line
    _check_finite(totals[0], state.epoch, totals[2], state.scaler.is_enabled())
    _check_finite_weights(state)  # the last step may have broken them on a finite loss: not checkpointed then
    seconds = time.perf_counter() - t0
    clips = int(totals[1].item())
    return {"loss": totals[0].item() / max(clips, 1), "epoch_seconds": seconds, "clips": clips}


def _check_gradients_reached(state: TrainState, method: str = "") -> None:
    """Every parameter the optimiser trains got a gradient in the epoch's first step (no host sync: a missing
    gradient is ``None``). One that gets none never moves, so a method whose own parameters sit where no gradient
    reaches (never used by its forward, or used only under ``no_grad`` or after ``detach``) would train and be
    reported as the frozen baseline under its name. (Trainable weights inside a CLIP tower run under ``no_grad``
    are refused earlier, when the model is built.)"""
    named = {id(p): n for n, p in state.model.named_parameters()}
    missing = [named.get(id(p), "?") for p in state.params if p.grad is None]
    if missing:
        where = ""
        if method:
            from methods.registry import get_method, method_named

            where = f"{method_named(get_method(method))}: "
        raise UserError(f"{where}{len(missing)} trainable parameter(s) got no gradient in the first training step "
                        f"({first_few(missing)}), so they would never train: the method's forward must use every "
                        "parameter its build makes trainable, outside no_grad and without detach")


def _check_finite(loss_sum: torch.Tensor, finished_epochs: int, first_bad: torch.Tensor, fp16: bool) -> None:
    """A non-finite loss stops the run. ``first_bad`` > 0: the run's first loss, computed before any update, was
    not finite either (in some process), so the starting model is at fault (a method's scale, the loaded weights,
    fp16's range) and a lower learning rate would not help. ``fp16``: the run computes in float16 (the scaler's
    precision)."""
    if torch.isfinite(loss_sum):
        return
    if bool(first_bad > 0):
        raise UserError("loss was not finite in the first training step, before any update, so train.lr is not the "
                        "cause: the loss with the weights the run starts from is not finite; check the method's "
                        "settings (a scale, say) and the weights loaded"
                        + ("; or set train.amp to bf16 or off (fp16 overflowed?)" if fp16 else ""))
    raise UserError(f"loss became {loss_sum.item()} in epoch {finished_epochs + 1}: lower train.lr (or set "
                    "train.grad_clip); rerunning resumes from the last finished epoch")


def _check_finite_weights(state: TrainState) -> None:
    """The trainable weights are finite (one host sync): a checkpoint is never written with NaN or inf in it,
    so a rerun resumes from a usable one (loading refuses such weights as a damaged file)."""
    if non_finite((n, p) for n, p in state.model.named_parameters() if p.requires_grad):
        raise UserError(f"the weights became NaN or infinite in epoch {state.epoch + 1}: lower train.lr (or set "
                        "train.grad_clip); rerunning resumes from the last finished epoch")


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[info]}"), disable=not enabled, transient=False,
    )


class RunOutcome(tuple):
    """What ``train_run`` returns: unpacks as ``(result, run_dir)``; ``trained`` says whether this call trained
    the run and wrote its files (False: the complete result was already there, or another process's)."""

    def __new__(cls, result: dict, run_dir: Path, trained: bool):
        outcome = super().__new__(cls, (result, run_dir))
        outcome.trained = trained
        return outcome


def train_run(cfg: Config, *, resume: bool = True, force: bool = False, progress: bool = True, wait: bool = False,
              log=print) -> RunOutcome:
    """Train, evaluate and measure one configuration; returns (result, run_dir) (a ``RunOutcome``).

    An existing complete result with the same resolved config is returned as is unless ``force``.
    The output folder is checked before anything is built, and the run is locked while it trains
    (``benchmark.lock``: a second process for the same run stops, or with ``wait`` waits). Started by
    torchrun with several processes, they train the run together (``benchmark.distributed``); rank 0
    alone checks, locks, logs and writes.
    """
    ranks = ranks_from_env()
    if not ranks.main:
        log, progress = (lambda *a, **k: None), False
    run_dir = Path(cfg.run.out) / cfg.run_id()

    def train(device: torch.device) -> RunOutcome:
        return RunOutcome(_train(cfg, run_dir, device, ranks, resume=resume, force=force, progress=progress,
                                 log=log), run_dir, True)

    with kept_only_if_used(run_dir):  # a run that fails before writing anything leaves no empty folders behind
        return _claim_and_train(cfg, run_dir, ranks, train, force=force, wait=wait, log=log)


def _claim_and_train(cfg: Config, run_dir: Path, ranks: Ranks, train, *, force: bool, wait: bool,
                     log) -> RunOutcome:
    if not ranks.distributed:
        with contextlib.ExitStack() as held:
            done = claim(run_dir, cfg, held, force=force, wait=wait, log=log)
            return RunOutcome(done, run_dir, False) if done is not None else train(resolve_device(cfg.run.device))
    # Several processes: the group first, so that whatever rank 0 decides (already complete, locked,
    # unwritable) every rank learns it instead of waiting for a partner that has gone.
    device = device_for(ranks, resolve_device(cfg.run.device, make_current=False))  # session() makes it current
    with session(ranks, device), contextlib.ExitStack() as held:
        decision = claim_together(run_dir, cfg, held, ranks, force=force, wait=wait, log=log)
        if decision[0] == "error":
            raise UserError(decision[1])
        if decision[0] == "done":
            return RunOutcome(decision[1], run_dir, False)
        return train(device)


def _train(cfg: Config, run_dir: Path, device: torch.device, ranks: Ranks, *, resume: bool, force: bool,
           progress: bool, log) -> dict:
    ckpt_path = run_dir / CHECKPOINT
    p = prepare(cfg, device)
    if refused := empty_splits(cfg.run.dataset, {"train": len(p.train_set), "test": len(p.test_set)},
                               getattr(p.train_set, "annotation_format", None)):
        raise refused
    if len(p.train_set) == 1:
        raise one_training_clip(cfg.run.dataset)
    if ranks.main:
        for line in [*schedule_warnings(cfg.train), *data_warnings(p.train_set, cfg.data.root, p.test_set)]:
            log(line)
    tc, device = cfg.train, p.device
    train_labels = np.asarray(p.train_set.labels)
    loss_fn = WeightedBCE(torch.from_numpy(train_labels.mean(0)), tc.loss_normalize, ranks.world).to(device)
    gen = torch.Generator()
    train_loader = loader(p.train_set, tc.batch_size, cfg.data.num_workers, gen, True, device, ranks)
    state = new_train_state(p.model, loss_fn, device, tc, len(train_loader))
    if ranks.distributed:
        globalise_batch_norms(p.model)
        state.runner = data_parallel(p.model, device)
    if resume and ckpt_path.is_file() and not force:
        saved = load_torch_file(ckpt_path, CHECKPOINT_KEYS, fix=CHECKPOINT_FIX)
        if saved.get("run_id", run_dir.name) != run_dir.name:  # checkpoints written before run ids name none
            raise UserError(f"{ckpt_path} is the checkpoint of run {saved['run_id']}, not of run {run_dir.name} whose "
                            f"folder holds it: {CHECKPOINT_FIX}")
        # Epochs trained on labels read otherwise (a checkpoint of a run stopped before a reader was put right, whose
        # later epochs would train on the labels as read now) are not continued: the result would mix the two. A
        # checkpoint that records no reading was written before checkpoints did: revision 2.
        for key, allowed in (("labels_read", range(1, LABELS_READ + 1)), ("fusion_start", (1, SHARED_START))):
            if key in saved and (type(saved[key]) is not int or saved[key] not in allowed):  # as bench writes them
                raise UserError(f"{ckpt_path}: its {key} ({saved[key]!r}) is not what bench writes; {CHECKPOINT_FIX}")
        if why := stale_labels({"data": {"attributes": p.attributes.names, "labels_read": saved.get("labels_read", 2),
                                         "format": getattr(p.train_set, "annotation_format", None)}}, CHECKPOINT_FIX):
            raise UserError(f"{ckpt_path}: {why}")
        state.load_state_dict(saved, str(ckpt_path))
        # Trained on from the start it began with. Checkpoints recorded labels_read (from ee91804) before they recorded
        # the start, and only after fusion and head started from the seed alone (e0e8a9f): one with that and without
        # a start had the shared one; one with neither cannot be told (None).
        p.model.fusion_start = saved.get("fusion_start", SHARED_START if "labels_read" in saved else None)
        if state.epoch > tc.epochs:
            raise UserError(f"{ckpt_path}: it is past epoch {state.epoch} of a run of {tc.epochs} epochs, which bench "
                            f"never writes; {CHECKPOINT_FIX}")
        log(f"resuming {run_dir.name} after epoch {state.epoch}")
    elif force and ranks.main:  # only now that the data and the model are ready, so a refused run keeps it
        if ckpt_path.is_file():
            log(f"--force: {ckpt_path}, an unfinished attempt's, is removed; training starts from epoch 1")
        ckpt_path.unlink(missing_ok=True)
        if (run_dir / RESULT).is_file():  # this attempt is the run now: stopped, its rerun resumes it
            os.replace(run_dir / RESULT, run_dir / PREVIOUS_RESULT)
    elif ranks.main and ckpt_path.is_file():  # --no-resume
        log(f"--no-resume: {ckpt_path} is not resumed (it is replaced when epoch 1 ends); training starts from "
            "epoch 1")
    barrier(ranks)
    started = time.time()
    try:
        return _finish(p, state, train_loader, gen, ckpt_path, run_dir, loss_fn, started, progress, log, ranks)
    except (KeyboardInterrupt, Terminated) as exc:
        drop = (("--force",) if force else ()) + (() if resume else ("--no-resume",))
        raise RunStopped(exc, state.epoch + 1, tc.epochs, drop) from None
    except BaseException:
        # A forced attempt that failed (not stopped: there is nothing to resume into) leaves the earlier complete
        # result where it was, with its weights, rather than a run that reads as unfinished.
        previous = run_dir / PREVIOUS_RESULT
        if force and ranks.main and previous.is_file() and not (run_dir / RESULT).exists():
            os.replace(previous, run_dir / RESULT)
        raise


def _finish(p: Prepared, state: TrainState, train_loader: DataLoader, gen: torch.Generator, ckpt_path: Path,
            run_dir: Path, loss_fn: WeightedBCE, started: float, progress: bool, log, ranks: Ranks) -> dict:
    """The remaining epochs, the final evaluation, the measurements and the run's files (rank 0)."""
    cfg, tc, device = p.cfg, p.cfg.train, p.device
    train_labels = np.asarray(p.train_set.labels)
    metrics = _epochs(p, state, train_loader, gen, ckpt_path, progress, log, ranks)
    if metrics is None:  # resumed after the last epoch had finished; this evaluation repeats that epoch's, whose
        metrics = evaluate(p, ranks=ranks)  # frame reads were counted already, so its reads are not added
    if not ranks.main:
        return {"status": "complete", "rank": ranks.rank, "metrics": metrics}
    replaced = state.frames_replaced
    if replaced:
        log(f"warning: {replaced_frames_said(cfg, replaced)} (data.unreadable_frames_replaced)")
    measurements = {}
    if cfg.measure.enabled:  # on this one process (with its batch norms on its own batch)
        log("measuring memory, FLOPs and time ...")
        state.release()  # training is over; its optimiser state stays in the checkpoint until the result is written
        with local_statistics():
            measurements = measure_model(p.model, loss_fn, device, tc.amp, cfg.data.frames,
                                         p.train_set[0][0].shape[-1], tc.batch_size, tc.eval_batch_size,
                                         cfg.measure.warmup, cfg.measure.iters, cfg.measure.flops,
                                         grad_clip=tc.grad_clip, weight_decay=tc.weight_decay)
    result = complete_result(
        cfg, run_dir.name, device, metrics=metrics,
        baselines=prior_baselines(train_labels, np.asarray(p.test_set.labels), p.attributes.names,
                                  p.attributes.groups, tc.threshold),
        params=count_parameters(p.model), fusion_start=p.model.fusion_start,
        # where the dataset was, as this process saw it
        data={"root": os.path.abspath(os.path.expanduser(cfg.data.root)) if cfg.data.root else None,
              "train_tracklets": len(p.train_set.labels), "test_tracklets": len(p.test_set.labels),
              "unreadable_frames_replaced": replaced,
              "labelled_not_found": len(getattr(p.train_set, "labelled_not_found", [])),
              "frames_not_found": len(getattr(p.train_set, "frames_not_found", [])),
              "mixed_folders": len(getattr(p.train_set, "mixed_folders", [])),
              "format": getattr(p.train_set, "annotation_format", None), "attributes": p.attributes.names,
              "sentences": p.attributes.sentences, "labels_read": LABELS_READ},
        history=state.history, text_encoder_calls=getattr(p.model.text, "encode_calls", None),
        wall_seconds=time.time() - started, measurements=measurements)
    if ranks.distributed:
        result["distributed"] = {"processes": ranks.world, "backend": torch.distributed.get_backend(),
                                 "batch_per_process": tc.batch_size // ranks.world}
    atomic_torch_save(run_dir / WEIGHTS, {
        "run_id": result["run_id"],  # bench eval and predict refuse weights copied in from another run
        "backbone": cfg.model.backbone, "pretrained": cfg.model.pretrained, "method": cfg.run.method,
        "state": trainable_state_dict(p.model),
    })
    atomic_write_json(run_dir / RESULT, result)
    ckpt_path.unlink(missing_ok=True)
    (run_dir / PREVIOUS_RESULT).unlink(missing_ok=True)
    return result


def _epochs(p: Prepared, state: TrainState, train_loader: DataLoader, gen: torch.Generator, ckpt_path: Path,
            progress: bool, log, ranks: Ranks) -> dict | None:
    """The remaining epochs, each seeded from (seed, epoch) and checkpointed; the last evaluation's metrics."""
    cfg, tc = p.cfg, p.cfg.train
    metrics = None
    with _progress(progress) as bar:
        while state.epoch < tc.epochs:
            epoch = state.epoch
            gen.manual_seed(cfg.run.seed * 100_003 + epoch)
            torch.manual_seed(model_draws_seed(cfg.run.seed * 100_003 + epoch, ranks))
            task = bar.add_task(f"epoch {epoch + 1}/{tc.epochs}", total=len(train_loader), info="")
            done, logged = [0], [time.monotonic()]

            def show(info: str, task=task, epoch=epoch, done=done, logged=logged) -> None:
                bar.update(task, advance=1, **({"info": info} if info else {}))
                done[0] += 1
                if not progress and info and time.monotonic() - logged[0] >= LOG_SECONDS:
                    logged[0] = time.monotonic()
                    log(f"epoch {epoch + 1}/{tc.epochs}  batch {done[0]}/{len(train_loader)}  {info}")

            replaced_before = frames_replaced(p)
            stats = train_epoch(state, train_loader, p.device, show, ranks, method=cfg.run.method)
            row = {"epoch": epoch + 1, "loss": stats["loss"], "lr": last_step_lr(state.scheduler),
                   "epoch_seconds": stats["epoch_seconds"],
                   "train_clips_per_s": stats["clips"] / stats["epoch_seconds"],
                   "train_frames_per_s": stats["clips"] * cfg.data.frames / stats["epoch_seconds"]}
            if ranks.distributed:  # per epoch: a run resumed under another process count shows which ran where
                row["processes"] = ranks.world
            if (epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs:
                bar.update(task, info=f"loss {row['loss']:.4f}  evaluating on the test split ...")
                seen, total = [0], len(p.test_set)

                def evaluated(clips: int, task=task, loss=row["loss"], seen=seen, total=total) -> None:
                    seen[0] += clips
                    bar.update(task, info=f"loss {loss:.4f}  evaluating {seen[0]}/{total} test clips")

                m = metrics = evaluate(p, ranks=ranks, done=evaluated if progress else None)
                row.update({k: m[k] for k in HEADLINE_METRICS})
                bar.update(task, info=f"loss {row['loss']:.4f}  test F1 {m['f1']:.4f}  mA {m['mA']:.4f}")
            if not progress:
                log("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
            state.history.append(row)
            # this epoch's, training and evaluation, in every process (each read its own share of the clips)
            state.frames_replaced += int(all_sum(torch.tensor(frames_replaced(p) - replaced_before,
                                                              device=p.device), ranks).item())
            # a stop waits for the checkpoint and the epoch it counts (the resume message names it), or a second stop
            # breaks off the write (atomic: the previous checkpoint stays, and is the one named)
            with hold_signals(second_stop_breaks=True):
                if ranks.main:
                    # the run id, as model.pt: a checkpoint copied in from another run (another seed) is refused
                    atomic_torch_save(ckpt_path, {**state.state_dict(), "epoch": epoch + 1,
                                                  "run_id": ckpt_path.parent.name, "labels_read": LABELS_READ,
                                                  "fusion_start": p.model.fusion_start})
                state.epoch = epoch + 1  # counted with the checkpoint (rank 0's: the other ranks write none)
    return metrics


def replaced_frames_said(cfg: Config, replaced: int) -> str:
    """What ``replaced`` unreadable frame reads mean, and the command that lists the files."""
    check = ["bench", "data", "check", "--dataset", cfg.run.dataset, "--data-root", cfg.data.root,
             *(["--format", cfg.data.format] if cfg.data.format != "auto" else []), "--verify-images"]
    return (f"{replaced} frame reads fell back to a neighbouring frame because a file could not be decoded; "
            f"`{shlex.join(check)}` lists the files")


def frames_replaced(p: Prepared) -> int:
    """Frame reads in this process (and its loader workers) so far that fell back to a neighbouring frame
    because a file could not be decoded, over both splits: each epoch's share is added to the train state, so
    that the count in ``result.json`` survives an interruption in the checkpoint."""
    return sum(getattr(d, "bad_frames", 0) for d in (p.train_set, p.test_set))
