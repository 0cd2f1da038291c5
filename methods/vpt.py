"""Visual Prompt Tuning (Jia et al., "Visual Prompt Tuning", ECCV 2022).

Learnable prompt tokens are inserted after the class token of the frozen image encoder.
``shallow``: one set, at the input of the first block, carried through the network.
``deep``: a fresh set replaces the prompt positions before every block.
Defaults: 10 tokens, deep, prompt dropout 0, Xavier-uniform init over the patch dimension
(the init of the VPT code). Gradients flow through the frozen CLIP (activations are kept).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from methods.registry import BuildContext, MethodSpec, Variant, register_method
from vtfpar.backbone import ClipVision
from vtfpar.encoders import ClipTokenEncoder
from vtfpar.settings import check_settings, setting


@dataclass
class VPTConfig:
    tokens: int = setting(10, ge=1)  # prompt tokens per layer
    variant: str = setting("deep", choices=("shallow", "deep"))
    dropout: float = setting(0.0, ge=0.0, lt=1.0)

    def __post_init__(self):
        check_settings(self, "", method="vpt")


class VisualPrompts(nn.Module):
    """The ``before_block`` hook of ``ClipVision`` that inserts / replaces prompt tokens."""

    def __init__(self, layers: int, tokens: int, width: int, patch_area: int, deep: bool, dropout: float):
        super().__init__()
        bound = math.sqrt(6.0 / float(3 * patch_area + width))
        self.vpt_prompts = nn.Parameter(torch.empty(layers if deep else 1, tokens, width).uniform_(-bound, bound))
        self.tokens, self.deep = tokens, deep
        self.dropout = nn.Dropout(dropout)

    def forward(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if i > 0 and not self.deep:
            return x
        prompts = self.dropout(self.vpt_prompts[i].to(x.dtype)).unsqueeze(0).expand(x.shape[0], -1, -1)
        rest = x[:, 1:] if i == 0 else x[:, 1 + self.tokens:]
        return torch.cat([x[:, :1], prompts, rest], dim=1)


def visual_prompts(vision: ClipVision, tokens: int, deep: bool, dropout: float) -> VisualPrompts:
    return VisualPrompts(vision.layers, tokens, vision.width, vision.patch_size[0] * vision.patch_size[1], deep,
                         dropout)


def build(vision: ClipVision, cfg: VPTConfig, ctx: BuildContext) -> ClipTokenEncoder:
    return ClipTokenEncoder(vision, grad_through_clip=True,
                            before_block=visual_prompts(vision, cfg.tokens, cfg.variant == "deep", cfg.dropout))


register_method(MethodSpec(
    name="vpt", config_cls=VPTConfig, build=build, prefixes=("vpt_",),
    summary="learnable prompt tokens in the image encoder (shallow / deep)", source="Jia et al. 2022", order=30,
    variants=(Variant("shallow", {"variant": "shallow"}),),
))
