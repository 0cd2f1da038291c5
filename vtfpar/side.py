"""The VTFPAR++ spatial and temporal side networks (Sec. III-B, eq. 2-4).

Both are light ViTs (paper: width 240, 6 heads, depth 8, patch 16) that run *beside* the frozen
CLIP image encoder. They read CLIP's tokens after chosen layers ("taps", ``[0, 3, 6, 9, 11]`` for
ViT-B/16) through a fusion module ``LN(F) * w`` (layer norm, then a 1x1 convolution, which on a
token sequence is a per-token linear map) and add them to their own patch tokens. No gradient ever
flows into CLIP, so CLIP runs without building an autograd graph.

Deviations from the official code, each in favour of the paper's equations or of clean counts:
the temporal network uses one fusion module per stream for every frame (eq. 3) instead of a
separate un-normalised projection for frame 0, adds frame k before block k (eq. 3-4; the official
code adds it after, so its last frame passes through no block), and builds exactly one block per
frame step (eq. 4: block k at frame k), so no parameter is built that never receives a gradient;
the spatial network's output is that of its last block (the paper's depth 8; the official code takes
it after the seventh of its eight, before re-adding the position embedding). Smaller differences:
the tap projections keep ``nn.Linear``'s initialisation, LayerNorms use eps 1e-5 (official 1e-6) and
the class token starts at zero.

How it is kept cheap (see README, Performance): every tap's patch tokens are stacked and
normalised once (``normalize_taps``), shared by both networks; each network projects all of its
taps with one batched matrix product (``TapFusions``, with a backward written for the folded
product); the networks carry their tokens as one flat ``[N*L, W]`` matrix through every block
(``SideBlock.forward_flat``), whose linear layers (``FlatLinear``) skip autograd's transposes and
reshapes. Each is exactly the textbook computation (tested against a step-by-step reading of eq. 2-4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint


def normalize_taps(tokens: torch.Tensor) -> torch.Tensor:
    """The parameter-free part of ``LN(F)``: ``(F - mean) / std`` over channels (eps 1e-5, as nn.LayerNorm).

    ``tokens`` are CLIP's stacked tap tokens ``[S, ..., Dc]``. They carry no gradient, so this runs
    once per step under ``no_grad`` and is shared by every fusion that reads a tap (spatial and
    temporal). It runs in fp32 at least (in float64 for a float64 model). Under autocast it is cast once to the
    autocast dtype, which the projection would do anyway.
    """
    x = F.layer_norm(tokens if tokens.dtype == torch.float64 else tokens.float(), tokens.shape[-1:])
    dev = tokens.device.type
    if torch.is_autocast_enabled(dev):
        x = x.to(torch.get_autocast_dtype(dev))
    return x


class TapFusions(nn.Module):
    """``LN(F_s) w_s`` for S taps at once (eq. 2 and 3): one layer norm and one projection per tap.

    ``forward`` takes *normalised* taps (``normalize_taps``) and folds each layer norm's affine part
    into its projection: ``W (g * x + b) + c = (W diag g) x + (W b + c)``. This is exactly
    ``proj_s(norm_s(F_s))`` with the same parameters (tested), computed for all taps by one batched
    matrix product; backward needs only the shared normalised taps, not a per-tap fp32 copy of each
    768-wide CLIP tap. In deployment form the folded weights are computed once.
    """

    def __init__(self, taps: int, clip_width: int, width: int):
        super().__init__()
        # Shaped to broadcast against the batched product ([S,1,Dc] and [S,1,W]): the fold needs no reshapes.
        self.norm_weight = nn.Parameter(torch.ones(taps, 1, clip_width))
        self.norm_bias = nn.Parameter(torch.zeros(taps, 1, clip_width))
        self.proj_weight = nn.Parameter(torch.empty(taps, width, clip_width))
        self.proj_bias = nn.Parameter(torch.empty(taps, 1, width))
        bound = 1 / math.sqrt(clip_width)
        for s in range(taps):  # nn.Linear's initialisation, tap by tap: the draws of one nn.Linear per tap
            nn.init.kaiming_uniform_(self.proj_weight[s], a=math.sqrt(5))
            nn.init.uniform_(self.proj_bias[s], -bound, bound)
        self._folded: tuple[torch.Tensor, torch.Tensor] | None = None
        self._register_load_state_dict_pre_hook(_stack_per_tap_state)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W diag g)^T`` [S,Dc,W] and ``W b + c`` [S,1,W]."""
        return _fold(self.norm_weight, self.norm_bias, self.proj_weight, self.proj_bias)

    def forward(self, normalized: torch.Tensor) -> torch.Tensor:
        """normalised taps [S,N,P,Dc] -> projected [S,N,P,W]."""
        s, n, p, dc = normalized.shape
        flat = normalized.view(s, n * p, dc)
        if self._folded is None and torch.is_grad_enabled() and not normalized.requires_grad:
            out = _FoldedFusionFunction.apply(flat, self.norm_weight, self.norm_bias, self.proj_weight,
                                              self.proj_bias)
        else:
            weight_t, bias = self._folded or self.folded()
            out = torch.baddbmm(bias, flat, weight_t)
        return out.view(s, n, p, -1)

    def deploy(self) -> None:
        self._folded = self.folded()

    def undeploy(self) -> None:
        self._folded = None


def _fold(norm_weight: torch.Tensor, norm_bias: torch.Tensor, proj_weight: torch.Tensor,
          proj_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W diag g)^T`` [S,Dc,W] and ``W b + c`` [S,1,W] from g, b [S,1,Dc], W [S,W,Dc], c [S,1,W]."""
    return (proj_weight * norm_weight).transpose(1, 2), torch.baddbmm(proj_bias, norm_bias, proj_weight.transpose(1, 2))


class _FoldedFusionFunction(torch.autograd.Function):
    """``TapFusions`` in training: the folded product, with a backward written for it.

    Forward: the same operations as the deployment form (``_fold``, then one batched product).
    Backward, with ``G`` the output gradient, ``x`` the normalised taps and ``F = G^T x`` the gradient
    of the folded weight ``W diag g``, per tap: ``dW = F diag g + (sum_rows G) b^T``, ``dg = colsum(F * W)``,
    ``db = W^T sum_rows G``, ``dc = sum_rows G``; nothing flows into the taps (CLIP is frozen). This is
    the gradient autograd computes through ``_fold`` (tested, and by ``gradcheck`` in float64) in fewer
    operators: no broadcast reductions, no expand or squeeze round trips. Under autocast the sums over rows
    accumulate in the parameters' dtype (fp32). Only for taps without a gradient (``TapFusions.forward``
    takes autograd's path otherwise); first derivatives only.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor, proj_weight: torch.Tensor,
                proj_bias: torch.Tensor) -> torch.Tensor:
        weight_t, bias = _fold(norm_weight, norm_bias, proj_weight, proj_bias)
        ctx.save_for_backward(x, norm_weight, norm_bias, proj_weight)
        return torch.baddbmm(bias, x, weight_t)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, g, b, w = ctx.saved_tensors
        grad_folded = torch.bmm(grad.transpose(1, 2), x.to(grad.dtype)).to(w.dtype)  # [S,W,Dc]
        grad_bias = grad.sum(1, keepdim=True, dtype=w.dtype)  # [S,1,W]: the gradient of W b + c
        grad_col = grad_bias.transpose(1, 2)
        grad_w = torch.addcmul(grad_folded * g, grad_col, b)
        grad_g = (grad_folded * w).sum(1, keepdim=True)
        grad_b = (grad_col * w).sum(1, keepdim=True)
        return None, grad_g, grad_b, grad_w, grad_bias


def _stack_per_tap_state(state_dict, prefix, *args) -> None:
    """Read weights saved with one ``TapFusion`` module per tap (``fuse.<s>.norm.weight``, ...) or stacked
    without the broadcast axis (``norm_weight`` [S,Dc], ``proj_bias`` [S,W])."""
    names = {"norm_weight": "norm.weight", "norm_bias": "norm.bias", "proj_weight": "proj.weight",
             "proj_bias": "proj.bias"}
    if f"{prefix}0.norm.weight" in state_dict:
        count = len([k for k in state_dict if k.startswith(prefix) and k.endswith(".norm.weight")])
        for new, old in names.items():
            state_dict[prefix + new] = torch.stack([state_dict.pop(f"{prefix}{s}.{old}") for s in range(count)])
    for key in ("norm_weight", "norm_bias", "proj_bias"):
        value = state_dict.get(prefix + key)
        if value is not None and value.dim() == 2:
            state_dict[prefix + key] = value.unsqueeze(1)


class _FlatLinearFunction(torch.autograd.Function):
    """``x W^T + b`` on a flat ``[rows, in]`` matrix, with the backward autograd would run, minus its bookkeeping.

    Autograd differentiates ``F.linear`` as ``addmm(b, x, W.t())``: its backward transposes the
    transposed weight back, transposes the weight gradient twice and reshapes the bias gradient:
    10 operators per layer. This backward calls the same matrix products on the same layouts
    (``g W``, ``g^T x``, ``sum_rows g``), so the gradients are bit-identical (tested, fp32 and bf16
    autocast), in 6 operators. Under autocast the inputs are cast once, as autocast would; the
    gradients are cast back to the parameters' dtype by the autograd engine, as autocast's are.
    First derivatives only (the saved inputs are the cast copies).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        device = x.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        with torch.autocast(device, enabled=False):
            out = x.mm(weight.t()) if bias is None else torch.addmm(bias, x, weight.t())
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = grad.mm(weight) if need_x else None
        grad_w = grad.t().mm(x) if need_w else None
        grad_b = grad.sum(0) if ctx.has_bias and need_b else None
        return grad_x, grad_w, grad_b


class FlatLinear(nn.Linear):
    """``nn.Linear`` (same parameters, names, initialisation) for flat ``[rows, in]`` inputs whose training
    backward dispatches 4 operators fewer (``_FlatLinearFunction``); without a graph it is ``F.linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return _FlatLinearFunction.apply(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


class _SplitHeadsFunction(torch.autograd.Function):
    """``qkv [n*L, 3*W] -> q, k, v [n, heads, L, W/heads]``, views as ``view(...).permute(...).unbind(0)``, with a
    backward that copies the three gradients once, straight into the flat ``[n*L, 3*W]`` layout.

    Autograd's backward of that chain stacks them in the permuted layout and then clones the stack to flatten
    it again: two copies of the whole q/k/v gradient where one does. Same operator count, same values (only
    copies differ; tested bit-identical)."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, n: int, heads: int):
        return _split_heads(qkv, n, heads)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_q: torch.Tensor, grad_k: torch.Tensor, grad_v: torch.Tensor):
        n, heads, length, head_width = grad_q.shape
        if torch.compiler.is_compiling():  # a non-contiguous out= breaks the graph; two more views cost nothing there
            grad = torch.stack([g.transpose(1, 2) for g in (grad_q, grad_k, grad_v)], dim=2)
            return grad.view(n * length, 3 * heads * head_width), None, None
        grad = grad_q.new_empty(n * length, 3 * heads * head_width)
        torch.stack([grad_q, grad_k, grad_v], out=grad.view(n, length, 3, heads, head_width).permute(2, 0, 3, 1, 4))
        return grad, None, None


def split_heads(qkv: torch.Tensor, n: int, heads: int) -> tuple[torch.Tensor, ...]:
    """The q/k/v projection of n sequences' tokens, flat ``[n*L, 3*W]``, as q, k, v ``[n, heads, L, W/heads]``:
    strided views, no copy; with a graph, through ``_SplitHeadsFunction`` (one copy in the backward, not two)."""
    if torch.is_grad_enabled() and qkv.requires_grad:
        return _SplitHeadsFunction.apply(qkv, n, heads)
    return _split_heads(qkv, n, heads)


def _split_heads(qkv: torch.Tensor, n: int, heads: int) -> tuple[torch.Tensor, ...]:
    rows, width3 = qkv.shape
    return qkv.view(n, rows // n, 3, heads, width3 // (3 * heads)).permute(2, 0, 3, 1, 4).unbind(0)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = FlatLinear(width, 3 * width)
        self.proj = FlatLinear(width, width)

    def forward(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """flat tokens [n*L, W] of n sequences -> [n*L, W]."""
        rows, w = x.shape
        q, k, v = split_heads(self.qkv(x), n, self.heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(rows, w))


class _Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = FlatLinear(width, hidden)
        self.fc2 = FlatLinear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SideBlock(nn.Module):
    """A pre-norm ViT block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))`` (GELU, MLP ratio 4, LN eps 1e-6).

    The computation, parameter names and initialisation of timm's ``Block(width, heads,
    qkv_bias=True)``; the linear layers run on flat ``[N*L, W]`` token matrices, which dispatches
    about a third fewer operators per block (each is host work, and on a GPU a launch).
    """

    def __init__(self, width: int, heads: int, drop_path: float = 0.0):
        super().__init__()
        from timm.layers import DropPath  # here: timm's import (torchvision's with it) takes seconds

        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = _Attention(width, heads)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else None
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = _Mlp(width, 4 * width)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """tokens [N,L,W] -> [N,L,W]."""
        n, length, w = x.shape
        return self.forward_flat(x.reshape(n * length, w), n).view(n, length, w)

    def forward_flat(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """The tokens of n sequences as one flat matrix [N*L,W] -> [N*L,W] (what the side networks carry)."""
        x = x + self._drop(self.drop_path1, self.attn(self.norm1(x), n), n)
        return x + self._drop(self.drop_path2, self.mlp(self.norm2(x)), n)

    @staticmethod
    def _drop(drop_path: nn.Module | None, x: torch.Tensor, n: int) -> torch.Tensor:
        return x if drop_path is None else drop_path(x.view(n, -1, x.shape[-1])).view(x.shape)


def _blocks(width: int, heads: int, depth: int, drop_path: float) -> nn.ModuleList:
    return nn.ModuleList(SideBlock(width, heads, drop_path) for _ in range(depth))


def _run(block: SideBlock, x: torch.Tensor, n: int, recompute: bool) -> torch.Tensor:
    """``block.forward_flat(x, n)``; with ``recompute`` in training, keep only the block's input for backward
    (activation checkpointing: less memory for about one more side-network forward)."""
    if recompute and torch.is_grad_enabled() and block.training:
        return checkpoint(block.forward_flat, x, n, use_reentrant=False)
    return block.forward_flat(x, n)


def _with_class_row(injected: torch.Tensor) -> torch.Tensor:
    """[..., P, W] -> [..., 1+P, W] with a zero row at the class token: what is added to the patch tokens only.

    Applied once to every tap's injection together (one copy), not once per block."""
    return F.pad(injected, (0, 0, 1, 0))


class SpatialSideNetwork(nn.Module):
    """SSN, eq. 2: per frame, ``S^j <- LN(F^i) w_s + S^j`` at the side layer j paired with CLIP layer i.

    The side network embeds the raw frame with its own patch embedding and class token. Side
    layer 0 is the output of the patch embedding; side layer j > 0 is the input of block j. The
    position embedding is re-added after every block, as in the paper's code, which takes its output
    before that addition after its seventh block; here the output is the last block's, with it.
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
        self.fuse = TapFusions(len(self.taps), clip_width, width)
        self.blocks = _blocks(width, heads, depth, drop_path)

    def forward(self, frames: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
        """frames [N,3,H,W], normalised patch taps [S,N,P,Dc] in ``self.taps`` order -> tokens [N,L,width]."""
        x = self.patch_embed(frames).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        n, length, width = x.shape
        # Tokens travel as one flat [N*L, W] matrix: no reshapes around each block.
        injected = _with_class_row(self.fuse(taps)).view(len(self.taps), n * length, width).unbind(0)
        pos = self.pos_embed.expand(n, -1, -1).reshape(n * length, width)
        x = x.view(n * length, width)
        for j, block in enumerate(self.blocks):
            if j < len(injected):
                x = x + injected[j]
            x = _run(block, x, n, self.recompute) + pos
        return x.view(n, length, width)


class TemporalSideNetwork(nn.Module):
    """TSN, eq. 3-4: one stream per CLIP tap i, run across frames: ``T_{k+1} = L_k(LN(F_k^i) w_t + T_k)``.

    ``T_0`` is the class token plus position embedding. The blocks are shared by the streams
    (they run as one batch); each stream has its own fusion. Streams are averaged.
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
        self.fuse = TapFusions(len(self.taps), clip_width, width)
        self.blocks = _blocks(width, heads, frames, drop_path)

    def forward(self, taps: torch.Tensor) -> torch.Tensor:
        """normalised patch taps [S,B,T,P,Dc] -> tokens [B,L,width]."""
        s, b, t, p, dc = taps.shape
        if t != self.frames:
            raise ValueError(f"temporal side network was built for {self.frames} frames, got {t}")
        width = self.pos_embed.shape[-1]
        start = F.pad(self.cls_token, (0, 0, 0, p)) + self.pos_embed  # T_0 [1,L,W]
        # Every stream's fusion over all frames by one product, laid out [T, S*B*L, W] so frame k feeds
        # block k; the states of all streams travel as one flat [S*B*L, W] matrix.
        injected = self.fuse(taps.view(s, b * t, p, dc)).view(s, b, t, p, width).permute(2, 0, 1, 3, 4)
        injected = _with_class_row(injected).view(t, s * b * (p + 1), width).unbind(0)
        state = (injected[0].view(s * b, p + 1, width) + start).view(-1, width)
        for k, block in enumerate(self.blocks):
            state = _run(block, state if k == 0 else state + injected[k], s * b, self.recompute)
        return state.view(s, b, p + 1, width).mean(0)
