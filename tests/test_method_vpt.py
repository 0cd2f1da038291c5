"""vpt: prompt tokens per layer (deep) or at the input only (shallow)."""

import pytest

from tests.conftest import tiny_config, tiny_model
from tests.method_counts import method_params


@pytest.mark.parametrize("variant", ["deep", "shallow"])
def test_trainable_count(variant):
    model = tiny_model("vpt", overrides={"variant": variant})
    vision, m = model.encoder.clip, tiny_config("vpt").method
    assert method_params(model) == (vision.layers if variant == "deep" else 1) * m.tokens * vision.width
