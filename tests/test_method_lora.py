"""lora: exact ``W x + (alpha/r) B A x`` through peft on split attention, merged in deployment form."""

import contextlib
from functools import partial

import pytest
import torch

from tests.conftest import tiny_config, tiny_model
from tests.method_counts import method_params
from tests.operators import operator_trace


@pytest.mark.parametrize("targets", [["q", "k", "v", "out"], ["fc1", "fc2"]])
def test_trainable_count(targets):
    model = tiny_model("lora", overrides={"targets": targets})
    vision, m = model.encoder.clip, tiny_config("lora").method
    d = vision.width
    per_layer = {"q": d + d, "k": d + d, "v": d + d, "out": d + d, "fc1": d + 4 * d, "fc2": 4 * d + d}
    assert method_params(model) == vision.layers * m.rank * sum(per_layer[t] for t in targets)


def test_lora_layer_is_exactly_w_plus_scaled_ba_and_merges():
    torch.manual_seed(0)
    model = tiny_model("lora")
    cfg = tiny_config("lora").method
    layer = model.encoder.clip.blocks[1].attn.out_proj
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    with torch.no_grad():
        a.normal_()
        b.normal_()
    x = torch.randn(5, layer.in_features)
    w, bias = layer.base_layer.weight, layer.base_layer.bias
    expected = x @ w.T + bias + (cfg.alpha / cfg.rank) * (x @ a.T @ b.T)
    # float32 rounding of sums of terms as large as the largest output (an output near 0 is a difference of such
    # terms, whose last bits depend on the CPU's kernels): a tolerance relative to that scale
    close = {"rtol": 1e-5, "atol": 1e-5 * float(expected.detach().abs().max())}
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, **close)
        layer.merge()
        torch.testing.assert_close(layer(x), expected, **close)
        torch.testing.assert_close(layer.base_layer(x), expected, **close)
        layer.unmerge()
        torch.testing.assert_close(layer.base_layer(x), x @ w.T + bias, **close)


def test_lora_on_out_proj_alone_trains_and_changes_the_output(clips):
    """The failure mode of LoRA on nn.MultiheadAttention (out_proj never called) cannot happen here."""
    model = tiny_model("lora", overrides={"targets": ["out"]}).eval()
    with torch.no_grad():
        before = model.encoder(clips[0])
        for m in model.modules():
            if hasattr(m, "lora_B"):
                m.lora_B["default"].weight.normal_()
        after = model.encoder(clips[0])
    assert (after - before).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("targets", [["q", "k", "v", "out"], ["fc1", "fc2"]])
def test_merged_lora_dispatches_exactly_the_frozen_models_operators(targets, dtype, clips):
    frozen, lora = tiny_model("frozen"), tiny_model("lora", overrides={"targets": targets})
    autocast = contextlib.nullcontext if dtype is None else partial(torch.autocast, "cpu", dtype=dtype)
    traces = []
    for model in (frozen, lora):
        with model.deployed(dtype), autocast():
            traces.append(operator_trace(lambda m=model: m(clips[0])))
    assert traces[0] == traces[1]
    with torch.no_grad():  # and the training form does more
        assert len(operator_trace(lambda: lora.eval()(clips[0]))) > len(traces[0])


def test_leaving_deployment_form_frees_the_fused_projection_of_the_merged_weights(clips):
    """While merged, q/k/v are plain layers and share one cached [3d, d] projection; once LoRA is back,
    that cache is stale and must not stay alive (it would be a second copy of the weights)."""
    from vtfpar.backbone import SplitAttention

    model = tiny_model("lora")
    attention = [m for m in model.modules() if isinstance(m, SplitAttention)]
    with model.deployed(), torch.no_grad():
        model(clips[0])
        assert all(a._cache is not None for a in attention)
    model.eval()
    with torch.no_grad():
        model(clips[0])
    assert all(a._cache is None for a in attention)
    with pytest.raises(RuntimeError, match="twice"):  # an encoder is folded once; VTFPAR.deployed() nests
        model.encoder.deploy()
        model.encoder.deploy()
    model.encoder.undeploy()
