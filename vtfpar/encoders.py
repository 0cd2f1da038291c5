"""Video encoders: frames ``[B,T,3,H,W]`` -> visual tokens ``[B,L,D]`` for the fusion Transformer.

A tuning method decides only how the CLIP image side is adapted; it returns one of these.

* ``ClipTokenEncoder``: every frame through the (possibly adapted) CLIP image tower, final
  tokens after ``ln_post``, averaged over frames (temporal mean pooling, as in VTF-PAR). Used by
  full fine-tuning, frozen, LoRA, VPT, adapters, prompt tuning, BitFit and (with their own subclasses) SSF and (IA)^3.
  With ``grad_through_clip`` off (frozen CLIP and nothing inside it to train) the tower runs under ``no_grad``.
* ``VideoTokenEncoder``: the same, for towers whose blocks mix the frames of a clip (ST-Adapter,
  AIM): each block is told the clip length (``block.frames``) before the tower runs.
* ``SideTuningEncoder``: VTFPAR++ (eq. 2-4). CLIP runs under ``no_grad`` and only feeds its layer
  taps to the spatial and temporal side networks, whose pooled outputs are added; CLIP's blocks
  after the last tap never run.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from vtfpar.backbone import BlockHook, ClipVision
from vtfpar.model import InPlaceFold
from vtfpar.side import SpatialSideNetwork, TemporalSideNetwork, normalize_taps


class ClipTokenEncoder(nn.Module):
    def __init__(self, clip: ClipVision, grad_through_clip: bool, before_block: BlockHook | None = None):
        super().__init__()
        self.clip = clip
        self.grad_through_clip = grad_through_clip
        self.before_block = before_block
        self.out_dim = clip.width

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, t = frames.shape[:2]
        ctx = contextlib.nullcontext() if self.grad_through_clip else torch.no_grad()
        with ctx:
            tokens, _ = self.clip(frames.flatten(0, 1), before_block=self.before_block)
        n = self.clip.num_tokens
        if tokens.shape[1] != n:  # prompt tokens inserted after the class token are dropped here
            tokens = torch.cat([tokens[:, :1], tokens[:, tokens.shape[1] - n + 1:]], dim=1)
        return tokens.reshape(b, t, n, -1).mean(1)


class FoldingTokenEncoder(ClipTokenEncoder):
    """``ClipTokenEncoder`` of a tower whose trained layers fold into its frozen weights in deployment form (LoRA,
    SSF, (IA)^3): the method's ``fold(into)`` writes the folded values and puts the frozen layers back through the
    ``InPlaceFold`` ``into``, whose ``undo`` in ``undeploy`` restores both bit for bit."""

    def __init__(self, clip: ClipVision):
        super().__init__(clip, grad_through_clip=True)
        self._fold = InPlaceFold()

    def fold(self, into: InPlaceFold) -> None:
        raise NotImplementedError

    def deploy(self) -> None:
        self._fold.begin()
        self.fold(self._fold)

    def undeploy(self) -> None:
        self._fold.undo()


class VideoTokenEncoder(ClipTokenEncoder):
    """``ClipTokenEncoder`` whose blocks see ``[B*T, L, D]`` and need T: sets ``frames`` on each before running."""

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        for block in self.clip.blocks:
            block.frames = frames.shape[1]
        return super().forward(frames)


class SideTuningEncoder(nn.Module):
    grad_through_clip = False  # CLIP only feeds the side networks its taps, under no_grad (``tap_features``)

    def __init__(self, clip: ClipVision, spatial: SpatialSideNetwork, temporal: TemporalSideNetwork):
        super().__init__()
        if spatial.taps != temporal.taps:
            raise ValueError(f"spatial taps {spatial.taps} and temporal taps {temporal.taps} must be the same")
        self.clip = clip
        self.side_spatial = spatial
        self.side_temporal = temporal
        self.taps = list(spatial.taps)
        self.out_dim = spatial.pos_embed.shape[-1]

    def tap_features(self, flat: torch.Tensor) -> torch.Tensor:
        """CLIP's normalised patch tokens at every tap for frames [N,3,H,W]: [S,N,P,Dc] (no graph: CLIP is frozen)."""
        with torch.no_grad():  # frozen CLIP: no graph, no activations kept for backward
            taps = self.clip.tap_tokens(flat, self.taps)
            return normalize_taps(torch.stack([taps[i][:, 1:] for i in self.taps]))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, t = frames.shape[:2]
        flat = frames.flatten(0, 1)
        taps = self.tap_features(flat)
        spatial = self.side_spatial(flat, taps)
        spatial = spatial.view(b, t, *spatial.shape[1:]).mean(1)
        temporal = self.side_temporal(taps.view(taps.shape[0], b, t, *taps.shape[2:]))
        return spatial + temporal
