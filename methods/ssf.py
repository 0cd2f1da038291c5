"""SSF: Scaling and Shifting your Features (Lian, Zhou, Feng, Wang, "Scaling & Shifting Your
Features: A New Baseline for Efficient Model Tuning", NeurIPS 2022).

After every operation of the frozen image encoder that produces features (the patch embedding,
every linear layer: q, k, v, out, MLP fc1 / fc2, and every LayerNorm: ``ln_pre``, ``ln_1``,
``ln_2``, ``ln_post``), SSF applies a learned per-channel affine map (the paper's SSF operation):

    y = gamma ⊙ x + beta,      gamma, beta in R^C,

with gamma ~ N(1, 0.02) and beta ~ N(0, 0.02) as in the paper's code. Per block of width d:
ln_1 (2d) + q, k, v (6d) + out (2d) + ln_2 (2d) + fc1 (8d) + fc2 (2d) = 22d; plus the patch
embedding, ``ln_pre`` and ``ln_post`` (6d): 207,360 for ViT-B/16. The key projection's shift is kept, as
in the paper (every operation), although softmax is invariant to it, so it only ever sees a rounding-level
gradient (as BitFit's key bias does).

**Re-parameterised everywhere** (the paper's re-parameterisation): since the preceding operation is linear in its
parameters, ``gamma ⊙ (W x + b) + beta = (gamma ⊙ W) x + (gamma ⊙ b + beta)``. Training computes
the folded ``W`` and ``b`` on the fly (a d x d elementwise product per layer instead of scaling
every token's activations, and no extra activation kept for backward); deployment form writes
them once into the frozen modules themselves (host copies restore them bit for bit afterwards),
puts those modules back in place of the SSF layers and moves the patch embedding's shift into the
positional embedding, so inference dispatches exactly the frozen model's operators and holds one
copy of its weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from methods.registry import BuildContext, MethodSpec, register_method
from vtfpar.backbone import ClipVision
from vtfpar.encoders import FoldingTokenEncoder
from vtfpar.model import InPlaceFold, replace_children
from vtfpar.settings import check_settings, setting


@dataclass
class SSFConfig:
    init_std: float = setting(0.02, ge=0.0)  # gamma ~ N(1, std), beta ~ N(0, std) (paper's code: 0.02)

    def __post_init__(self):
        check_settings(self, "", method="ssf")


class ScaleShift(nn.Module):
    """A frozen ``nn.Linear`` / ``nn.LayerNorm`` / ``nn.Conv2d`` followed by ``gamma ⊙ y + beta`` over its
    output channels, computed as the same operation with folded parameters."""

    def __init__(self, inner: nn.Module, init_std: float):
        super().__init__()
        channels = {nn.Linear: "out_features", nn.Conv2d: "out_channels"}
        width = next((getattr(inner, a) for t, a in channels.items() if isinstance(inner, t)), None)
        if width is None and isinstance(inner, nn.LayerNorm):
            width = inner.normalized_shape[-1]
        if width is None:
            raise TypeError(f"SSF cannot follow a {type(inner).__name__}")
        self.inner = inner
        self.ssf_scale = nn.Parameter(torch.empty(width).normal_(1.0, init_std))
        self.ssf_shift = nn.Parameter(torch.empty(width).normal_(0.0, init_std))

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gamma ⊙ W, gamma ⊙ b + beta)`` with W's output channels on its first dimension."""
        w, b = self.inner.weight, self.inner.bias
        scale = self.ssf_scale.to(w.dtype)
        weight = w * scale.view(-1, *([1] * (w.dim() - 1)))
        bias = self.ssf_shift if b is None else torch.addcmul(self.ssf_shift, scale, b)
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.folded()
        inner = self.inner
        if isinstance(inner, nn.Linear):
            return F.linear(x, weight, bias)
        if isinstance(inner, nn.Conv2d):
            return inner._conv_forward(x, weight, bias)
        return F.layer_norm(x, inner.normalized_shape, weight, bias, inner.eps).to(x.dtype)


class SSFTokenEncoder(FoldingTokenEncoder):
    """CLIP tokens through the SSF-adapted tower; deployment form folds every scale and shift."""

    def fold(self, into: InPlaceFold) -> None:
        visual = self.clip.visual
        folded = set()
        for layer in [m for m in self.clip.modules() if isinstance(m, ScaleShift)]:
            weight, bias = layer.folded()
            inner = layer.inner
            if inner.bias is None and layer is not visual.conv1:
                continue  # nowhere to put the shift: this layer stays in training form
            into.write(inner.weight, weight)
            if inner.bias is not None:
                into.write(inner.bias, bias)
            else:  # the patch embedding has no bias: its shift goes into the patch positions
                pos = visual.positional_embedding
                into.write(pos, torch.cat([pos[:1], pos[1:] + bias.to(pos.dtype)]))
            folded.add(layer)
        into.replace_children(self.clip, ScaleShift, lambda layer: layer.inner if layer in folded else layer)


def build(vision: ClipVision, cfg: SSFConfig, ctx: BuildContext) -> SSFTokenEncoder:
    vision.requires_grad_(False)
    replace_children(vision.visual, (nn.Linear, nn.LayerNorm, nn.Conv2d), lambda layer: ScaleShift(layer, cfg.init_std))
    return SSFTokenEncoder(vision)


register_method(MethodSpec(
    name="ssf", config_cls=SSFConfig, build=build, prefixes=("ssf_",),
    summary="per-channel scale and shift after every image-encoder layer (merged when deployed)",
    source="Lian et al. 2022", order=25,
))
