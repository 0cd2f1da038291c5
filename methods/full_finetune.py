"""Full fine-tuning: every parameter of CLIP's image encoder trains, with fusion and head.

The setting of the conference version, VTF-PAR (Zhu et al., CVPR-W NFVLR 2023): CLIP tokens of
every frame, averaged over time, fused with the (frozen, cached) attribute text features. The
text encoder stays frozen so that all methods share the same text features. No method-specific
hyper-parameters. CLIP's contrastive projection ``proj`` is not on the token path and stays
frozen, so the count holds only parameters that receive a gradient. The attention layers' key biases are
among them, as in any fine-tuning, although softmax is invariant to them, so they only ever see a
rounding-level gradient (as BitFit's do).
"""

from __future__ import annotations

from dataclasses import dataclass

from methods.registry import BuildContext, MethodSpec, register_method
from vtfpar.backbone import ClipVision
from vtfpar.encoders import ClipTokenEncoder


@dataclass
class FullFinetuneConfig:
    pass


def build(vision: ClipVision, cfg: FullFinetuneConfig, ctx: BuildContext) -> ClipTokenEncoder:
    # Every parameter the token path uses; CLIP's contrastive projection ``proj`` is not used.
    for name, p in vision.named_parameters():
        p.requires_grad_(name != "visual.proj")
    return ClipTokenEncoder(vision, grad_through_clip=True)


register_method(MethodSpec(
    name="full_finetune", config_cls=FullFinetuneConfig, build=build, prefixes=("encoder.clip.visual.",),
    summary="all of CLIP's image encoder trains (VTF-PAR setting)", source="VTF-PAR (CVPR-W 2023)", order=10,
))
