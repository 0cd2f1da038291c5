"""BitFit (Ben Zaken, Ravfogel, Goldberg, "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models", ACL 2022).

Only the bias terms of the image encoder train: every linear layer's ``b`` in ``W x + b`` (q, k, v
and output projections of attention, both MLP layers) and every LayerNorm's shift ``beta`` in
``gamma * (x - mu) / sigma + beta`` (``ln_pre``, ``ln_1``, ``ln_2``, ``ln_post``). CLIP's patch
embedding has no bias, and its contrastive projection ``proj`` is not on the token path, so neither
trains. Per block of width d: q, k, v, out (4d) + MLP (4d + d) + two LayerNorms (2d) = 11d, plus
``ln_pre`` and ``ln_post`` (2d): 102,912 for ViT-B/16. The key bias is kept, as in the paper
("all bias terms"), although softmax is invariant to it, so it only ever sees a rounding-level
gradient. Nothing to fold for deployment: the model is the frozen one with other biases.
"""

from __future__ import annotations

from dataclasses import dataclass

from methods.registry import BuildContext, MethodSpec, register_method
from vtfpar.backbone import ClipVision
from vtfpar.encoders import ClipTokenEncoder


@dataclass
class BitFitConfig:
    pass


def build(vision: ClipVision, cfg: BitFitConfig, ctx: BuildContext) -> ClipTokenEncoder:
    for name, p in vision.named_parameters():
        p.requires_grad_(name.endswith(".bias"))
    return ClipTokenEncoder(vision, grad_through_clip=True)


register_method(MethodSpec(
    name="bitfit", config_cls=BitFitConfig, build=build, prefixes=(".bias",),
    summary="the image encoder's bias terms only", source="Ben Zaken et al. 2022", order=5,
))
