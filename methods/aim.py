"""AIM (Yang, Zhu, Xie, Chen, Li, "AIM: Adapting Image Models for Efficient Video Action
Recognition", ICLR 2023).

Every block of the frozen image encoder gets three adapters and a temporal pass of its own frozen
attention. With ``LN_1``, ``Attn``, ``LN_2``, ``MLP`` the block's frozen modules and ``A(x) =
W_up GELU(W_down x)`` an adapter of bottleneck ``ratio * d`` (the paper's block, as its code runs it):

    z_T = x + A_T(Attn_T(LN_1(x)))            temporal adaptation: attention along the frame axis
    z_S = z_T + A_S'(Attn(LN_1(z_T)))         spatial adaptation, A_S'(a) = a + A_S(a)
    z   = z_S + MLP(LN_2(z_S)) + s A_J(LN_2(z_S))   joint adaptation beside the MLP

``Attn_T`` is the block's own frozen attention (the same weights) applied to each token position's
sequence of T frames, class token included. A learned temporal position embedding (zero at the
start) is added to every token of frame t before ``ln_pre``. Every ``W_up`` starts at zero, so
training starts from CLIP exactly (the temporal branch adds zero). Defaults from the paper's
Kinetics setting: ratio 0.25, s = 0.5. Trainable for ViT-B/16 with T frames: 36 adapters of
``2 * 768 * 192 + 192 + 768`` plus ``768 T``: 10,656,000 at T = 6 (paper: 11 M with its head).
The paper's code also trains CLIP's ``ln_post``; here it stays frozen like every other method's,
since the fusion's own input layers sit after it. Nothing folds for deployment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from methods.adapter import Bottleneck
from methods.registry import BuildContext, MethodSpec, register_method
from vtfpar.backbone import ClipVision
from vtfpar.encoders import VideoTokenEncoder
from vtfpar.settings import check_settings, setting


@dataclass
class AIMConfig:
    ratio: float = setting(0.25, gt=0.0)  # adapter bottleneck = ratio * width (paper: 0.25)
    scale: float = setting(0.5, gt=0.0)  # s of the joint adapter (paper: 0.5 on Kinetics)

    def __post_init__(self):
        check_settings(self, "", method="aim")


def adapter(width: int, bottleneck: int) -> Bottleneck:
    """``W_up GELU(W_down x)`` (the adapters' bottleneck: zero ``W_up``) with AIM's ``W_down`` ~ N(0, 0.02)
    truncated and a zero bias."""
    module = Bottleneck(width, bottleneck)
    nn.init.trunc_normal_(module.down.weight, std=0.02)
    nn.init.zeros_(module.down.bias)
    return module


class AIMBlock(nn.Module):
    """An open_clip residual block adapted by AIM; the block's frozen modules keep their names."""

    def __init__(self, block: nn.Module, width: int, bottleneck: int, scale: float):
        super().__init__()
        for name in ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2"):
            setattr(self, name, getattr(block, name))
        self.aim_temporal = adapter(width, bottleneck)
        self.aim_spatial = adapter(width, bottleneck)
        self.aim_joint = adapter(width, bottleneck)
        self.scale = scale
        self.frames = 1

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        n, length, d = x.shape
        t = self.frames
        # temporal: [B*T, L, D] -> [B*L, T, D], attention over the T frames of each token position
        xt = x.view(n // t, t, length, d).transpose(1, 2).reshape(-1, t, d)
        xt = self.aim_temporal(self.attn(self.ln_1(xt))[0])
        x = x + xt.view(n // t, length, t, d).transpose(1, 2).reshape(n, length, d)
        a = self.attn(self.ln_1(x), attn_mask=attn_mask)[0]
        x = x + self.ls_1(a + self.aim_spatial(a))
        h = self.ln_2(x)
        return x + self.ls_2(self.mlp(h)) + self.scale * self.aim_joint(h)


class TemporalEmbedding(nn.Module):
    """``ln_pre`` of the tower, given the temporal position embedding of each frame first."""

    def __init__(self, norm: nn.Module, frames: int, width: int):
        super().__init__()
        self.norm = norm
        self.aim_temporal_embedding = nn.Parameter(torch.zeros(frames, 1, width))
        self.frames = frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        x = (x.view(n // self.frames, self.frames, *x.shape[1:]) + self.aim_temporal_embedding.to(x.dtype)).view_as(x)
        return self.norm(x)


class AIMTokenEncoder(VideoTokenEncoder):
    """``VideoTokenEncoder`` for clips of the length the temporal embedding was built for."""

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        built = self.clip.visual.ln_pre.frames
        if frames.shape[1] != built:
            raise ValueError(f"aim: the model was built for {built} frames, got clips of {frames.shape[1]}")
        return super().forward(frames)


def build(vision: ClipVision, cfg: AIMConfig, ctx: BuildContext) -> AIMTokenEncoder:
    vision.requires_grad_(False)
    bottleneck = max(1, round(cfg.ratio * vision.width))
    blocks = vision.blocks
    for i, block in enumerate(blocks):
        blocks[i] = AIMBlock(block, vision.width, bottleneck, cfg.scale)
    vision.visual.ln_pre = TemporalEmbedding(vision.visual.ln_pre, ctx.frames, vision.width)
    return AIMTokenEncoder(vision, grad_through_clip=True)


register_method(MethodSpec(
    name="aim", config_cls=AIMConfig, build=build, prefixes=("aim_",),
    summary="spatial, temporal (frozen attention across frames) and joint adapters per block",
    source="Yang et al. 2023", order=70,
))
