"""Shared helper for the per-method parameter-count tests."""

from __future__ import annotations

SHARED = ("fusion.", "head.")


def method_params(model) -> int:
    """Trainable parameters outside fusion and head: the method's own."""
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not n.startswith(SHARED))


def block_params(w: int) -> int:
    """A pre-norm Transformer block of width w with a 4w MLP: qkv, proj, fc1, fc2 and two LayerNorms."""
    return 12 * w * w + 13 * w
