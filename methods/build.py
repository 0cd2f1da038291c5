"""Assemble the task model for a method: the same backbone, text features, fusion and head for all."""

from __future__ import annotations

from torch import nn

from methods.registry import BuildContext, get_method
from vtfpar.attributes import AttributeSet
from vtfpar.backbone import ClipVision, freeze
from vtfpar.fusion import FusionSpec
from vtfpar.model import VTFPAR
from vtfpar.text import CachedText, ClipText, tokenize


def build_model(
    clip: nn.Module,
    *,
    backbone: str,
    attributes: AttributeSet,
    method: str,
    method_cfg: object,
    frames: int,
    fusion: FusionSpec | None = None,
) -> VTFPAR:
    """Freeze ``clip`` entirely, let the method adapt it, and add fusion + head (always trained)."""
    spec = get_method(method)
    vision = ClipVision(clip.visual)
    freeze(clip)
    text = ClipText(clip)
    ctx = BuildContext(frames=frames, backbone=backbone, sentences=tuple(attributes.sentences), text=text)
    encoder = spec.build(vision, method_cfg, ctx)
    text_side = (spec.build_text(method_cfg, ctx) if spec.build_text
                 else CachedText(text, tokenize(backbone, list(ctx.sentences), text.context_length)))
    return VTFPAR(encoder, text_side, len(attributes), fusion)
