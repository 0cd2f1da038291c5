"""``train.compile``: torch.compile of the encoder, fusion and head gives the eager model's outputs and
gradients, and the side networks compile as whole graphs (no graph break inside them)."""

from __future__ import annotations

import copy

import torch

from benchmark.task import compile_model
from tests.conftest import losses_and_grads, tiny_model


def _compiling_eagerly(compiled: list):
    """A stand-in for ``compile_model``: train.compile's modules compiled with Dynamo's tracing but without inductor's
    minutes, each model it is given appended to ``compiled``."""

    def compile_eager(model, mode="default"):
        compiled.append(model)
        for module in (model.encoder, model.fusion, model.head):
            module.compile(backend="eager")

    return compile_eager


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
    torch._dynamo.utils.counters.clear()
    losses, grads = losses_and_grads((eager, compiled), clips)
    # compiled indeed: encoder, fusion and head each one graph, lowered by inductor (not run eagerly)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 3, dict(torch._dynamo.utils.counters["stats"])
    assert torch._dynamo.utils.counters["inductor"], "inductor lowered nothing"
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        # atol: an element's fp32 rounding (eager's or inductor's, each about as far from a float64 reference) is
        # relative to the largest terms summed into it, so to the tensor's own scale (head.weight's reaches ~10:
        # both differ from float64 by ~3e-5 there, on an element of 3e-3), not to the element
        scale = max(1.0, grad.abs().max().item())
        torch.testing.assert_close(grad, grads[1][name], rtol=1e-3, atol=2e-5 * scale,
                                   msg=lambda m, name=name: f"{name}: {m}")
    # The next step runs the compiled code as it is: nothing the first call changed (such as a cache of
    # the frozen tower's q/k/v weights) may trigger a recompile, per layer or at all. On a 12-layer tower
    # a recompile per layer would pass Dynamo's limit (8) and leave the last layers uncompiled.
    with torch._dynamo.config.patch(error_on_recompile=True):  # both: their BatchNorm statistics move alike
        losses_and_grads((eager, compiled), clips)
    with eager.deployed(), compiled.deployed(), torch.inference_mode():
        torch.testing.assert_close(eager(clips[0]), compiled(clips[0]), rtol=1e-4, atol=1e-5)



def test_a_compiled_model_is_measured_as_bench_run_measures_it(clips):
    """``bench run`` with ``train.compile`` measures the model after training: fvcore's jit trace must not meet
    Dynamo's code (it refuses it), and FLOPs and operators are the eager model's."""
    from benchmark.measure import measure_model
    from vtfpar.loss import WeightedBCE

    eager = tiny_model("side_tuning", overrides={"depth": 4})
    compiled = copy.deepcopy(eager)
    _compiling_eagerly([])(compiled)  # Dynamo's tracing, as train.compile's, without inductor's minutes
    loss = WeightedBCE(torch.full((clips[1].shape[1],), 0.3))
    measured = [measure_model(m, loss, torch.device("cpu"), "off", 4, 64, 2, 2, warmup=0, iters=1)
                for m in (eager, compiled)]
    assert measured[0]["flops"] == measured[1]["flops"] and measured[0]["flops"]["gflops_per_clip"] > 0
    assert measured[0]["operators"] == measured[1]["operators"]
    assert compiled.encoder._compiled_call_impl is not None  # compiled again afterwards


def test_compiled_perf_rows_each_compile_as_a_run_of_their_own(monkeypatch):
    """``bench perf --compile``: Dynamo's cache is per code object, so every row's encoder shares one; without a
    reset per row the later rows would pass its limit and silently run eagerly (here a limit of 2 entries: one
    row's training and inference)."""
    import benchmark.task
    from benchmark.perf import run_perf, select_rows

    compiled = []
    monkeypatch.setattr(benchmark.task, "compile_model", _compiling_eagerly(compiled))
    with torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True):
        out = run_perf("clip-tiny", "synthetic", 2, 2, torch.device("cpu"), "off", 0, 1,
                       select_rows("frozen,bitfit,lora"), log=lambda *_: None, compiled=True)
    assert list(out["methods"]) == ["frozen", "bitfit", "lora"] and len({id(m) for m in compiled}) == 3


def test_runs_of_a_sweep_in_one_process_each_compile_as_a_run_of_their_own(monkeypatch):
    """``bench sweep`` with ``train.compile``: every run of the grid is prepared in one process; without a reset per
    run the later methods' encoders would pass Dynamo's limit and train (and be measured) eagerly."""
    import benchmark.task
    from tests.conftest import tiny_config

    compiled = []
    monkeypatch.setattr(benchmark.task, "compile_model", _compiling_eagerly(compiled))
    with torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True):
        for method in ("frozen", "bitfit", "lora"):
            p = benchmark.task.prepare(tiny_config(method, compile=True), torch.device("cpu"))
            frames = torch.stack([p.train_set[i][0] for i in range(2)])
            p.model.train()
            p.model(frames).sum().backward()
            with p.model.deployed(), torch.inference_mode():
                p.model(frames)
    assert len({id(m) for m in compiled}) == 3  # each run's model compiled (and each traced within the limit)
