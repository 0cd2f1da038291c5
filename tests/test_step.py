"""The one training step (``benchmark.step``): clipping, the fp16 gradient scaler and the learning-rate schedule."""

import math

import pytest
import torch

import methods
from benchmark.config import TrainSection
from benchmark.step import compute_dtype, inference, lr_factor, new_train_state, train_step
from tests.conftest import tiny_model
from tests.operators import dispatched
from vtfpar.loss import WeightedBCE

SCALE = 2.0**8
# Operators that read a tensor's value on the host (``.item()``, ``bool()``, ``float()``, a shape that depends on the
# data): on a GPU each waits until the device has run everything queued before it.
HOST_READS = ("aten._local_scalar_dense.", "aten.item.", "aten.is_nonzero.", "aten.equal.", "aten.allclose.",
              "aten.nonzero.", "aten.masked_select.", "aten.unique", "aten._unique", "aten.repeat_interleave.")


def _state(model, clips, **train):
    """A state for ``model`` with the paper's schedule shortened to ``train``'s settings (one step per epoch); under
    fp16 the loss scale starts at 2^8, low enough that this model's first gradients do not overflow."""
    state = new_train_state(model, WeightedBCE(clips[1].mean(0)), torch.device("cpu"),
                            TrainSection(**{"epochs": 3, "warmup_epochs": 0.0, **train}), 1)
    if state.scaler.is_enabled():
        state.scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    return state


def _grads(state) -> list[torch.Tensor]:
    """The gradients the last step left (``train_step`` zeroes them at its start, not its end): what it stepped on."""
    return [p.grad.detach().clone() for p in state.params if p.grad is not None]


def _norm(grads: list[torch.Tensor]) -> float:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()


@pytest.mark.parametrize("amp", ["off", "fp16"])
def test_clipping_steps_on_the_true_gradient_rescaled_to_its_norm(amp, clips):
    """``train.grad_clip`` (the fix the non-finite-loss error advises): Adam steps on the whole gradient rescaled to
    norm ``grad_clip``. Under fp16 the loss is scaled for backward and the gradient unscaled before it is clipped,
    so the clip applies to the true gradient, not to one 2^8 (by default 2^16) times larger. Adam's first step is
    ``-lr g / (|g| + eps)`` per element, which tells a gradient of norm 1e-3 from one 2^8 times smaller."""
    frames, labels = clips
    model = tiny_model("side_tuning")
    clip = 1e-3
    state = _state(model, clips, amp=amp, grad_clip=clip)
    before = [p.detach().clone() for p in state.params]
    model.train()
    torch.manual_seed(0)
    scale = SCALE if amp == "fp16" else 1.0  # fp16's backward is run scaled, or small gradients underflow
    with state.autocast():  # the true gradient: the step's forward (same dropout draws), unclipped
        logits = model(frames)
    (state.loss_fn(logits, labels) * scale).backward()
    true = [p.grad / scale for p in state.params]
    assert _norm(true) > 10 * clip  # the clip has something to do
    torch.manual_seed(0)
    train_step(state, frames, labels)
    assert state.scaler.is_enabled() == (amp == "fp16")
    assert _norm(_grads(state)) == pytest.approx(clip, rel=1e-4)  # what was left for the optimiser: clipped
    lr, eps = state.optimizer.defaults["lr"], state.optimizer.defaults["eps"]
    for p, p0, g in zip(state.params, before, true, strict=True):
        clipped = g * (clip / _norm(true))
        torch.testing.assert_close(p.detach() - p0, -lr * clipped / (clipped.abs() + eps), rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("amp", ["off", "bf16"])
@pytest.mark.parametrize("method", methods.list_methods())
def test_the_step_reads_nothing_back_to_the_host(method, amp, clips):
    """``train_step`` (forward, loss, backward, clipping, fused Adam, schedule) of every method returns its loss on
    the device and reads no value back, so a GPU's queue never drains inside a step: the first step (Adam's state
    made), the next, and the inference in deployment form. (fp16's gradient scaler reads its inf check back by
    torch's design; bf16, the CUDA default, needs no scaler.)"""
    state = _state(tiny_model(method), clips, amp=amp, grad_clip=1.0)
    ops = dispatched(lambda: [train_step(state, *clips) for _ in range(2)])
    assert len(ops) > 100 and not [op for op in ops if op.startswith(HOST_READS)], ops
    assert ops.count("aten._fused_adam_.default") == 2  # Adam fused into one kernel per step, on a CPU too
    with state.model.deployed(compute_dtype(torch.device("cpu"), amp)):  # and the inference that is timed
        ops = dispatched(lambda: inference(state.model, clips[0], state.autocast))
    assert len(ops) > 50 and not [op for op in ops if op.startswith(HOST_READS)], ops


def test_the_official_schedule_is_the_paper_codes_curve_held_per_epoch():
    """``train.schedule = "official"``: the VTFPAR++ code calls timm's ``CosineLRScheduler(t_initial=30,
    warmup_t=5, warmup_lr_init=1e-5, lr_min=2e-6, warmup_prefix=False, cycle_limit=1).step(i)`` before epoch i =
    1..30. Its rates at the points that fix the shape, worked out by hand from that class's ``_get_lr``, and the
    same rate at every step of an epoch."""
    cfg = TrainSection(epochs=30, warmup_epochs=5.0, lr=1e-3, warmup_lr=1e-5, min_lr=2e-6, schedule="official")
    steps = 7  # per epoch

    def epoch_lr(i):  # epoch i counted from 1, at its first and its last step
        first, last = (lr_factor((i - 1) * steps + k, steps, cfg) * cfg.lr for k in (0, steps - 1))
        assert first == last, i
        return first

    assert epoch_lr(1) == pytest.approx(1e-5 + 1 * (1e-3 - 1e-5) / 5, rel=1e-12)  # 2.08e-4: warm-up counts from t=1
    assert epoch_lr(4) == pytest.approx(1e-5 + 4 * (1e-3 - 1e-5) / 5, rel=1e-12)
    assert epoch_lr(5) == pytest.approx(2e-6 + 0.5 * (1e-3 - 2e-6) * (1 + math.cos(math.pi * 5 / 30)), rel=1e-12)
    assert epoch_lr(5) < 0.94e-3  # the cosine runs over the whole run: lr itself is never reached
    assert epoch_lr(15) == pytest.approx(2e-6 + 0.5 * (1e-3 - 2e-6), rel=1e-12)
    assert epoch_lr(29) == pytest.approx(2e-6 + 0.5 * (1e-3 - 2e-6) * (1 + math.cos(math.pi * 29 / 30)), rel=1e-12)
    assert epoch_lr(30) == pytest.approx(2e-6, rel=1e-12)  # cycle_limit reached: the floor
    per_step = TrainSection(epochs=30, warmup_epochs=5.0, lr=1e-3, warmup_lr=1e-5, min_lr=2e-6)
    assert lr_factor(15 * steps, steps, per_step) > epoch_lr(16) / cfg.lr  # the default curve differs in between


def test_the_gradient_scalers_state_goes_into_the_checkpoint(clips):
    """A resumed fp16 run continues with the loss scale it had, not a fresh 65,536 (whose first steps overflow and
    are skipped)."""
    state = _state(tiny_model("frozen"), clips, amp="fp16")
    train_step(state, *clips)
    state.scaler.update(128.0)
    saved = state.state_dict()
    fresh = _state(tiny_model("frozen"), clips, amp="fp16")
    assert fresh.scaler.get_scale() != 128.0
    fresh.load_state_dict(saved, "runs/x/checkpoint.pt")
    assert fresh.scaler.get_scale() == 128.0


def test_the_schedule_warms_up_linearly_then_follows_a_cosine_to_its_floor(clips):
    """``lr_factor`` (times ``train.lr``) at the points that fix its shape: the paper's warm-up from ``warmup_lr``,
    ``lr`` when it ends, a cosine over the remaining epochs (half-way at the middle), ``min_lr`` at the end and
    after it."""
    cfg = TrainSection(epochs=10, warmup_epochs=2.0, lr=1e-3, warmup_lr=1e-5, min_lr=2e-6)
    steps = 10  # per epoch
    at = {step: lr_factor(step, steps, cfg) * cfg.lr for step in (0, 10, 20, 40, 60, 100, 130)}
    assert at[0] == pytest.approx(1e-5, rel=1e-12)
    assert at[10] == pytest.approx((1e-5 + 1e-3) / 2, rel=1e-12)
    assert at[20] == pytest.approx(1e-3, rel=1e-12)
    assert at[40] == pytest.approx(2e-6 + 0.5 * (1e-3 - 2e-6) * (1 + math.cos(math.pi / 4)), rel=1e-12)
    assert at[60] == pytest.approx(2e-6 + 0.5 * (1e-3 - 2e-6), rel=1e-12)
    assert at[100] == pytest.approx(2e-6, rel=1e-12) and at[130] == pytest.approx(2e-6, rel=1e-12)
    # The step drives it: after n training steps the optimiser's learning rate is the curve's at step n, and the
    # last step trained at the curve's at step n - 1 (what an epoch reports).
    from benchmark.step import last_step_lr

    state = new_train_state(tiny_model("frozen"), WeightedBCE(clips[1].mean(0)), torch.device("cpu"), cfg, steps)
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(at[0], rel=1e-12)
    for _ in range(23):  # past the warm-up
        train_step(state, *clips)
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(lr_factor(23, steps, cfg) * cfg.lr, rel=1e-12)
    assert last_step_lr(state.scheduler) == pytest.approx(lr_factor(22, steps, cfg) * cfg.lr, rel=1e-12)
