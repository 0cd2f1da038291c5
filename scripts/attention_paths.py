"""The side networks' attention, timed along every exact path this machine offers.

Side tuning's side blocks (paper: width 240, 6 heads, so 40 channels per head) run attention further below
the CLIP forward's multiply-add rate than any other family of their operators (``scripts/side_rates.py``).
This times attention forward + backward at the shapes and in the layout the side networks run it (spatial:
batch x frames sequences; temporal: taps x batch sequences; all tokens of a frame; q, k and v strided views
of the flat q/k/v projection, and the heads merged back into a flat matrix for the output projection, as
``vtfpar.side._Attention`` does), one path at a time, each paired with the
path the model takes (``benchmark.measure.time_paired``: ratios of neighbouring iterations, so a machine
whose speed drifts still compares them side by side), and checks that each path gives the model's output
and gradients.

Paths:

* ``default``: ``F.scaled_dot_product_attention`` with torch's choice of kernel, as ``SideBlock`` runs it;
* ``sdpa-<backend>``: the same, held to one backend (``torch.nn.attention.sdpa_kernel``): math, flash,
  efficient, cudnn, each where it takes these shapes on this device;
* ``explicit``: ``softmax(q k^T / sqrt(d)) v`` as three operators that keep the probabilities for the
  backward instead of recomputing them (four products and one softmax backward);
* ``padded-<n>``: q, k and v zero-padded to ``n`` channels per head (exact: the zero channels add nothing
  to ``q k^T``, and the output's are dropped), for kernels tuned to head sizes that are multiples of 16;
* ``default-autograd-split``: ``default`` with q, k and v split off the projection by plain views, whose
  backward autograd runs as two copies of the q/k/v gradient (``vtfpar.side.split_heads`` makes one).

``--paths a,b`` times only those (``default`` is always the reference).

    .venv/bin/python scripts/attention_paths.py --backbone ViT-B-16 --batch 2 --frames 6
    python scripts/attention_paths.py --backbone ViT-B-16 --batch 16 --frames 6 --device cuda --amp bf16

Under ``--amp`` q, k and v are in that dtype, as the side blocks' q/k/v projection gives them under autocast.
A step of the side networks calls attention once per side block: ``depth`` spatial and ``frames`` temporal
calls; the table weighs the two shapes so.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.measure import time_paired  # noqa: E402
from benchmark.perf import parse_side_arguments, run_side_script  # noqa: E402
from benchmark.step import compute_dtype  # noqa: E402
from vtfpar.side import _split_heads, split_heads  # noqa: E402

BACKENDS = ("math", "flash", "efficient", "cudnn")
Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Split = Callable[[torch.Tensor, int, int], tuple[torch.Tensor, ...]]


class _Explicit(torch.autograd.Function):
    """``softmax(q k^T * scale) v`` on [B,H,L,D] tensors, keeping the probabilities P for backward:
    ``dV = P^T dO``, ``dP = dO V^T``, ``dS = P (dP - rowsum(dP P))``, ``dQ = dS K scale``, ``dK = dS^T Q scale``.
    The softmax runs in fp32 at least (as autocast runs it)."""

    @staticmethod
    def forward(ctx, q, k, v):
        scale, wide = q.shape[-1] ** -0.5, torch.promote_types(q.dtype, torch.float32)
        p = torch.softmax(torch.matmul(q, k.transpose(-2, -1)).to(wide) * scale, -1).to(q.dtype)
        ctx.save_for_backward(q, k, v, p)
        return torch.matmul(p, v)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, p = ctx.saved_tensors
        scale, wide = q.shape[-1] ** -0.5, torch.promote_types(q.dtype, torch.float32)
        grad_v = torch.matmul(p.transpose(-2, -1), grad)
        grad_s = torch._softmax_backward_data(torch.matmul(grad, v.transpose(-2, -1)).to(wide), p.to(wide), -1,
                                              wide).to(q.dtype)
        return torch.matmul(grad_s, k) * scale, torch.matmul(grad_s.transpose(-2, -1), q) * scale, grad_v


def default(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _Explicit.apply(q, k, v)


def padded(channels: int) -> Attention:
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        d = q.shape[-1]
        q, k, v = (F.pad(x, (0, channels - d)) for x in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v, scale=d ** -0.5)[..., :d]

    return attend


def backend(name: str) -> Attention:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    which = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[name]

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(which):
            return F.scaled_dot_product_attention(q, k, v)

    return attend


def paths(head_dim: int) -> dict[str, tuple[Attention, Split]]:
    """Every path, by name: its attention and its q/k/v split; the first is the model's own."""
    out = {"default": default, **{f"sdpa-{b}": backend(b) for b in BACKENDS}, "explicit": explicit}
    multiple = 16 * math.ceil(head_dim / 16)
    for channels in sorted({multiple, 64} - {head_dim}):
        if channels > head_dim:
            out[f"padded-{channels}"] = padded(channels)
    return {**{name: (attend, split_heads) for name, attend in out.items()},
            "default-autograd-split": (default, _split_heads)}


def forward_backward(attend: Attention, qkv: torch.Tensor, grad: torch.Tensor, n: int, heads: int,
                     split: Split = split_heads) -> tuple[torch.Tensor, torch.Tensor]:
    """``attend`` between a side block's two linear layers: the q/k/v projection of n sequences' tokens [N*L, 3W]
    split into heads by ``split`` (strided views, no copy), attention, the heads merged back into [N*L, W]. Returns
    that output and the projection's gradient for the output gradient ``grad``."""
    qkv.grad = None
    rows, width = grad.shape
    q, k, v = split(qkv, n, heads)
    out = attend(q, k, v).transpose(1, 2).reshape(rows, width)
    out.backward(grad)
    return out.detach(), qkv.grad


def difference(attend: Attention, split: Split, *inputs) -> float:
    """The largest absolute difference of the path's output and gradient from ``default``'s."""
    reference = forward_backward(default, *inputs)
    ours = forward_backward(attend, *inputs, split=split)
    return max((a - b).abs().max().item() for a, b in zip(ours, reference, strict=True))


def runs(attend: Attention, split: Split, *inputs) -> bool:
    """Whether ``attend`` runs on these inputs (a backend held to may have no kernel for them on this device)."""
    try:
        with warnings.catch_warnings():  # a backend says on stderr why it declines; the table says that it did
            warnings.simplefilter("ignore")
            forward_backward(attend, *inputs, split=split)
    except RuntimeError:
        return False
    return True


def side_shapes(backbone: str, profile: str, batch: int, frames: int) -> dict[str, tuple[tuple[int, ...], int]]:
    """Per network, its attention's [B,H,L,D] (sequences, heads, tokens, channels per head) and calls per step,
    read off the model."""
    from benchmark.perf import build_row_model

    enc = build_row_model("side_tuning", {}, backbone, profile, frames).encoder
    spatial, temporal = enc.side_spatial, enc.side_temporal
    heads, (tokens, width) = spatial.blocks[0].attn.heads, spatial.pos_embed.shape[1:]
    return {"spatial": ((batch * frames, heads, tokens, width // heads), len(spatial.blocks)),
            "temporal": ((len(temporal.taps) * batch, heads, tokens, width // heads), len(temporal.blocks))}


def inputs(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> tuple:
    """Random ``forward_backward`` inputs for attention of [B,H,L,D]: the q/k/v projection, the output gradient,
    B and H."""
    n, heads, tokens, d = shape
    qkv = torch.randn(n * tokens, 3 * heads * d, generator=gen).to(device, dtype).requires_grad_()
    return qkv, torch.randn(n * tokens, heads * d, generator=gen).to(device, dtype), n, heads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--paths", default="", help="comma-separated names of the paths to time (default: all)")
    args = parse_side_arguments(ap)

    device = torch.device(args.device)
    dtype = compute_dtype(device, args.amp) or torch.float32
    shapes = side_shapes(args.backbone, args.profile, args.batch, args.frames)
    gen = torch.Generator().manual_seed(0)
    tensors = {net: inputs(shape, device, dtype, gen) for net, (shape, _) in shapes.items()}
    head_dim = next(iter(shapes.values()))[0][-1]

    print(f"{args.backbone}, side networks' attention, {args.batch} clips x {args.frames} frames, device "
          f"{args.device}, {dtype}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{time.strftime('%Y-%m-%d')}")
    for net, (shape, calls) in shapes.items():
        print(f"{net}: [B,H,L,D] = {list(shape)}, {calls} calls per step")
    print("\nforward + backward, ms per call (median; these drift with the machine); vs default: median of "
          "per-iteration ratios to the default path timed next to it (the default row, timed against itself, shows "
          "the noise); step: the side networks' calls of one training step, each shape weighted by its time\n")
    columns = " | ".join(f"{net} ms | vs default" for net in shapes)
    print(f"| path | {columns} | step vs default | max abs difference |")
    print("| --- | " + " | ".join("---: | ---:" for _ in shapes) + " | ---: | ---: |")
    every = paths(head_dim)
    asked = [name for name in args.paths.split(",") if name]
    if unknown := sorted(set(asked) - set(every)):
        raise SystemExit(f"--paths: no path {', '.join(unknown)} here; the paths: {', '.join(every)}")
    for name, (attend, split) in every.items():
        if asked and name not in asked:
            continue
        if not all(runs(attend, split, *t) for t in tensors.values()):
            print(f"| {name} | " + " | ".join("- | -" for _ in shapes) + " | - | no kernel for these tensors here |")
            continue
        cells, step, step_default = [], 0.0, 0.0
        for net, (_, calls) in shapes.items():
            t = tensors[net]
            timed = time_paired(lambda a=attend, s=split, t=t: forward_backward(a, *t, split=s),
                                lambda t=t: forward_backward(default, *t), device, args.warmup, args.iters)
            cells.append(f"{1000 * timed['median_s']:.2f} | {timed['over_ref']:.2f}")
            step += calls * timed["ref"]["median_s"] * timed["over_ref"]
            step_default += calls * timed["ref"]["median_s"]
        diff = max(difference(attend, split, *t) for t in tensors.values())
        print(f"| {name} | " + " | ".join(cells) + f" | {step / step_default:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    run_side_script(main)
