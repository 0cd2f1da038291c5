"""Frozen baseline: CLIP's image and text encoders fixed; only the fusion Transformer and head train.

The floor every tuning method must beat: whatever the frozen CLIP tokens (averaged over frames)
carry. No method-specific hyper-parameters. CLIP runs without an autograd graph.
"""

from __future__ import annotations

from dataclasses import dataclass

from methods.registry import BuildContext, MethodSpec, register_method
from vtfpar.backbone import ClipVision
from vtfpar.encoders import ClipTokenEncoder


@dataclass
class FrozenConfig:
    pass


def build(vision: ClipVision, cfg: FrozenConfig, ctx: BuildContext) -> ClipTokenEncoder:
    return ClipTokenEncoder(vision, grad_through_clip=False)


register_method(MethodSpec(
    name="frozen", config_cls=FrozenConfig, build=build, prefixes=(),
    summary="fusion + head only, CLIP frozen (the floor)", source="", order=0,
))
