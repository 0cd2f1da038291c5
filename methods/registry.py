"""The one registry of tuning methods.

A method is a name, a config dataclass (defaults from the method's paper; ``__post_init__``
validates and raises ``UserError``), the prefixes its trainable parameters carry, and
``build(vision, cfg, ctx) -> VideoEncoder``; optionally ``build_text`` for methods that tune
the text side. Registering a name twice, or asking for an unknown one, raises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from vtfpar.backbone import ClipVision
from vtfpar.errors import UserError
from vtfpar.text import ClipText


@dataclass(frozen=True)
class BuildContext:
    """What a method may need beyond the vision tower: the frame count and the text side."""

    frames: int
    backbone: str
    sentences: tuple[str, ...]
    text: ClipText


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type
    build: Callable[[ClipVision, object, BuildContext], nn.Module]
    prefixes: tuple[str, ...]  # substrings marking the method's own trainable parameters
    summary: str
    build_text: Callable[[object, BuildContext], nn.Module] | None = field(default=None)


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"method '{spec.name}' is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    if name not in _REGISTRY:
        raise UserError(f"unknown method '{name}': choose one of {', '.join(sorted(_REGISTRY))} (bench list)")
    return _REGISTRY[name]


def list_methods() -> list[str]:
    return sorted(_REGISTRY)
