"""The train / evaluate loop. It knows nothing of any one method.

* Optimiser groups are built from ``requires_grad`` parameters only (Adam, paper settings).
* Learning rate: linear warm-up from ``warmup_lr`` then cosine to ``min_lr`` (the paper's code
  steps this per epoch; we step it per iteration on the same curve, which is smoother and equal
  at epoch boundaries).
* Mixed precision: bf16 autocast on CUDA by default; fp16 uses a GradScaler; CPU runs fp32.
* Resumable: after every epoch the trainable state, optimiser, scheduler, history and RNG state
  go to ``checkpoint.pt`` atomically; rerunning the same command continues from there. Data
  order and augmentation are seeded per epoch, so a resumed run matches an uninterrupted one.
* Evaluation uses the held-out split with deterministic frames. The final metrics are those of
  the last epoch: picking the best epoch on the test split would leak it (the paper's sets have
  no validation split).
"""

from __future__ import annotations

import contextlib
import math
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from benchmark.config import REPO_ROOT, Config
from benchmark.measure import adam, measure_model
from benchmark.results import CHECKPOINT, RESULT, WEIGHTS, atomic_torch_save, atomic_write_json, read_result
from methods import build_model
from vtfpar.backbone import load_clip
from vtfpar.data import DataSpec, build_datasets
from vtfpar.errors import UserError
from vtfpar.loss import WeightedBCE
from vtfpar.metrics import compute_metrics, prior_baselines
from vtfpar.model import VTFPAR, count_parameters, trainable_state_dict

SCHEMA_VERSION = 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"run.device is '{name}' but CUDA is not available here (use --device cpu or auto)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"run.device '{name}' is not a device (use auto, cpu, cuda or cuda:N)") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_for(device: torch.device, amp: str):
    """The autocast context for ``train.amp`` on this device (and whether fp16 needs a scaler)."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "off"
    if amp == "off":
        return contextlib.nullcontext, False
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return (lambda: torch.autocast(device.type, dtype=dtype)), amp == "fp16"


def lr_factor(step: int, steps_per_epoch: int, cfg) -> float:
    """Warm-up then cosine, as a multiple of ``cfg.lr``; ``step`` counts optimiser steps."""
    e = step / max(steps_per_epoch, 1)
    if e < cfg.warmup_epochs:
        lr = cfg.warmup_lr + (cfg.lr - cfg.warmup_lr) * e / cfg.warmup_epochs
    else:
        span = max(cfg.epochs - cfg.warmup_epochs, 1e-8)
        progress = min((e - cfg.warmup_epochs) / span, 1.0)
        lr = cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))
    return lr / cfg.lr


def environment(device: torch.device) -> dict:
    def version(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                                  timeout=5).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None

    dev = str(device)
    if device.type == "cuda":
        dev = f"{dev} ({torch.cuda.get_device_name(device)})"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "open_clip": version("open_clip_torch"),
        "peft": version("peft"),
        "timm": version("timm"),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "device": dev,
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def data_spec(cfg: Config, image_size: int) -> DataSpec:
    d = cfg.data
    return DataSpec(d.root, d.frames, image_size, cfg.run.seed, d.train_clips, d.test_clips, d.format, d.annotation,
                    d.train_list, d.test_list, d.eval_all_clips)


def build_task_model(cfg: Config, clip, attributes):
    """The task model of ``cfg``'s method on ``clip`` with the config's frames and fusion settings."""
    m = cfg.model
    return build_model(clip, m.backbone, attributes, cfg.run.method, cfg.method, cfg.data.frames,
                       m.fusion_width, m.fusion_heads, m.fusion_depth, m.drop_path)


@dataclass
class Prepared:
    """Everything a run (or a measurement) needs, built from a Config."""

    cfg: Config
    device: torch.device
    model: VTFPAR
    train_set: object
    test_set: object
    attributes: object


def prepare(cfg: Config) -> Prepared:
    device = resolve_device(cfg.run.device)
    seed_everything(cfg.run.seed)
    clip = load_clip(cfg.model.backbone, cfg.model.pretrained)
    size = cfg.data.image_size or clip.visual.image_size[0]
    if size != clip.visual.image_size[0]:
        raise UserError(
            f"data.image_size {size} differs from the backbone's {clip.visual.image_size[0]} px; "
            "set data.image_size = 0 to follow the backbone"
        )
    train_set, test_set, attributes = build_datasets(cfg.run.dataset, data_spec(cfg, size))
    model = build_task_model(cfg, clip, attributes).to(device)
    return Prepared(cfg, device, model, train_set, test_set, attributes)


def loader(dataset, batch_size: int, workers: int, generator: torch.Generator | None, shuffle: bool, device):
    sampler = RandomSampler(dataset, generator=generator) if shuffle else None
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
        generator=generator, drop_last=shuffle and len(dataset) > batch_size,
        pin_memory=device.type == "cuda", persistent_workers=False,
    )


@torch.no_grad()
def predict(model: VTFPAR, data: DataLoader, device: torch.device, amp: str) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels over a loader (no_grad, not inference_mode: cached text
    features created here must stay usable by a later training step)."""
    model.eval()
    autocast, _ = autocast_for(device, amp)
    probs, labels = [], []
    for frames, y in data:
        with autocast():
            logits = model(frames.to(device, non_blocking=True))
        probs.append(torch.sigmoid(logits.float()).cpu().numpy())
        labels.append(y.numpy())
    probs, labels = np.concatenate(probs), np.concatenate(labels)
    owner = getattr(data.dataset, "item_tracklet", None)
    if owner is not None and len(owner) != len(data.dataset.labels):  # several clips per tracklet: average
        n = len(data.dataset.labels)
        summed = np.zeros((n, probs.shape[1]))
        np.add.at(summed, owner, probs)
        probs = summed / np.bincount(owner, minlength=n)[:, None]
        labels = np.asarray(data.dataset.labels)
    return probs, labels


def evaluate(p: Prepared, batch_size: int | None = None) -> dict:
    cfg = p.cfg
    data = loader(p.test_set, batch_size or cfg.train.eval_batch_size, cfg.data.num_workers, None, False, p.device)
    probs, labels = predict(p.model, data, p.device, cfg.train.amp)
    return compute_metrics(probs, labels, p.attributes.names, p.attributes.groups, cfg.train.threshold)


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


def train_run(cfg: Config, *, resume: bool = True, force: bool = False, progress: bool = True,
              log=print) -> tuple[dict, Path]:
    """Train, evaluate and measure one configuration; returns (result, run_dir).

    An existing complete result with the same resolved config is returned as is unless ``force``.
    """
    run_dir = Path(cfg.run.out) / cfg.run_id()
    if (run_dir / RESULT).is_file() and not force:
        existing = read_result(run_dir)
        if existing.get("status") == "complete":
            log(f"run {run_dir.name} is already complete (use --force to run it again)")
            return existing, run_dir
    if force:
        (run_dir / CHECKPOINT).unlink(missing_ok=True)
    p = prepare(cfg)
    model, device, tc = p.model, p.device, cfg.train
    train_labels = np.asarray(p.train_set.labels)
    if len(p.train_set) == 0 or len(p.test_set) == 0:
        raise UserError(f"dataset {cfg.run.dataset} has an empty split (train {len(p.train_set)}, "
                        f"test {len(p.test_set)})")
    loss_fn = WeightedBCE(torch.from_numpy(train_labels.mean(0)), tc.loss_normalize).to(device)
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = adam(params, lr=tc.lr, weight_decay=tc.weight_decay)
    gen = torch.Generator()
    train_loader = loader(p.train_set, tc.batch_size, cfg.data.num_workers, gen, True, device)
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps_per_epoch, tc))
    autocast, use_scaler = autocast_for(device, tc.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

    history: list[dict] = []
    start_epoch = 0
    ckpt_path = run_dir / CHECKPOINT
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        missing = model.load_state_dict(ckpt["model"], strict=False)
        if missing.unexpected_keys:
            raise UserError(f"{ckpt_path}: does not match this model (delete it or use --force)")
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        history, start_epoch = ckpt["history"], ckpt["epoch"]
        log(f"resuming {run_dir.name} after epoch {start_epoch}")
    started = time.time()
    n_frames = cfg.data.frames
    metrics = None
    with _progress(progress) as bar:
        for epoch in range(start_epoch, tc.epochs):
            gen.manual_seed(cfg.run.seed * 100_003 + epoch)
            torch.manual_seed(cfg.run.seed * 100_003 + epoch)
            model.train()
            task = bar.add_task(f"epoch {epoch + 1}/{tc.epochs}", total=steps_per_epoch, info="")
            t0 = time.perf_counter()
            seen, loss_sum = 0, 0.0
            for frames, labels in train_loader:
                frames, labels = frames.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                with autocast():
                    logits = model(frames)
                loss = loss_fn(logits, labels)
                if not torch.isfinite(loss):
                    raise UserError(f"loss became {loss.item()} in epoch {epoch + 1}: lower train.lr (or set "
                                    "train.grad_clip); rerunning resumes from the last finished epoch")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if tc.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                seen += frames.shape[0]
                loss_sum += loss.item() * frames.shape[0]
                rate = seen / (time.perf_counter() - t0)
                bar.update(task, advance=1, info=f"loss {loss_sum / seen:.4f}  {rate:.1f} clips/s")
            train_seconds = time.perf_counter() - t0
            row = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "lr": scheduler.get_last_lr()[0],
                   "epoch_seconds": train_seconds, "train_clips_per_s": seen / train_seconds,
                   "train_frames_per_s": seen * n_frames / train_seconds}
            if (epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs:
                m = metrics = evaluate(p)
                row.update({k: m[k] for k in ("f1", "mA", "accuracy", "precision", "recall")})
                bar.update(task, info=f"loss {row['loss']:.4f}  test F1 {m['f1']:.4f}  mA {m['mA']:.4f}")
            if not progress:
                log("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
            history.append(row)
            atomic_torch_save(ckpt_path, {
                "epoch": epoch + 1, "model": trainable_state_dict(model), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "history": history,
            })
    if metrics is None:  # resumed after the last epoch had finished
        metrics = evaluate(p)
    test_labels = np.asarray(p.test_set.labels)
    result = {
        "schema": SCHEMA_VERSION,
        "run_id": run_dir.name,
        "status": "complete",
        "method": cfg.run.method,
        "dataset": cfg.run.dataset,
        "backbone": cfg.model.backbone,
        "pretrained": cfg.model.pretrained,
        "seed": cfg.run.seed,
        "config": cfg.to_dict(),
        "config_source": cfg.source,
        "env": environment(device),
        "command": " ".join(sys.argv),
        "metrics": metrics,
        "baselines": prior_baselines(train_labels, test_labels, p.attributes.names, p.attributes.groups,
                                     tc.threshold),
        "params": count_parameters(model),
        "data": {"train_tracklets": len(p.train_set.labels), "test_tracklets": len(p.test_set.labels),
                 "unreadable_frames_replaced": sum(getattr(d, "bad_frames", 0) for d in (p.train_set, p.test_set)),
                 "attributes": p.attributes.names, "sentences": p.attributes.sentences},
        "history": history,
        "text_encoder_calls": getattr(model.text, "encode_calls", None),
        "wall_seconds_this_process": time.time() - started,
    }
    if cfg.measure.enabled:
        log("measuring memory, FLOPs and time ...")
        result.update(measure_model(
            model, loss_fn, device, autocast, cfg.data.frames, p.train_set[0][0].shape[-1], tc.batch_size,
            tc.eval_batch_size, cfg.measure.warmup, cfg.measure.iters, cfg.measure.flops))
    result["timing_epochs"] = {"epoch_seconds": [h["epoch_seconds"] for h in history],
                               "train_seconds_total": sum(h["epoch_seconds"] for h in history)}
    atomic_torch_save(run_dir / WEIGHTS, {
        "backbone": cfg.model.backbone, "pretrained": cfg.model.pretrained, "method": cfg.run.method,
        "state": trainable_state_dict(model),
    })
    atomic_write_json(run_dir / RESULT, result)
    ckpt_path.unlink(missing_ok=True)
    return result, run_dir


def load_run(run_dir: Path) -> Prepared:
    """Rebuild a finished run's model from its result.json and model.pt (trainable part only)."""
    from benchmark.config import config_from_dict

    result_path, weights_path = run_dir / RESULT, run_dir / WEIGHTS
    for f in (result_path, weights_path):
        if not f.is_file():
            raise UserError(f"{f} not found: is {run_dir} a finished run directory?")
    cfg = config_from_dict(read_result(run_dir)["config"])
    p = prepare(cfg)
    saved = torch.load(weights_path, map_location="cpu", weights_only=True)
    result = p.model.load_state_dict(saved["state"], strict=False)
    frozen = {n for n, q in p.model.named_parameters() if not q.requires_grad}
    missing = [k for k in result.missing_keys if k not in frozen]
    if result.unexpected_keys or missing:
        raise UserError(f"{weights_path} does not match the model of its config "
                        f"(unexpected {result.unexpected_keys[:3]}, missing {missing[:3]})")
    return p
