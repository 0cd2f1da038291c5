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
