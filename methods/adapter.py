"""Bottleneck adapters in every block of the frozen image encoder.

``houlsby`` (Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML 2019):
serial adapters after the attention and after the MLP sub-layer, ``h + A(h)``, before the
residual addition. ``adaptformer`` (Chen et al., "AdaptFormer", NeurIPS 2022): one parallel
adapter beside the MLP on the same normalised input, ``MLP(x) + s * A(x)`` with s = 0.1.
An adapter is ``up(act(down(x)))`` with a zero-initialised ``up``, so training starts from CLIP.
Defaults: bottleneck 64 (both papers' ViT-B setting), variant adaptformer, GELU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from methods.registry import BuildContext, MethodSpec, Variant, register_method
from vtfpar.backbone import ClipVision
from vtfpar.encoders import ClipTokenEncoder
from vtfpar.settings import check_settings, setting


@dataclass
class AdapterConfig:
    variant: str = setting("adaptformer", choices=("houlsby", "adaptformer"))  # serial | parallel
    bottleneck: int = setting(64, ge=1)
    scale: float = setting(0.1, gt=0.0)  # adaptformer's s

    def __post_init__(self):
        check_settings(self, "", method="adapter")


class Bottleneck(nn.Module):
    def __init__(self, width: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


class SerialAttention(nn.Module):
    """Houlsby after attention: wraps the attention module (which returns ``(out, weights)``)."""

    def __init__(self, inner: nn.Module, width: int, bottleneck: int):
        super().__init__()
        self.inner = inner
        self.adapter_attn = Bottleneck(width, bottleneck)

    def forward(self, *args, **kwargs):
        out, weights = self.inner(*args, **kwargs)
        return out + self.adapter_attn(out), weights


class SerialMLP(nn.Module):
    def __init__(self, inner: nn.Module, width: int, bottleneck: int):
        super().__init__()
        self.inner = inner
        self.adapter_mlp = Bottleneck(width, bottleneck)

    def forward(self, x):
        h = self.inner(x)
        return h + self.adapter_mlp(h)


class ParallelMLP(nn.Module):
    def __init__(self, inner: nn.Module, width: int, bottleneck: int, scale: float):
        super().__init__()
        self.inner = inner
        self.adapter_mlp = Bottleneck(width, bottleneck)
        self.scale = scale

    def forward(self, x):
        return self.inner(x) + self.scale * self.adapter_mlp(x)


def build(vision: ClipVision, cfg: AdapterConfig, ctx: BuildContext) -> ClipTokenEncoder:
    d = vision.width
    for block in vision.blocks:
        if cfg.variant == "houlsby":
            block.attn = SerialAttention(block.attn, d, cfg.bottleneck)
            block.mlp = SerialMLP(block.mlp, d, cfg.bottleneck)
        else:
            block.mlp = ParallelMLP(block.mlp, d, cfg.bottleneck, cfg.scale)
    return ClipTokenEncoder(vision, grad_through_clip=True)


register_method(MethodSpec(
    name="adapter", config_cls=AdapterConfig, build=build, prefixes=("adapter_",),
    summary="bottleneck adapters per block (Houlsby serial / AdaptFormer parallel)",
    source="Houlsby 2019, Chen 2022", order=40, variants=(Variant("houlsby", {"variant": "houlsby"}),),
))
