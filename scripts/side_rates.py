"""How close side tuning's side networks run to the speed of the CLIP forward they sit beside.

A side-tuning step costs CLIP's forward up to the last tap plus the side networks' forward and backward.
Whether it is near its floor is a question of rates: if every side kernel ran at the multiply-add rate of
the CLIP forward on the same machine, the side networks would cost ``side MACs / CLIP rate``. This
profiles the side networks' forward + backward alone (torch.profiler, input shapes recorded), counts
the multiply-adds of every matrix product and attention call from its shapes, and prints per family of
operators: time per step, multiply-adds, rate, and the time it would take at CLIP's rate.

    .venv/bin/python scripts/side_rates.py --backbone ViT-B-16 --batch 2 --frames 6
    python scripts/side_rates.py --backbone ViT-B-16 --batch 16 --frames 6 --device cuda --amp bf16

On CUDA the time of an operator is that of the kernels it launched (the profiler's device self time), and the
side step's wall time next to the sum of those kernels shows how much of it the GPU spent waiting for the host
to launch them. Under ``--amp`` both run under autocast, and the CLIP forward's weights are held in the autocast
dtype as in ``bench perf``'s floor (``weights_held_in``).

Conventions: 1 multiply-add = 1 FLOP (as ``bench perf`` and fvcore); attention forward ``B H L S (D + Dv)``
(QK^T and AV), its flash backward 2.5x that (five products: QK^T again, dV, dP, dQ, dK); the patch
embedding's backward computes only its weight's gradient (the frames need none). The CLIP forward is timed
next to every side step (``benchmark.measure.time_paired``), so both rates are taken on the same machine.
Random weights: time does not depend on them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.autograd import DeviceType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.measure import count_flops, time_paired  # noqa: E402
from benchmark.perf import _batch, build_row_model, parse_side_arguments, run_side_script  # noqa: E402
from benchmark.step import autocast_for, compute_dtype  # noqa: E402
from vtfpar.model import weights_held_in  # noqa: E402


def macs(name: str, shapes: list) -> float:
    """Multiply-adds of one matrix-product or attention call from its recorded input shapes (0 otherwise)."""
    if name == "aten::mm":
        (m, k), (_, n) = shapes[0], shapes[1]
        return m * k * n
    if name == "aten::addmm":
        (m, k), (_, n) = shapes[1], shapes[2]
        return m * k * n
    if name in ("aten::bmm", "aten::baddbmm"):
        a, b = (shapes[0], shapes[1]) if name == "aten::bmm" else (shapes[1], shapes[2])
        return a[0] * a[1] * a[2] * b[2]
    if name in ("aten::mkldnn_convolution", "aten::cudnn_convolution"):  # the patch embedding: stride = kernel
        (n, c, h, w), (o, _, kh, kw) = shapes[0], shapes[1]
        return n * o * c * kh * kw * (h // kh) * (w // kw)
    if name == "aten::convolution_backward":  # (grad_out, input, weight, ...): the weight's gradient only
        (n, o, h, w), (_, c, kh, kw) = shapes[0], shapes[2]
        return n * o * c * kh * kw * h * w
    if name.startswith("aten::_scaled_dot_product_"):  # flash (CPU, CUDA), efficient, cudnn; forward and backward
        backward = name.endswith("_backward")
        q, k, v = shapes[1:4] if backward else shapes[0:3]  # backward: (grad_out, q, k, v, ...)
        forward = math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])  # B H L S (D + Dv): QK^T and AV
        return 2.5 * forward if backward else forward
    return 0.0


FAMILIES = (  # name prefix -> family, first match wins
    ("aten::addmm", "linear layers"), ("aten::mm", "linear layers"),
    ("aten::bmm", "tap projections"), ("aten::baddbmm", "tap projections"),
    ("aten::_scaled_dot_product_", "attention"),
    # CUDA's attention operators above only lay out their inputs; these inner ones launch the kernels
    ("aten::_flash_attention", "attention"), ("aten::_efficient_attention", "attention"),
    ("aten::_cudnn_attention", "attention"),
    ("aten::mkldnn_convolution", "patch embedding"), ("aten::cudnn_convolution", "patch embedding"),
    ("aten::convolution_backward", "patch embedding"),
)


def family(name: str) -> str:
    return next((f for prefix, f in FAMILIES if name.startswith(prefix)), "everything else")


def families(events, iters: int, cuda: bool) -> dict[str, list[float]]:
    """Per family of operators, [seconds, multiply-adds] per step from the profiled events of ``iters`` steps: self
    time (on CUDA that of the kernels each operator launched), and each product's multiply-adds counted once (under
    autocast the profiler records an autocast-wrapped operator twice, the outer call around the inner one)."""
    per_family: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for e in events:
        if e.device_type != DeviceType.CPU or not e.name.startswith("aten::"):  # operators, not kernels
            continue
        f = per_family[family(e.name)]
        f[0] += (e.self_device_time_total if cuda else e.self_cpu_time_total) / 1e6 / iters
        if not (e.cpu_parent and e.cpu_parent.name == e.name):
            f[1] += macs(e.name, e.input_shapes) / iters
    return dict(per_family)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=3)
    args = parse_side_arguments(ap)

    device = torch.device(args.device)
    autocast, _ = autocast_for(device, args.amp)
    torch.manual_seed(0)
    model = build_row_model("side_tuning", {}, args.backbone, args.profile, args.frames).to(device)
    x, _ = _batch(args.backbone, model, args.batch, args.frames, device)
    enc, flat, b, t = model.encoder, x.flatten(0, 1), args.batch, args.frames
    with autocast():
        taps = enc.tap_features(flat)
    side = [p for m in (enc.side_spatial, enc.side_temporal) for p in m.parameters()]

    def clip_forward():
        with torch.inference_mode(), autocast():
            enc.clip(flat)

    def side_step():
        for p in side:  # as the training step's zero_grad(set_to_none=True): no accumulation into old grads
            p.grad = None
        with autocast():
            spatial = enc.side_spatial(flat, taps)
            temporal = enc.side_temporal(taps.view(taps.shape[0], b, t, *taps.shape[2:]))
            loss = spatial.float().sum() + temporal.float().sum()
        loss.backward()

    clip_macs = count_flops(enc.clip, flat)["total"]
    with weights_held_in(compute_dtype(device, args.amp), enc.clip, offload=False):
        paired = time_paired(side_step, clip_forward, device, 1, args.iters)  # side and CLIP side by side
    clip_s, side_over_clip = paired["ref"]["median_s"], paired["over_ref"]
    clip_rate = clip_macs / clip_s
    cuda = device.type == "cuda"
    print(f"{args.backbone}, {args.batch} clips x {args.frames} frames, device {args.device}"
          f"{f' ({torch.cuda.get_device_name(device)})' if cuda else ''}, amp {args.amp}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    print(f"CLIP forward (median, next to the side step): {1000 * clip_s:.1f} ms for {clip_macs / 1e9:.1f} G "
          f"multiply-adds = {clip_rate / 1e9:.1f} G/s")
    print(f"side networks, forward + backward: {1000 * paired['median_s']:.1f} ms = {side_over_clip:.3f} of a CLIP "
          "forward timed next to it")

    from torch.profiler import ProfilerActivity, profile

    if not cuda:  # as bench perf: the profiler's log (an ERROR line about counting GPUs) kept off a CPU run
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    side_step()
    with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda, record_shapes=True) as prof:
        for _ in range(args.iters):
            side_step()
        if cuda:
            torch.cuda.synchronize(device)
    per_family = families(prof.events(), args.iters, cuda)
    profiled = sum(s for s, _ in per_family.values())
    what = "kernel time (the rest of the step the GPU waits for the host)" if cuda else "operator self time"
    print(f"profiled: {1000 * profiled:.1f} ms of {what} per step\n")
    print("| operators | ms per step | share | G multiply-adds | G/s | ms at CLIP's rate |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    total_floor = 0.0
    for name, (s, m) in sorted(per_family.items(), key=lambda kv: -kv[1][0]):
        floor = m / clip_rate if m else None
        total_floor += floor or 0.0
        rate = f"{m / s / 1e9:.1f}" if m and s else "-"
        at_clip = f"{1000 * floor:.1f}" if m else "-"
        print(f"| {name} | {1000 * s:.1f} | {100 * s / profiled:.1f}% | {m / 1e9:.2f} | {rate} | {at_clip} |")
    print(f"\nEvery product at CLIP's rate and nothing else: {1000 * total_floor:.1f} ms = "
          f"{total_floor / clip_s:.3f} of a CLIP forward.")


if __name__ == "__main__":
    run_side_script(main)
