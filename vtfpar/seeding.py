"""Draws from a seed of their own that move no other draw of the process."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def cpu_draws(seed: int) -> Iterator[None]:
    """Inside, torch's CPU generator draws the stream of ``seed``; on exit it is where it was. The CUDA generators
    are not touched: ``torch.manual_seed`` would reseed them too, and a GPU run's later draws (drop path) would then
    depend on what was drawn here (a clip loaded in the training process, a module built)."""
    with torch.random.fork_rng(devices=()):
        torch.default_generator.manual_seed(seed)
        yield
