"""Video-text fusion Transformer and the attribute prediction head (Sec. III-B, eq. 5).

Text features (one per attribute) and visual tokens are projected to the fusion width,
concatenated with the **text tokens first** (``[B, M + L, width]``, as in the paper's code),
and fused by Transformer block(s) with drop path, then LayerNorm. The head reads each
attribute's **own text token**: one dense layer per attribute, then BatchNorm over the M
attributes. The sigmoid of eq. 5 is applied by the loss (``BCE-with-logits``, numerically
stable) and by ``VTFPAR.predict``.

**One start for every method.** Fusion and head are the part of the model every method shares, so a
comparison of methods under one seed should start them from the same weights. Given a ``seed`` (the run's),
each part draws its initial weights from a stream of its own derived from that seed alone (``drawn_from``):
not from the global generator after the method has drawn its own modules, which would give each method other
fusion weights under the same seed, and not from one stream for all parts, in which the video projection
(whose input width is the method's) would shift the draws of every part after it.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from vtfpar.seeding import cpu_draws
from vtfpar.settings import MAX_BLOCKS, SettingError, check_settings, setting

SHARED_START = 2
"""How a model's fusion and head drew their initial weights, recorded by each run (``fusion_start`` in its
result.json and checkpoint): 1, from the global generator after the method's own modules, so that each method of a
seed started from other weights (runs that record none were made so); 2, each part from a stream of its own seeded
from the run's seed alone (``drawn_from``), the same start for every method of a seed."""


@dataclass
class FusionSpec:
    """Shape of the fusion Transformer (config keys ``model.fusion_*`` and ``model.drop_path``)."""

    fusion_width: int = setting(240, ge=1)  # fusion Transformer width (paper: 240, = side width)
    fusion_heads: int = setting(6, ge=1)
    fusion_depth: int = setting(1, ge=1, le=MAX_BLOCKS)  # fusion Transformer blocks (paper: 1)
    drop_path: float = setting(0.1, ge=0.0, lt=1.0)  # fusion block drop path (paper code: 0.1)

    def __post_init__(self):
        check_settings(self, "model")
        if self.fusion_width % self.fusion_heads:
            raise SettingError("model.fusion_heads", f"model.fusion_width ({self.fusion_width}) must be a multiple "
                               f"of model.fusion_heads ({self.fusion_heads})")


def part_seed(seed: int, part: str) -> int:
    """The seed of one part's initial draws (``part``: its name in the model), from the run's ``seed`` alone."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{part}".encode()).digest()[:8], "little") >> 1


@contextlib.contextmanager
def drawn_from(seed: int | None, part: str) -> Iterator[None]:
    """Inside, the CPU generator draws ``part``'s own stream of ``seed`` (``part_seed``, ``cpu_draws``: every other
    generator as it was). ``seed`` None: the global generator, as it stands."""
    if seed is None:
        yield
        return
    with cpu_draws(part_seed(seed, part)):
        yield


class VideoTextFusion(nn.Module):
    def __init__(
        self, text_dim: int, visual_dim: int, width: int = 240, heads: int = 6, depth: int = 1,
        drop_path: float = 0.1, seed: int | None = None,
    ):
        """``seed``: the initial weights' (module docstring); None draws them from the global generator."""
        from timm.models.vision_transformer import Block  # here: timm's import (torchvision's with it) takes seconds

        super().__init__()
        with drawn_from(seed, "fusion.text_proj"):
            self.text_proj = nn.Linear(text_dim, width)
        # Side tuning already produces width-240 tokens; CLIP-token methods need a projection.
        with drawn_from(seed, "fusion.visual_proj"):
            self.visual_proj = nn.Identity() if visual_dim == width else nn.Linear(visual_dim, width)
        with drawn_from(seed, "fusion.blocks"):
            self.blocks = nn.Sequential(
                *(Block(width, heads, mlp_ratio=4.0, qkv_bias=True, drop_path=drop_path) for _ in range(depth))
            )
        # No shift: the head reads each fused text token through a dense layer and a BatchNorm over the batch, so
        # a shift b of this norm adds the constant w_j . b to attribute j's logit, which the BatchNorm subtracts
        # again (exactly in training; through its running mean at evaluation): its gradient is zero, and Adam
        # would turn the rounding noise of that zero into steps of the learning rate's size.
        self.norm = nn.LayerNorm(width, bias=False)

    def forward(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """text [M,Dt] or [B,M,Dt], visual [B,L,Dv] -> fused text tokens [B,M,width]."""
        b = visual.shape[0]
        if text.dim() == 2:
            text = text.unsqueeze(0).expand(b, -1, -1)
        t = self.text_proj(text.to(visual.dtype))
        x = torch.cat([t, self.visual_proj(visual)], dim=1)
        x = self.norm(self.blocks(x))
        return x[:, : t.shape[1]]


DROPPED_SHIFTS = {"fusion.norm.bias": "fusion.norm.weight", "head.bias": "head.weight"}
"""Parameters that models of earlier versions had and whose gradient is zero (``VideoTextFusion``'s last norm,
``AttributeHead``): each name, relative to the model, and the parameter it followed in the model's order."""
SHIFTS_DROPPED_IN = "73026ea"  # the first commit whose models lack them


def fold_dropped_shifts(state: dict[str, torch.Tensor], prefix: str = "") -> list[str]:
    """Fold ``DROPPED_SHIFTS`` found in a model's ``state`` (keys under ``prefix``) into the head's BatchNorm running
    mean, in place, and return the names folded. Attribute j's logit before the BatchNorm had the constant
    ``w_j . b_norm + b_j`` added, which the running mean carries; subtracting it gives the outputs of the model that
    saved ``state``, in training (the BatchNorm removes constants) and at evaluation. A state that lacks what the
    fold needs (the running mean; the head's weight, for the norm's shift) keeps them, for the load to refuse as
    unexpected rather than change the outputs without a word."""
    norm_bias, head_bias = state.get(prefix + "fusion.norm.bias"), state.get(prefix + "head.bias")
    mean, weight = state.get(prefix + "head.bn.running_mean"), state.get(prefix + "head.weight")
    if (norm_bias is None and head_bias is None) or mean is None or (norm_bias is not None and weight is None):
        return []
    shift = torch.zeros_like(mean)
    if head_bias is not None:
        shift = shift + head_bias.to(mean)
    if norm_bias is not None:
        shift = shift + weight.to(mean) @ norm_bias.to(mean)
    state[prefix + "head.bn.running_mean"] = mean - shift
    return [name for name in DROPPED_SHIFTS if state.pop(prefix + name, None) is not None]


class AttributeHead(nn.Module):
    """Eq. 5 without the sigmoid: ``BN(Dense_j(h_j))`` for every attribute j on its text token h_j.

    The dense layers have no bias: the BatchNorm subtracts any per-attribute constant before its own shift
    (``bn.bias``), so such a bias would get a gradient of exactly zero (rounding noise, which Adam scales to
    steps of the learning rate's size and which differs with the number of processes). The paper's code has one;
    a checkpoint that holds it loads with it folded into the BatchNorm's running mean (``VTFPAR``).
    """

    def __init__(self, num_attributes: int, width: int, seed: int | None = None):
        """``seed``: the initial weights' (module docstring); None draws them from the global generator."""
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_attributes, width))
        with drawn_from(seed, "head"):
            nn.init.trunc_normal_(self.weight, std=0.02)
        self.bn = nn.BatchNorm1d(num_attributes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.bn((tokens * self.weight).sum(-1))
