"""Shared helper for the per-method parameter-count tests."""

from __future__ import annotations

from vtfpar.model import SHARED_PARTS, count_parameters

SHARED = tuple(f"{part}." for part in SHARED_PARTS)


def method_params(model) -> int:
    """Trainable parameters outside fusion and head: the method's own (what result.json records as
    ``params.method``)."""
    return count_parameters(model)["method"]


def block_params(w: int) -> int:
    """A pre-norm Transformer block of width w with a 4w MLP: qkv, proj, fc1, fc2 and two LayerNorms."""
    return 12 * w * w + 13 * w
