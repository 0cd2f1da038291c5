"""The VTFPAR++ spatial and temporal side networks (Sec. III-B, eq. 2-4).

Both are light ViTs (paper: width 240, 6 heads, depth 8, patch 16) that run *beside* the frozen
CLIP image encoder. They read CLIP's tokens after chosen layers ("taps", ``[0, 3, 6, 9, 11]`` for
ViT-B/16) through a fusion module ``LN(F) * w`` (layer norm, then a 1x1 convolution, which on a
token sequence is a per-token linear map) and add them to their own tokens. No gradient ever
flows into CLIP, so CLIP runs without building an autograd graph.

Deviations from the official code, each in favour of the paper's equations or of clean counts:
the temporal network uses one fusion module per stream for every frame (eq. 3) instead of a
separate un-normalised projection for frame 0, and it builds exactly one block per frame step
(eq. 4: block k at frame k), so no parameter is built that never receives a gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint


def normalize_tap(tokens: torch.Tensor) -> torch.Tensor:
    """The parameter-free part of ``LN(F)``: ``(F - mean) / std`` over channels (eps 1e-5, as nn.LayerNorm).

    CLIP's taps carry no gradient, so this is computed once per tap under ``no_grad`` and shared
    by every fusion module that reads the tap (spatial and temporal). Under autocast it is cast
    once to the autocast dtype, which the projection would do anyway.
    """
    x = F.layer_norm(tokens.float(), tokens.shape[-1:])
    dev = tokens.device.type
    if torch.is_autocast_enabled(dev):
        x = x.to(torch.get_autocast_dtype(dev))
    return x


class TapFusion(nn.Module):
    """``LN(F) * w``: normalise CLIP tokens, project them to the side width (eq. 2 and 3).

    ``forward`` takes *normalised* taps (``normalize_tap``) and folds the layer norm's affine
    part into the projection: ``W (g * x + b) + c = (W diag g) x + (W b + c)``. This is exactly
    ``proj(norm(F))`` with the same parameters (tested), but backward needs only the shared
    normalised tap, not a per-module fp32 copy of each 768-wide CLIP tap and its normalised
    output, which saves memory and time (see README, Performance).
    """

    def __init__(self, clip_width: int, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(clip_width)
        self.proj = nn.Linear(clip_width, width)

    def forward(self, normalized: torch.Tensor) -> torch.Tensor:
        weight = self.proj.weight * self.norm.weight
        bias = F.linear(self.norm.bias, self.proj.weight, self.proj.bias)
        return F.linear(normalized, weight, bias)


def _add_to_patches(x: torch.Tensor, injected: torch.Tensor) -> torch.Tensor:
    """Add ``injected`` to the patch tokens of ``x`` only (token 0 is the side network's class token)."""
    return torch.cat([x[:, :1], x[:, 1:] + injected[:, 1:]], dim=1)


def _blocks(width: int, heads: int, depth: int, drop_path: float) -> nn.ModuleList:
    return nn.ModuleList(
        Block(width, heads, mlp_ratio=4.0, qkv_bias=True, drop_path=drop_path) for _ in range(depth)
    )


def _run(block: nn.Module, x: torch.Tensor, recompute: bool) -> torch.Tensor:
    """``block(x)``; with ``recompute`` in training, keep only the block's input for backward
    (activation checkpointing: less memory for about one more side-network forward)."""
    if recompute and torch.is_grad_enabled() and block.training:
        return checkpoint(block, x, use_reentrant=False)
    return block(x)


class SpatialSideNetwork(nn.Module):
    """SSN, eq. 2: per frame, ``S^j <- LN(F^i) w_s + S^j`` at the side layer j paired with CLIP layer i.

    The side network embeds the raw frame with its own patch embedding and class token. Side
    layer 0 is the output of the patch embedding; side layer j > 0 is the input of block j. The
    position embedding is re-added after every block, as in the paper's code.
    """

    def __init__(
        self,
        clip_width: int,
        num_tokens: int,
        patch_size: int,
        taps: Sequence[int],
        width: int = 240,
        heads: int = 6,
        depth: int = 8,
        drop_path: float = 0.0,
        recompute: bool = False,
    ):
        super().__init__()
        self.recompute = recompute
        if len(taps) > depth:
            raise ValueError(f"spatial side network: {len(taps)} CLIP taps need depth >= {len(taps)}, got {depth}")
        self.taps = list(taps)
        self.patch_embed = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, num_tokens, width) * 0.02)
        self.fuse = nn.ModuleList(TapFusion(clip_width, width) for _ in self.taps)
        self.blocks = _blocks(width, heads, depth, drop_path)

    def forward(self, frames: torch.Tensor, taps: dict[int, torch.Tensor]) -> torch.Tensor:
        """frames [N,3,H,W], normalised taps {i: [N,L,Dc]} -> tokens [N,L,width]."""
        x = self.patch_embed(frames).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for j, block in enumerate(self.blocks):
            if j < len(self.taps):
                x = _add_to_patches(x, self.fuse[j](taps[self.taps[j]]))
            x = _run(block, x, self.recompute) + self.pos_embed
        return x


class TemporalSideNetwork(nn.Module):
    """TSN, eq. 3-4: one stream per CLIP tap i, run across frames: ``T_{k+1} = L_k(LN(F_k^i) w_t + T_k)``.

    ``T_0`` is the class token plus position embedding. The blocks are shared by the streams
    (they run as one batch); each stream has its own fusion module. Streams are averaged.
    """

    def __init__(
        self,
        clip_width: int,
        num_tokens: int,
        frames: int,
        taps: Sequence[int],
        width: int = 240,
        heads: int = 6,
        drop_path: float = 0.0,
        recompute: bool = False,
    ):
        super().__init__()
        self.recompute = recompute
        self.taps = list(taps)
        self.frames = frames
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, num_tokens, width) * 0.02)
        self.fuse = nn.ModuleList(TapFusion(clip_width, width) for _ in self.taps)
        self.blocks = _blocks(width, heads, frames, drop_path)

    def forward(self, taps: dict[int, torch.Tensor]) -> torch.Tensor:
        """normalised taps {i: [B,T,L,Dc]} -> tokens [B,L,width]."""
        first = taps[self.taps[0]]
        b, t, n = first.shape[:3]
        if t != self.frames:
            raise ValueError(f"temporal side network was built for {self.frames} frames, got {t}")
        s = len(self.taps)
        state = torch.zeros(1, n, self.pos_embed.shape[-1], device=first.device, dtype=self.pos_embed.dtype)
        state = torch.cat([self.cls_token, state[:, 1:]], dim=1) + self.pos_embed
        state = state.expand(s * b, -1, -1)
        # Each stream's fusion over all frames at once (one projection per stream, not per frame),
        # laid out [T, S*B, L, width] so that frame k feeds block k.
        injected_all = torch.cat([fuse(taps[i]).transpose(0, 1) for fuse, i in zip(self.fuse, self.taps, strict=True)],
                                 dim=1)
        for k, block in enumerate(self.blocks):
            state = _run(block, _add_to_patches(state, injected_all[k]), self.recompute)
        return state.reshape(s, b, n, -1).mean(0)
