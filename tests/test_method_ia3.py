"""ia3: l_k ⊙ K, l_v ⊙ V and W_2 (l_ff ⊙ gelu(...)) in every block, folded into the frozen weights when deployed."""

import pytest
import torch
from torch import nn

from tests.conftest import tiny_config, tiny_model
from tests.method_counts import method_params
from tests.operators import operator_trace


@pytest.mark.parametrize("targets", [["k", "v", "ff"], ["k", "v"], ["ff"]])
def test_trainable_count(targets):
    model = tiny_model("ia3", overrides={"targets": targets})
    vision = model.encoder.clip
    d = vision.width
    per_block = {"k": d, "v": d, "ff": 4 * d}  # the MLP's inner width is 4d
    assert method_params(model) == vision.layers * sum(per_block[t] for t in targets)


def test_each_layer_is_the_papers_rescaling_and_its_fold():
    from methods.ia3 import ScaledInput, ScaledOutput

    torch.manual_seed(0)
    x, h = torch.randn(3, 6), torch.randn(3, 20)
    out, inp = ScaledOutput(nn.Linear(6, 5)), ScaledInput(nn.Linear(20, 6))
    assert torch.equal(out.ia3_scale, torch.ones(5)) and torch.equal(inp.ia3_scale, torch.ones(20))  # CLIP at start
    with torch.no_grad():
        out.ia3_scale.normal_(1.0, 0.5)
        inp.ia3_scale.normal_(1.0, 0.5)
        torch.testing.assert_close(out(x), out.inner(x) * out.ia3_scale)  # l ⊙ (W x + b): keys, values
        torch.testing.assert_close(inp(h), inp.inner(h * inp.ia3_scale))  # W (l ⊙ h) + b: the MLP's inner activation
        w, b = out.inner.weight * out.ia3_scale[:, None], out.inner.bias * out.ia3_scale  # rows and bias
        torch.testing.assert_close(out(x), x @ w.T + b, rtol=1e-5, atol=1e-5)
        w = inp.inner.weight * inp.ia3_scale[None, :]  # columns; bias unchanged
        torch.testing.assert_close(inp(h), h @ w.T + inp.inner.bias, rtol=1e-5, atol=1e-5)


def test_deployment_form_folds_scales_far_from_one_and_restores_the_weights(clips):
    """The matrix deploys after two small steps (scales within ~1e-3 of one) on a random CLIP whose attention and
    LayerNorm biases are all zero; here scales of N(1, 0.3) and biases of N(0, 0.3) make a fold into the wrong
    rows, columns or bias show."""
    model = tiny_model("ia3").eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "ia3_" in n:
                p.normal_(1.0, 0.3)
            elif n.startswith("encoder.") and n.endswith(".bias"):
                p.normal_(0.0, 0.3)
        reference = model(clips[0])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with model.deployed(), torch.inference_mode():
        assert not [n for n, _ in model.named_parameters() if "ia3_" in n]  # every layer folded and replaced
        torch.testing.assert_close(model(clips[0]), reference, rtol=1e-4, atol=1e-4)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_deployed_ia3_dispatches_exactly_the_frozen_models_operators(clips):
    frozen, ia3 = tiny_model("frozen"), tiny_model("ia3")
    traces = []
    for model in (frozen, ia3):
        with model.deployed():
            traces.append(operator_trace(lambda m=model: m(clips[0])))
    assert traces[0] == traces[1]


def test_targets_are_a_set_in_one_order_and_unknown_ones_are_refused():
    from vtfpar.errors import UserError

    cfg = tiny_config("ia3", sets=['methods.ia3.targets=["ff", "k", "k"]'])
    assert cfg.method.targets == ["k", "ff"]
    assert cfg.run_id() == tiny_config("ia3", sets=['methods.ia3.targets=["k", "ff"]']).run_id()
    for targets in ('["q"]', "[]"):
        with pytest.raises(UserError, match=r"ia3: unknown target\(s\)"):
            tiny_config("ia3", sets=[f"methods.ia3.targets={targets}"])


def test_a_small_move_of_a_scale_is_seen_under_bf16_autocast():
    """1.002 is 1 in bf16: a scale cast to the activations' dtype would hide the first steps of training."""
    from methods.ia3 import ScaledInput, ScaledOutput

    torch.manual_seed(0)
    for layer, dtype in ((ScaledOutput(nn.Linear(64, 64)), torch.float32), (ScaledInput(nn.Linear(64, 64)),
                                                                            torch.bfloat16)):  # a GELU's output
        x = torch.randn(16, 64, dtype=dtype)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            start = layer(x)
            layer.ia3_scale.fill_(1.002)
            moved = layer(x)
        assert start.dtype == moved.dtype == torch.bfloat16
        assert not torch.equal(start, moved)
