"""Ladder Side-Tuning (Sung, Cho, Bansal, "LST: Ladder Side-Tuning for Parameter and Memory
Efficient Transfer Learning", NeurIPS 2022): the image-only ancestor of VTFPAR++'s side tuning.

A side Transformer of width ``d / r`` runs beside the frozen CLIP tower, one side block per CLIP
block. It reads CLIP through "ladders": a learned down-projection of every CLIP layer's output,
mixed into the side stream by a learned gate (as in the paper's code: T = 0.1, alpha_i = 0 at first):

    s_0 = W_0 h_0 + b_0                                  (h_0: CLIP's embedded patches)
    s_i = SideBlock_i(mu_i s_{i-1} + (1 - mu_i)(W_i h_i + b_i)),   mu_i = sigmoid(alpha_i / T)
    out = LN(s_L)

CLIP runs without an autograd graph: no gradient and no activation memory through the backbone,
which is the point of the method. The side blocks keep CLIP's head count, so each head has
``d_head / r`` dimensions. Output tokens are averaged over frames, as for the image methods.

**Initialisation by structural pruning**, as in the paper: each side block starts as its CLIP
block with ``1/r`` of the residual channels, of each head's query/key and value dimensions, and of
the MLP's hidden units kept. Which units are kept differs from the paper in two ways:

* importance is the L1 norm of the weights that read and write a unit (the paper's L1 strategy
  applied to |W|), not of the empirical Fisher of the task loss: a model here is built from its
  config and seed before any data is loaded, and a Fisher score would need a labelled pass over
  1,024 training clips through the full backbone;
* one set of residual channels is kept for all layers (the paper lets every layer choose its own),
  so the side blocks' residual additions add matching channels.

Also different: no final up-projection to ``d`` (the fusion's input projection follows, and two
linear maps in a row are one), and no dropout in the side blocks (they are the blocks of VTFPAR++'s
side networks; the paper's 0.1 is T5's default). Defaults: r = 8 (the paper's GLUE setting). For
ViT-B/16: 12 side blocks of width 96 (12 * 96^2 + 13 * 96 each), 13 ladders (768 * 96 + 96),
12 gates and the final LayerNorm: 2,301,996 parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from methods.registry import BuildContext, MethodSpec, Variant, register_method
from vtfpar.backbone import ClipVision
from vtfpar.settings import SettingError, check_settings, setting
from vtfpar.side import SideBlock


@dataclass
class LSTConfig:
    reduction: int = setting(8, ge=1)  # r: side width = CLIP width / r (paper: 8)
    temperature: float = setting(0.1, gt=0.0)  # T of the gates (paper: 0.1)
    prune_init: bool = True  # start the side blocks from pruned CLIP blocks (False: timm's random init)

    def __post_init__(self):
        check_settings(self, "", method="lst")


def _top(score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, in ascending index order (keeps the units' original order)."""
    return score.topk(k).indices.sort().values


def residual_channels(vision: ClipVision, k: int) -> torch.Tensor:
    """The k residual channels whose reading (q, k, v, fc1 columns) and writing (out, fc2 rows) weights
    have the largest L1 norm summed over all blocks; the same set for every side layer."""
    score = torch.zeros(vision.width)
    for block in vision.blocks:
        attn, mlp = block.attn, block.mlp
        for layer in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.c_fc):
            score += layer.weight.detach().abs().sum(0).float().cpu()
        for layer in (attn.out_proj, mlp.c_proj):
            score += layer.weight.detach().abs().sum(1).float().cpu()
    return _top(score, k)


def prune_into(side: SideBlock, block: nn.Module, keep: torch.Tensor, heads: int, r: int) -> None:
    """Copy ``block``'s weights restricted to its most important units into ``side``: residual channels
    ``keep``; per head, the top ``d_head / r`` query/key dimensions by ``|W_q| |W_k|`` and value
    dimensions by ``|W_v| |W_out|``; the top ``1/r`` MLP hidden units by ``|W_fc1| |W_fc2|``."""
    attn, fc, proj = block.attn, block.mlp.c_fc, block.mlp.c_proj
    wq, wk, wv, wo = (layer.weight.detach().cpu() for layer in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj))
    dh = wq.shape[0] // heads

    def per_head(score: torch.Tensor) -> torch.Tensor:
        return torch.cat([_top(score[h * dh:(h + 1) * dh], dh // r) + h * dh for h in range(heads)])

    read = wq[:, keep].abs().sum(1)
    qk = per_head(read * wk[:, keep].abs().sum(1))
    v = per_head(wv[:, keep].abs().sum(1) * wo[keep].abs().sum(0))
    w_fc, w_proj = fc.weight.detach().cpu(), proj.weight.detach().cpu()
    hidden = _top(w_fc[:, keep].abs().sum(1) * w_proj[keep].abs().sum(0), w_fc.shape[0] // r)

    def b(layer: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        return layer.bias.detach().cpu()[idx]

    values = {
        "norm1.weight": block.ln_1.weight.detach().cpu()[keep], "norm1.bias": b(block.ln_1, keep),
        "attn.qkv.weight": torch.cat([wq[qk][:, keep], wk[qk][:, keep], wv[v][:, keep]]),
        "attn.qkv.bias": torch.cat([b(attn.q_proj, qk), b(attn.k_proj, qk), b(attn.v_proj, v)]),
        "attn.proj.weight": wo[keep][:, v], "attn.proj.bias": b(attn.out_proj, keep),
        "norm2.weight": block.ln_2.weight.detach().cpu()[keep], "norm2.bias": b(block.ln_2, keep),
        "mlp.fc1.weight": w_fc[hidden][:, keep], "mlp.fc1.bias": b(fc, hidden),
        "mlp.fc2.weight": w_proj[keep][:, hidden], "mlp.fc2.bias": b(proj, keep),
    }
    side.load_state_dict(values)


class LadderSide(nn.Module):
    """Ladders, gates, side blocks and the final LayerNorm (everything LST trains)."""

    def __init__(self, clip_width: int, layers: int, width: int, heads: int, temperature: float):
        super().__init__()
        self.temperature = temperature
        self.down_weight = nn.Parameter(torch.empty(layers + 1, clip_width, width))  # [L+1, d, w], ladders 0..L
        self.down_bias = nn.Parameter(torch.empty(layers + 1, 1, width))
        bound = 1 / math.sqrt(clip_width)
        for i in range(layers + 1):  # nn.Linear's initialisation, ladder by ladder
            nn.init.kaiming_uniform_(self.down_weight[i].T, a=math.sqrt(5))
            nn.init.uniform_(self.down_bias[i], -bound, bound)
        self.gate = nn.Parameter(torch.zeros(layers))  # alpha_i
        self.blocks = nn.ModuleList(SideBlock(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width, eps=1e-6)

    def forward(self, taps: torch.Tensor) -> torch.Tensor:
        """CLIP's outputs of layers 0..L [L+1,N,P,d] -> side tokens [N,P,w]."""
        layers, n, p, d = taps.shape
        ladders = torch.baddbmm(self.down_bias, taps.view(layers, n * p, d), self.down_weight).view(layers, n, p, -1)
        mu = torch.sigmoid(self.gate / self.temperature)
        s = ladders[0]
        for i, block in enumerate(self.blocks):
            s = block(torch.lerp(ladders[i + 1], s, mu[i]))  # mu s + (1 - mu) ladder
        return self.norm(s)


class LSTEncoder(nn.Module):
    """Frozen CLIP (no graph) feeding the ladder side network; tokens averaged over frames."""

    grad_through_clip = False  # CLIP runs under no_grad (``methods.build`` refuses trainable weights inside it)

    def __init__(self, clip: ClipVision, side: LadderSide):
        super().__init__()
        self.clip = clip
        self.lst_side = side
        self.out_dim = side.norm.normalized_shape[0]
        self.taps = list(range(clip.layers + 1))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, t = frames.shape[:2]
        with torch.no_grad():
            _, taps = self.clip(frames.flatten(0, 1), taps=self.taps)
            stacked = torch.stack([taps[i] for i in self.taps])
        tokens = self.lst_side(stacked)
        return tokens.view(b, t, *tokens.shape[1:]).mean(1)


def build(vision: ClipVision, cfg: LSTConfig, ctx: BuildContext) -> LSTEncoder:
    d, heads, r = vision.width, vision.heads, cfg.reduction
    if d % r or (d // heads) % r:
        raise SettingError("methods.lst.reduction", f"lst: reduction {r} must divide the width ({d}) and the head "
                           f"size ({d // heads}) of {ctx.backbone}", also=("model.backbone",))
    vision.requires_grad_(False)
    side = LadderSide(d, vision.layers, d // r, heads, cfg.temperature)
    if cfg.prune_init:
        keep = residual_channels(vision, d // r)
        for side_block, block in zip(side.blocks, vision.blocks, strict=True):
            prune_into(side_block, block, keep, heads, r)
        with torch.no_grad():
            side.norm.weight.copy_(vision.visual.ln_post.weight.detach().cpu()[keep])
            side.norm.bias.copy_(vision.visual.ln_post.bias.detach().cpu()[keep])
    return LSTEncoder(vision, side)


register_method(MethodSpec(
    name="lst", config_cls=LSTConfig, build=build, prefixes=("lst_",),
    summary="ladder side network of width d/r on every CLIP layer, no gradient through CLIP",
    source="Sung et al. 2022", order=80, variants=(Variant("random_init", {"prune_init": False}),),
))
