"""What every run measures besides accuracy: memory, FLOPs and time (conventions in the README).

* Memory, per phase (a full training step: forward, backward, optimiser step; and inference):
  on CUDA ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (the primary
  figure, as in V-PETL Bench, LST and Side4Video), ``max_memory_reserved``, and the process's
  memory as NVML reports it (``nvidia-ml-py``; optional, ``None`` where NVML or the process is not
  visible, e.g. in some containers). On CPU: the process's peak resident set size during the
  phase (Linux ``VmHWM`` after resetting it), which includes the weights and the libraries, and
  its increase over the resident size at the start of the phase; labelled as such. What the process
  freed before the phase (earlier runs of a sweep, this run's training) is first handed back to the
  system (``release_freed_memory``): otherwise it stays resident and a run's figure depends on what ran
  before it in the same process (prompt tuning after side tuning: 1,468 MiB; alone: 1,000). Inference is
  still measured before training, the smaller phase first.
* FLOPs: fvcore's count of one forward pass per clip (T frames; as it trains, per clip of the training batch,
  so that what runs once per step, such as prompt tuning's text encoder, is shared as in training; in deployment
  form, of one clip alone), **1 multiply-add = 1 FLOP**
  (fvcore's convention; multiply by 2 for FLOPs in the strict sense). fvcore does not count
  ``scaled_dot_product_attention``; we add a handler (QK^T and AV: ``B H L S (d_k + d_v)``).
  The ViT-B/16 image tower comes to the hand count of about 17.6 G multiply-adds (tested).
* Time: warm-up iterations, then ``iters`` synchronised iterations; median with min/max and the
  inter-quartile range. Training step at the training batch size; inference latency at batch 1
  and throughput at the evaluation batch size. A ratio to a reference (``bench perf``'s CLIP forward)
  times the reference next to every iteration (``time_paired``): the median of per-pair ratios
  survives the machine's drift. The training step is the one that trains
  (``benchmark.step.train_step``); inference runs in the method's deployment form (LoRA merged,
  prompt-tuned text features computed once; see ``vtfpar.model``), as a deployed model would.
* Operators: ATen operators dispatched by one training step (training batch) and one inference
  (batch 1), run eagerly also under ``train.compile`` (compiled code's fused kernels bypass the dispatcher).

Measuring steps must not change the trained model: the trainable state is saved before and
restored after, and the measurement optimiser is a fresh one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import os
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmark.memory import read_kib
from benchmark.step import compute_dtype, inference, measurement_state, train_step
from vtfpar.model import VTFPAR, trainable_state_dict

CONVENTION = "1 multiply-add = 1 FLOP (fvcore)"


# ----------------------------------------------------------------------------------------- memory
def read_peak_rss() -> int | None:
    return read_kib("/proc/self/status", ("VmHWM",)).get("VmHWM")


def reset_peak_rss() -> bool:
    """Reset the peak RSS of this process (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_freed_memory() -> bool:
    """Hand back to the system what this process has freed but still holds resident, so that a phase's peak RSS
    does not carry what ran before it (earlier runs of a sweep, this run's training): Python's unreachable objects
    collected, then glibc's ``malloc_trim(0)``, which returns the free pages of every malloc arena (torch's CPU
    tensors come from malloc). False where there is no glibc (the peak then includes that residue; the memory
    record says so: ``freed_memory_released``)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None (musl, macOS; an allocator such as jemalloc keeps its own pages)."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def _nvml_process_bytes(device: torch.device) -> int | None:
    """This process's GPU memory as NVML sees it; None when NVML or the process is not visible."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            # NVML numbers all GPUs of the machine; CUDA only the visible ones (CUDA_VISIBLE_DEVICES, set by
            # Ray, SLURM, ...): torch's own mapping gives NVML's index of this process's device.
            index = device.index if device.index is not None else torch.cuda.current_device()
            handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda._get_nvml_device_index(index))
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                    return int(proc.usedGpuMemory)
            return None
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - NVML is optional: absent library, driver, or container pid namespace
        return None


def peak_memory(fn: Callable[[], Any], device: torch.device) -> dict:
    """Run ``fn`` once and report its peak memory (see module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return {
            "kind": "cuda",
            "max_allocated_bytes": int(torch.cuda.max_memory_allocated(device)),
            "max_reserved_bytes": int(torch.cuda.max_memory_reserved(device)),
            "nvml_process_bytes": _nvml_process_bytes(device),
        }
    released = release_freed_memory()
    reset = reset_peak_rss()
    before = read_peak_rss()
    fn()
    peak = read_peak_rss()
    return {"kind": "cpu_peak_rss" if reset else "cpu_lifetime_peak_rss", "peak_rss_bytes": peak,
            "rss_at_start_bytes": before, "freed_memory_released": released,
            "increase_bytes": (peak - before) if reset and peak is not None and before is not None else None}


def primary_bytes(mem: dict | None) -> float | None:
    """The one number a table shows: allocator peak on CUDA, peak RSS on CPU."""
    if not mem:
        return None
    return mem.get("max_allocated_bytes") if mem.get("kind") == "cuda" else mem.get("peak_rss_bytes")


# ------------------------------------------------------------------------------------------ flops
def _sdpa_flop(inputs, outputs) -> int:
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = 1
    for d in q[:-2]:
        batch *= d
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


@contextlib.contextmanager
def _eager(module: torch.nn.Module) -> Iterator[None]:
    """``module`` with every submodule compiled by ``nn.Module.compile`` (``train.compile``) run eagerly: fvcore
    counts through a ``torch.jit`` trace, which refuses code Dynamo has optimised. The count is of the same
    operations (compilation fuses kernels, it does not change what is computed)."""
    compiled = [(m, m._compiled_call_impl) for m in module.modules() if getattr(m, "_compiled_call_impl", None)]
    try:
        for m, _ in compiled:
            m._compiled_call_impl = None
        yield
    finally:
        for m, impl in compiled:
            m._compiled_call_impl = impl


def count_flops(module: torch.nn.Module, *inputs: torch.Tensor) -> dict:
    """fvcore multiply-adds of ``module(*inputs)`` with the attention handler; in eval mode (eagerly, also where
    ``train.compile`` compiled parts of it)."""
    from fvcore.nn import FlopCountAnalysis

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), _eager(module):
            module(*inputs)  # fill caches (text features) so only per-forward work is traced
            fca = FlopCountAnalysis(module, inputs)
            fca.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flop)
            fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            total = fca.total()
            by_module = {k: v for k, v in fca.by_module().items() if k and "." not in k}
            unsupported = dict(fca.unsupported_ops())
    finally:
        module.train(was_training)
    return {"total": int(total), "by_module": {k: int(v) for k, v in by_module.items()},
            "unsupported_ops": unsupported}


# ------------------------------------------------------------------------------------------- time
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _stats(times: list[float], warmup: int) -> dict:
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "iqr_s": q[2] - q[0], "iters": len(times), "warmup": warmup}


def time_it(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> dict:
    for _ in range(warmup):
        fn()
    return _stats([_timed(fn, device) for _ in range(iters)], warmup)


def time_paired(fn: Callable[[], Any], ref: Callable[[], Any], device: torch.device, warmup: int,
                iters: int) -> dict:
    """``time_it`` of ``fn`` with a reference ``ref`` timed next to each of its iterations.

    On a shared or throttling machine the speed drifts by more than the differences a ratio is meant to
    show, and two phases timed minutes apart see different machines. Here every iteration of ``fn`` has its
    own ``ref`` neighbour, in alternating order (ref fn, fn ref, ...) so that a steady drift falls on both
    sides (exactly for an even ``iters``), and ``over_ref`` is the median of the per-pair ratios ``fn / ref``.
    ``ref`` always gets one untimed call first: it may have caches to rebuild (``bench perf``'s floor
    comes back to the device for every phase) and the allocator state around it has changed.
    """
    for _ in range(warmup):
        fn()
    ref()
    times, ref_times = [], []
    for i in range(iters):
        pair = ((ref, ref_times), (fn, times)) if i % 2 == 0 else ((fn, times), (ref, ref_times))
        for f, out in pair:
            out.append(_timed(f, device))
    return {**_stats(times, warmup), "ref": _stats(ref_times, 1),
            "over_ref": statistics.median(t / r for t, r in zip(times, ref_times, strict=True))}


# ------------------------------------------------------------------------------------- operators
class _OperatorCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_operators(fn: Callable[[], Any]) -> int:
    """ATen operators dispatched by ``fn()`` (views and metadata ops included, backward included):
    on a GPU each is a kernel launch or at least host work, so fewer is faster at small batches."""
    with _OperatorCounter() as counter:
        fn()
    return counter.count


# ------------------------------------------------------------------------------------------- all
def random_clips(n: int, frames: int, size: int, num_attributes: int, device: torch.device,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of random clips [n,T,3,S,S] and random 0/1 labels [n,M] (cost does not depend on content)."""
    x = torch.randn(n, frames, 3, size, size, generator=gen).to(device)
    y = (torch.rand(n, num_attributes, generator=gen) > 0.5).float().to(device)
    return x, y


def measure_model(model: VTFPAR, loss_fn, device: torch.device, amp: str, frames: int, size: int,
                  train_batch: int, eval_batch: int, warmup: int = 2, iters: int = 5,
                  flops: bool = True, grad_clip: float = 0.0, weight_decay: float = 0.0) -> dict:
    """Memory, FLOPs, operators and timing of ``model`` on random clips of the run's shape.

    The training step is ``benchmark.step.train_step`` with the run's ``grad_clip`` and ``weight_decay``;
    inference runs in deployment form.
    """
    saved = trainable_state_dict(model)
    state = measurement_state(model, loss_fn, device, amp, grad_clip, weight_decay)
    gen = torch.Generator().manual_seed(0)
    m = len(saved["head.weight"])
    xb, yb = random_clips(train_batch, frames, size, m, device, gen)
    x1, _ = random_clips(1, frames, size, m, device, gen)
    xe, _ = random_clips(eval_batch, frames, size, m, device, gen)

    def train():
        train_step(state, xb, yb)

    def infer(x):
        return lambda: inference(model, x, state.autocast)

    out: dict[str, Any] = {}
    try:
        # Inference first: on CPU freed memory stays resident, so the smaller phase goes first.
        with model.deployed(compute_dtype(device, amp)):
            infer(xe)()
            mem_infer = peak_memory(infer(xe), device)
            t_one = time_it(infer(x1), device, warmup, iters)
            t_batch = time_it(infer(xe), device, warmup, iters)
            with _eager(model):  # what the method dispatches; compiled code would not show it (train.compile)
                infer(x1)()  # eager caches (the frozen tower's q/k/v concatenation) built untimed, as in eager runs
                ops_infer = count_operators(infer(x1))
        with model.deployed():  # FLOPs are counted without autocast, so on fp32 weights
            f_deployed = count_flops(model, x1) if flops else None
        # The forward pass of a training step, per clip of the training batch it runs on: what runs once per step
        # (prompt tuning's text encoder) is shared by the batch's clips, as it is when the run trains.
        f = count_flops(model, xb) if flops else None
        train()  # allocate optimiser state and caches before the peak is taken
        mem_train = peak_memory(train, device)
        t_train = time_it(train, device, warmup, iters)
        with _eager(model):
            ops_train = count_operators(train)
        out["measured_in"] = "deployment form"
        out["memory"] = {"train_step": mem_train, "inference": mem_infer, "train_batch": train_batch,
                         "eval_batch": eval_batch, "primary": "cuda max_memory_allocated" if device.type == "cuda"
                         else "CPU process peak RSS (includes weights)"}
        out["timing"] = {
            "train_step": {**t_train, "batch_size": train_batch,
                           "clips_per_s": train_batch / t_train["median_s"],
                           "frames_per_s": train_batch * frames / t_train["median_s"]},
            "inference_latency": {**t_one, "batch_size": 1, "ms_per_clip": 1000 * t_one["median_s"]},
            "inference_throughput": {**t_batch, "batch_size": eval_batch,
                                     "clips_per_s": eval_batch / t_batch["median_s"]},
        }
        out["operators"] = {"train_step": ops_train, "inference": ops_infer,
                            "counts": "ATen operators dispatched (train step: forward, backward, optimiser), "
                                      "eagerly also under train.compile"}
        if flops:
            out["flops"] = {"gflops_per_clip": f["total"] / train_batch / 1e9, "frames_per_clip": frames,
                            "counted_on_batch": train_batch,
                            "inference_gflops_per_clip": f_deployed["total"] / 1e9,
                            "convention": CONVENTION,
                            "by_module_gflops": {k: v / train_batch / 1e9 for k, v in f["by_module"].items()},
                            "unsupported_ops": f["unsupported_ops"]}
    finally:
        model.load_state_dict(saved, strict=False)
        state.optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out
