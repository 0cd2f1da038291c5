"""The sequence of ATen operators a function dispatches (for "costs exactly the same" tests)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class _Trace(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def operator_trace(fn) -> list[str]:
    """The operators ``fn()`` dispatches under ``inference_mode``."""
    with torch.inference_mode():
        return dispatched(fn)


def dispatched(fn) -> list[str]:
    """The operators ``fn()`` dispatches with autograd on: its backward's too (run on the calling thread on a CPU)."""
    with _Trace() as trace:
        fn()
    return trace.ops
