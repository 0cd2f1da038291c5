"""``train.compile``: torch.compile of the encoder, fusion and head gives the eager model's outputs and
gradients, and the side networks compile as whole graphs (no graph break inside them)."""

from __future__ import annotations

import copy

import torch

from benchmark.task import compile_model
from tests.conftest import losses_and_grads, tiny_model


def test_side_networks_compile_without_graph_breaks():
    model = tiny_model("side_tuning")
    flat = torch.randn(8, 3, 64, 64)
    taps = model.encoder.tap_features(flat)
    spatial = torch._dynamo.explain(model.encoder.side_spatial)(flat, taps)
    temporal = torch._dynamo.explain(model.encoder.side_temporal)(taps.view(taps.shape[0], 2, 4, *taps.shape[2:]))
    assert spatial.graph_break_count == 0, spatial.break_reasons
    assert temporal.graph_break_count == 0, temporal.break_reasons
    assert spatial.graph_count == temporal.graph_count == 1


def test_compiled_model_gives_the_eager_outputs_and_gradients(clips):
    eager = tiny_model("side_tuning", overrides={"depth": 4})  # one side block per tap: a smaller graph to compile
    compiled = copy.deepcopy(eager)
    compile_model(compiled)
    losses, grads = losses_and_grads((eager, compiled), clips)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:  # atol: head.bias's gradient is zero up to rounding (the BatchNorm removes it)
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-3, atol=1e-4,
                                   msg=lambda m, name=name: f"{name}: {m}")
    # The next step runs the compiled code as it is: nothing the first call changed (such as a cache of
    # the frozen tower's q/k/v weights) may trigger a recompile, per layer or at all. On a 12-layer tower
    # a recompile per layer would pass Dynamo's limit (8) and leave the last layers uncompiled.
    with torch._dynamo.config.patch(error_on_recompile=True):  # both: their BatchNorm statistics move alike
        losses_and_grads((eager, compiled), clips)
    with eager.deployed(), compiled.deployed(), torch.inference_mode():
        torch.testing.assert_close(eager(clips[0]), compiled(clips[0]), rtol=1e-4, atol=1e-5)
