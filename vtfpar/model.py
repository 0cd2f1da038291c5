"""VTFPAR: a video encoder + text features + fusion Transformer + attribute head.

The model is the same for every tuning method; only ``encoder`` (and, for prompt tuning,
``text``) differ. ``forward`` returns logits; ``predict`` applies the sigmoid of eq. 5.
"""

from __future__ import annotations

import torch
from torch import nn

from vtfpar.fusion import AttributeHead, VideoTextFusion


class VTFPAR(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        text: nn.Module,
        num_attributes: int,
        width: int = 240,
        heads: int = 6,
        depth: int = 1,
        drop_path: float = 0.1,
    ):
        super().__init__()
        self.encoder = encoder
        self.text = text
        self.fusion = VideoTextFusion(text.out_dim, encoder.out_dim, width, heads, depth, drop_path)
        self.head = AttributeHead(num_attributes, width)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B,T,3,H,W] -> attribute logits [B,M]."""
        return self.head(self.fusion(self.text(), self.encoder(frames)))

    @torch.no_grad()
    def predict(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(frames).float())


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The part of the state that is not the frozen backbone: trainable parameters and all buffers.

    Frozen parameters are left out; they come back from the backbone reference in the run config.
    """
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in frozen}


def count_parameters(model: nn.Module) -> dict[str, int]:
    params = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return {"trainable": trainable, "total": total, "trainable_pct": round(100.0 * trainable / max(total, 1), 4)}
