"""(IA)^3: Infused Adapter by Inhibiting and Amplifying Inner Activations (Liu, Tam, Muqeeth, Mohta, Huang,
Bansal, Raffel, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning",
NeurIPS 2022).

Three learned vectors per block of the frozen image encoder rescale its inner activations elementwise:
the attention keys and values and the MLP's intermediate activation (after the activation function,
before the second MLP linear):

    K = l_k ⊙ (W_k x + b_k),   V = l_v ⊙ (W_v x + b_v),   MLP(x) = W_2 (l_ff ⊙ gelu(W_1 x + b_1)) + b_2,

with l_k, l_v in R^d and l_ff in R^4d, all initialised to ones, so training starts from CLIP. Per block of
width d: k (d) + v (d) + ff (4d) = 6d; 55,296 for ViT-B/16. Training scales the activations (the paper's
form: the frozen projections run unchanged, and the vectors' gradients cost no weight-sized product).

**Deployment form**: every vector folds into the frozen weight it follows or precedes. ``l_k ⊙ (W_k x + b_k)
= (diag(l_k) W_k) x + l_k ⊙ b_k`` scales the rows of the key projection and its bias (the same for the
values); ``W_2 (l_ff ⊙ h) = (W_2 diag(l_ff)) h`` scales the columns of the second MLP linear (its bias
unchanged). The folded values are written into the frozen modules themselves (host copies restore them
bit for bit afterwards) and those modules are put back in place of the (IA)^3 layers, so inference
dispatches exactly the frozen model's operators and holds one copy of its weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from methods.registry import BuildContext, MethodSpec, Variant, register_method
from vtfpar.backbone import ClipVision
from vtfpar.encoders import FoldingTokenEncoder
from vtfpar.errors import UserError
from vtfpar.model import InPlaceFold
from vtfpar.settings import check_settings

TARGETS = ("k", "v", "ff")


@dataclass
class IA3Config:
    targets: list[str] = field(default_factory=lambda: list(TARGETS))  # of: k v (attention) ff (MLP)

    def __post_init__(self):
        check_settings(self, "", method="ia3")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise UserError(f"ia3: unknown target(s) {unknown or '(none given)'}: choose from {', '.join(TARGETS)}")
        # A set: [v, k] and [k, k, v] are the run [k, v] is (one run id, one row of the report).
        self.targets = [t for t in TARGETS if t in self.targets]


class ScaledOutput(nn.Module):
    """A frozen ``nn.Linear`` whose output is rescaled per channel: ``l ⊙ (W x + b)``."""

    def __init__(self, inner: nn.Linear):
        super().__init__()
        self.inner = inner
        self.ia3_scale = nn.Parameter(torch.ones(inner.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        return (y * self.ia3_scale).to(y.dtype)  # product in the scale's fp32: see ``build``

    def fold(self, fold: InPlaceFold) -> None:
        """``diag(l) W`` and ``l ⊙ b`` into the frozen layer: its rows scaled."""
        w, b = self.inner.weight, self.inner.bias
        scale = self.ia3_scale.to(w.dtype)
        fold.write(w, w * scale[:, None])
        if b is not None:
            fold.write(b, b * scale)


class ScaledInput(nn.Module):
    """A frozen ``nn.Linear`` that reads its input rescaled per channel: ``W (l ⊙ h) + b``."""

    def __init__(self, inner: nn.Linear):
        super().__init__()
        self.inner = inner
        self.ia3_scale = nn.Parameter(torch.ones(inner.in_features))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.inner((h * self.ia3_scale).to(h.dtype))  # product in the scale's fp32: see ``build``

    def fold(self, fold: InPlaceFold) -> None:
        """``W diag(l)`` into the frozen layer: its columns scaled, its bias as it is."""
        w = self.inner.weight
        fold.write(w, w * self.ia3_scale.to(w.dtype)[None, :])


SCALED = (ScaledOutput, ScaledInput)


class IA3TokenEncoder(FoldingTokenEncoder):
    """CLIP tokens through the (IA)^3-adapted tower; deployment form folds every vector into its frozen layer."""

    def fold(self, into: InPlaceFold) -> None:
        for layer in [m for m in self.clip.modules() if isinstance(m, SCALED)]:
            layer.fold(into)
        into.replace_children(self.clip, SCALED, lambda layer: layer.inner)


def build(vision: ClipVision, cfg: IA3Config, ctx: BuildContext) -> IA3TokenEncoder:
    """Under bf16 autocast the activations are bf16, whose spacing near 1 is 2^-7: a scale cast to bf16 would round
    1 + 2e-3 (a few steps of Adam at 1e-3) back to exactly 1 and the forward would not see it move, so each product
    is taken with the fp32 scale and rounded once, to the activation's dtype."""
    for block in vision.blocks:
        attn = block.attn  # vtfpar.backbone.SplitAttention: q/k/v/out are plain nn.Linear layers
        if "k" in cfg.targets:
            attn.k_proj = ScaledOutput(attn.k_proj)
        if "v" in cfg.targets:
            attn.v_proj = ScaledOutput(attn.v_proj)
        if "ff" in cfg.targets:  # open_clip's MLP: c_fc -> gelu -> c_proj; l_ff scales c_proj's input
            block.mlp.c_proj = ScaledInput(block.mlp.c_proj)
    return IA3TokenEncoder(vision)


register_method(MethodSpec(
    name="ia3", config_cls=IA3Config, build=build, prefixes=("ia3_",),
    summary="learned rescaling of attention keys / values and the MLP's inner activation (merged when deployed)",
    source="Liu et al. 2022", order=27, variants=(Variant("attn", {"targets": ["k", "v"]}),),
))
