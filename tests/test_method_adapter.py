"""adapter: bottleneck adapters, serial (Houlsby, two per block) or parallel (AdaptFormer, one per block)."""

import pytest
import torch

from tests.conftest import tiny_config, tiny_model
from tests.method_counts import method_params


@pytest.mark.parametrize("variant", ["houlsby", "adaptformer"])
def test_trainable_count(variant):
    model = tiny_model("adapter", overrides={"variant": variant})
    vision, m = model.encoder.clip, tiny_config("adapter").method
    d = vision.width
    one = d * m.bottleneck + m.bottleneck + m.bottleneck * d + d
    assert method_params(model) == vision.layers * one * (2 if variant == "houlsby" else 1)


@pytest.mark.parametrize("variant", ["houlsby", "adaptformer"])
def test_adapter_variants_start_as_identity(variant, clips):
    ref = tiny_model("frozen").eval()
    model = tiny_model("adapter", overrides={"variant": variant, "bottleneck": 8}).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(clips[0]), ref.encoder(clips[0]))


def test_adaptformer_adds_its_scaled_bottleneck_beside_the_frozen_mlp():
    """AdaptFormer (Chen et al. 2022): ``MLP(x) + s * up(act(down(x)))`` with the scale ``s`` of its settings
    (0.1), here with trained-looking (random) adapter weights."""
    from methods.adapter import ParallelMLP

    torch.manual_seed(0)
    model = tiny_model("adapter", overrides={"variant": "adaptformer", "scale": 0.1})
    mlp = model.encoder.clip.blocks[0].mlp
    assert isinstance(mlp, ParallelMLP)
    for p in mlp.adapter_mlp.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 5, mlp.adapter_mlp.down.in_features)
    with torch.no_grad():
        added = mlp(x) - mlp.inner(x)
        torch.testing.assert_close(added, 0.1 * mlp.adapter_mlp(x), rtol=1e-5, atol=1e-6)
    assert added.abs().max() > 1e-3
