"""The one training step, and the state it updates. Used by the training loop, by the measurements
in every ``result.json`` and by ``bench perf``, so what is timed is exactly what trains.

``train_step`` = forward (under autocast), weighted BCE (eq. 6-7), backward through the gradient
scaler, optional gradient clipping, optimiser step, scheduler step. It never synchronises the host
with the device: it returns the loss as a device tensor, and the caller decides when to look at it
(the loop sums losses on the device and checks them once per epoch or per progress refresh).

``TrainState`` owns everything resume needs: the model's trainable part, optimiser, scheduler,
gradient scaler, the finished epoch count, the per-epoch history and the finished epochs' count of
unreadable frames replaced (so that a resumed run's ``result.json`` counts the epochs before the
interruption too). Data order and augmentation are re-seeded from (seed, epoch) at the start of every
epoch, so no random-generator state needs saving for a resumed run to match an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from benchmark.config import resolved_amp
from benchmark.results import is_finite_number
from vtfpar.errors import UserError, one_line
from vtfpar.fusion import DROPPED_SHIFTS
from vtfpar.model import VTFPAR, load_trainable_state, trainable_state_dict


def autocast_for(device: torch.device, amp: str) -> tuple[Callable[[], contextlib.AbstractContextManager], bool]:
    """The autocast context for ``train.amp`` on this device, and whether fp16 needs a gradient scaler."""
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise UserError(f"amp '{amp}': choose auto, bf16, fp16 or off")
    dtype = compute_dtype(device, amp)
    if dtype is None:
        return contextlib.nullcontext, False
    return (lambda: torch.autocast(device.type, dtype=dtype)), dtype == torch.float16


def compute_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """The dtype autocast runs matrix products in for ``train.amp`` on this device (None: no autocast);
    what ``VTFPAR.deployed`` holds the weights in for inference."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolved_amp(amp, device.type))


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam (the paper's optimiser) over ``params``, fused into one kernel per step where torch has it
    (CUDA and CPU floating-point parameters)."""
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cuda", "cpu") for p in params)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)


def lr_factor(step: int, steps_per_epoch: int, cfg) -> float:
    """The learning rate at optimiser step ``step`` (counted from 0) as a multiple of ``cfg.lr``: a linear warm-up
    from ``warmup_lr``, then a cosine to ``min_lr``. ``cfg.schedule`` says which curve:

    * ``per_step`` (the default): the warm-up reaches ``lr`` at ``warmup_epochs``, the cosine runs over the
      remaining epochs, and the rate changes at every step.
    * ``official``: the VTFPAR++ code's, held for each epoch. Epoch i (counted from 1) trains at the rate of
      t = i on timm's ``CosineLRScheduler`` with ``warmup_prefix=False``: ``warmup_lr + t (lr - warmup_lr) /
      warmup_epochs`` while t < ``warmup_epochs``, then the cosine over the whole run, ``min_lr + (lr - min_lr)
      (1 + cos(pi t / epochs)) / 2``, and ``min_lr`` in the last epoch. So ``lr`` itself is never reached
      (0.933e-3 at epoch 5 of the paper's 30), the first epoch already trains at ``t = 1``, and over the paper's
      30 epochs the rates sum to about a sixth less than ``per_step``'s.
    """
    if getattr(cfg, "schedule", "per_step") == "official":
        t = step // max(steps_per_epoch, 1) + 1
        if t < cfg.warmup_epochs:
            lr = cfg.warmup_lr + (cfg.lr - cfg.warmup_lr) * t / cfg.warmup_epochs
        elif t < cfg.epochs:
            lr = cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * t / cfg.epochs))
        else:
            lr = cfg.min_lr
        return lr / cfg.lr
    e = step / max(steps_per_epoch, 1)
    if e < cfg.warmup_epochs:
        lr = cfg.warmup_lr + (cfg.lr - cfg.warmup_lr) * e / cfg.warmup_epochs
    else:
        span = max(cfg.epochs - cfg.warmup_epochs, 1e-8)
        progress = min((e - cfg.warmup_epochs) / span, 1.0)
        lr = cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))
    return lr / cfg.lr


def schedule_warnings(cfg) -> list[str]:
    """Lines (``warning: ...``) for a schedule (``lr_factor``) that never does what its settings suggest: a warm-up
    longer than the run, so the learning rate never reaches ``train.lr``, or a start or floor above it."""
    lines = []
    if cfg.warmup_epochs > cfg.epochs:
        end = cfg.warmup_lr + (cfg.lr - cfg.warmup_lr) * cfg.epochs / cfg.warmup_epochs
        lines.append(f"warning: train.warmup_epochs ({cfg.warmup_epochs:g}) is more than train.epochs ({cfg.epochs}): "
                     f"the learning rate warms up for the whole run, to about {end:.3g} at its end, never train.lr "
                     f"({cfg.lr:g}); lower train.warmup_epochs")
    used = {"warmup_lr": cfg.warmup_epochs > 0, "min_lr": cfg.warmup_epochs < cfg.epochs}  # the phases that run
    for key in ("warmup_lr", "min_lr"):
        if used[key] and getattr(cfg, key) > cfg.lr:
            lines.append(f"warning: train.{key} ({getattr(cfg, key):g}) is above train.lr ({cfg.lr:g}), so the "
                         "schedule " + ("warms down" if key == "warmup_lr" else "rises after its warm-up") +
                         f"; set train.{key} below train.lr")
    return lines


CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "scheduler", "history")
# How every error about a checkpoint ends; a sweep's run says it too, and only bench run has --no-resume.
CHECKPOINT_FIX = "delete it, or train the run again with bench run ... --no-resume"


@dataclass
class TrainState:
    """Model, optimiser, scheduler, scaler and progress: what a checkpoint holds."""

    model: VTFPAR
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    autocast: Callable[[], contextlib.AbstractContextManager]
    grad_clip: float = 0.0
    runner: torch.nn.Module | None = None  # what the training forward calls, if not ``model`` (a DDP wrapper)
    epoch: int = 0  # finished epochs
    history: list[dict] = field(default_factory=list)
    frames_replaced: int = 0  # frame reads of the finished epochs that fell back to a neighbour (data.bad_frames)

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def param_names(self) -> list[str]:
        """The names of ``params``, in the optimiser's order."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        return [names[id(p)] for p in self.params]

    def release(self) -> None:
        """Drop the gradients and the optimiser's moments (Adam's two per parameter): what a model measured in
        deployment form, or by a step with an optimiser of its own, must not hold. A later step starts them anew."""
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer.state.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "model": trainable_state_dict(self.model),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "history": self.history,
                "unreadable_frames_replaced": self.frames_replaced}

    def load_state_dict(self, state: dict[str, Any], source: str) -> None:
        """Restore a checkpoint; ``source`` (its file) is named in the error if it does not fit."""
        epoch, history = state.get("epoch"), state.get("history")
        if type(epoch) is not int or epoch < 0 or not isinstance(history, list) or len(history) != epoch or not all(
                isinstance(row, dict) and is_finite_number(row.get("epoch_seconds")) for row in history):
            raise UserError(f"{source}: its epoch ({epoch!r}) or history is not what bench writes; {CHECKPOINT_FIX}")
        replaced = state.get("unreadable_frames_replaced", 0)  # a checkpoint written before it was kept: from 0
        if type(replaced) is not int or replaced < 0:
            raise UserError(f"{source}: its count of unreadable frames ({replaced!r}) is not what bench writes; "
                            f"{CHECKPOINT_FIX}")
        load_trainable_state(self.model, state["model"], source, fix=CHECKPOINT_FIX)  # folds DROPPED_SHIFTS
        dropped = [name for name in DROPPED_SHIFTS if name in state["model"]]  # (on a copy: still there)
        fresh = [dict(g) for g in self.optimizer.param_groups], self.scheduler.state_dict()
        try:
            self.optimizer.load_state_dict(without_moments_of(state["optimizer"], self.param_names(), dropped))
            fit_state_shapes(self.optimizer)
            self.scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{source}: its optimiser state does not fit this model ({one_line(exc)[:100]}); "
                            f"{CHECKPOINT_FIX}") from None
        # torch takes any value for a learning rate or a step count, and fails on it in the first step
        loaded = [*zip(fresh[0], self.optimizer.param_groups, strict=True), (fresh[1], self.scheduler.state_dict())]
        for before, after in loaded:
            if bad := next((k for k, v in before.items() if k != "params" and not _same_kind(v, after.get(k))), None):
                raise UserError(f"{source}: its optimiser's {bad} ({after.get(bad)!r}) is not what bench writes; "
                                f"{CHECKPOINT_FIX}")
        self.epoch, self.history, self.frames_replaced = state["epoch"], state["history"], replaced


def _same_kind(fresh: Any, loaded: Any) -> bool:
    """Whether a loaded optimiser or scheduler setting is a finite number where the fresh one is a number (each
    item of a tuple or list alike); what is not a number is not judged."""
    if isinstance(fresh, (tuple, list)):
        return isinstance(loaded, (tuple, list)) and len(loaded) == len(fresh) and all(
            _same_kind(a, b) for a, b in zip(fresh, loaded, strict=True))
    if isinstance(fresh, (int, float)) and not isinstance(fresh, bool):
        return is_finite_number(loaded) and (isinstance(fresh, float) or type(loaded) is int)
    return True


def without_moments_of(saved: dict[str, Any], names: list[str], dropped: list[str]) -> dict[str, Any]:
    """An optimiser state saved by a model of an earlier version that also had the parameters ``dropped``
    (``vtfpar.fusion.DROPPED_SHIFTS``), fitted to the parameters ``names`` of today's: their entries removed, so
    that the run resumes (``fold_dropped_shifts`` folds the parameters themselves). A state that does not have
    that many parameters is returned as it is, for ``load_state_dict`` to refuse."""
    if not dropped or not isinstance(saved, dict) or not isinstance(saved.get("param_groups"), list):
        return saved
    order = []
    for name in names:
        order.append(name)
        order.extend(old for old, after in DROPPED_SHIFTS.items() if after == name and old in dropped)
    try:
        ids = [i for group in saved["param_groups"] for i in group["params"]]
    except (KeyError, TypeError):
        return saved
    if len(ids) != len(order):
        return saved
    gone = {i for i, name in zip(ids, order, strict=True) if name in dropped}
    return {**saved, "state": {i: v for i, v in saved.get("state", {}).items() if i not in gone},
            "param_groups": [{**g, "params": [i for i in g["params"] if i not in gone]} for g in saved["param_groups"]]}


def fit_state_shapes(optimizer: torch.optim.Optimizer) -> None:
    """Reshape per-parameter optimiser state (Adam's moments) saved for a parameter of another shape but the same
    size, e.g. before a layout gained a broadcast axis (``TapFusions``); another size, a state without Adam's
    moments or one holding NaN or infinite values is a ``ValueError`` (``load_state_dict`` turns it into the
    one-line checkpoint error). Without this, the first step after such a resume would fail deep inside the
    optimiser, or end in a non-finite loss blamed on the learning rate."""
    for group in optimizer.param_groups:
        needed = {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if group.get("amsgrad") else set())
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            if state and (missing := sorted(needed - state.keys())):  # empty: Adam starts it afresh
                raise ValueError(f"a parameter's state lacks {', '.join(missing)}")
            for key, value in state.items():
                if torch.is_tensor(value) and not bool(torch.isfinite(value).all()):  # once, at resume
                    raise ValueError(f"state '{key}' holds NaN or infinite values")
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != param.shape:
                    if value.numel() != param.numel():
                        raise ValueError(f"state '{key}' of shape {list(value.shape)} for a parameter of shape "
                                         f"{list(param.shape)}")
                    optimizer.state[param][key] = value.reshape(param.shape)


def new_train_state(model: VTFPAR, loss_fn: torch.nn.Module, device: torch.device, train_cfg,
                    steps_per_epoch: int) -> TrainState:
    """A fresh state for ``train_cfg`` (a ``TrainSection``): Adam, warm-up + cosine, scaler for fp16."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, train_cfg.lr, train_cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps_per_epoch, train_cfg))
    autocast, use_scaler = autocast_for(device, train_cfg.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    return TrainState(model, loss_fn, optimizer, scheduler, scaler, autocast, train_cfg.grad_clip)


def last_step_lr(scheduler: torch.optim.lr_scheduler.LambdaLR) -> float:
    """The learning rate the last optimiser step trained at: what an epoch's ``lr`` reports (``get_last_lr()`` is
    the rate of the step to come, which at the end of a run no step uses). Read from the schedule's own function,
    so a ``LambdaLR`` (as every ``TrainState`` holds) is needed."""
    scheduler_steps = scheduler.last_epoch  # the steps taken so far (``train_step`` steps it after each)
    if scheduler_steps == 0:
        return scheduler.get_last_lr()[0]
    return scheduler.base_lrs[0] * scheduler.lr_lambdas[0](scheduler_steps - 1)


def train_step(state: TrainState, frames: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One optimiser step on a batch; returns the (detached) loss on the device, without a host sync."""
    state.model.train()
    with state.autocast():
        logits = (state.runner or state.model)(frames)
    loss = state.loss_fn(logits, labels)
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    if state.grad_clip > 0:
        state.scaler.unscale_(state.optimizer)
        torch.nn.utils.clip_grad_norm_(state.params, state.grad_clip, foreach=True)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    return loss.detach()


def inference(model: VTFPAR, frames: torch.Tensor, autocast: Callable[[], contextlib.AbstractContextManager]
              ) -> torch.Tensor:
    """Logits of ``frames``. Call inside ``model.deployed(compute_dtype(device, amp))``: evaluation and
    every inference measurement use the deployment form."""
    with torch.inference_mode(), autocast():
        return model(frames)


def measurement_state(model: VTFPAR, loss_fn: torch.nn.Module, device: torch.device, amp: str,
                      grad_clip: float = 0.0, weight_decay: float = 0.0) -> TrainState:
    """A state for timing ``train_step`` without moving the weights noticeably (lr 1e-12, constant);
    callers restore the trainable state afterwards. ``grad_clip`` and ``weight_decay``: the run's
    (``train.*``), so that the step timed does the clipping and decay the run's step does (0: the shipped
    defaults, which ``bench perf`` measures)."""
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], lr=1e-12, weight_decay=weight_decay)
    autocast, use_scaler = autocast_for(device, amp)
    return TrainState(model, loss_fn, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                      torch.amp.GradScaler(device.type, enabled=use_scaler), autocast, grad_clip=grad_clip)
