"""ssf: gamma ⊙ y + beta after every linear layer, LayerNorm and the patch embedding, merged when deployed."""

import torch
from torch import nn

from tests.conftest import tiny_model
from tests.method_counts import method_params
from tests.operators import operator_trace


def test_trainable_count():
    model = tiny_model("ssf")
    vision = model.encoder.clip
    d = vision.width
    # ln_1 2d, q/k/v 6d, out 2d, ln_2 2d, fc1 8d, fc2 2d per block; conv1, ln_pre, ln_post 6d
    assert method_params(model) == vision.layers * 22 * d + 6 * d


def test_each_layer_is_its_frozen_output_scaled_and_shifted():
    from methods.ssf import ScaleShift

    torch.manual_seed(0)
    for inner, x in ((nn.Linear(6, 5), torch.randn(3, 6)), (nn.LayerNorm(5), torch.randn(3, 5)),
                     (nn.Conv2d(3, 5, 2, bias=False), torch.randn(2, 3, 4, 4))):
        layer = ScaleShift(inner, init_std=0.5)
        view = (-1, 1, 1) if isinstance(inner, nn.Conv2d) else (-1,)
        expected = inner(x) * layer.ssf_scale.view(view) + layer.ssf_shift.view(view)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_deployed_ssf_dispatches_exactly_the_frozen_models_operators(clips):
    frozen, ssf = tiny_model("frozen"), tiny_model("ssf")
    traces = []
    for model in (frozen, ssf):
        with model.deployed():
            traces.append(operator_trace(lambda m=model: m(clips[0])))
    assert traces[0] == traces[1]
