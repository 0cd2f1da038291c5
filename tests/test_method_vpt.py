"""vpt: prompt tokens per layer (deep) or at the input only (shallow)."""

import pytest

from tests.conftest import tiny_config, tiny_model
from tests.method_counts import method_params


@pytest.mark.parametrize("variant", ["deep", "shallow"])
def test_trainable_count(variant):
    model = tiny_model("vpt", overrides={"variant": variant})
    vision, m = model.encoder.clip, tiny_config("vpt").method
    assert method_params(model) == (vision.layers if variant == "deep" else 1) * m.tokens * vision.width


@pytest.mark.parametrize("variant", ["shallow", "deep"])
def test_prompts_sit_after_the_class_token_and_deep_ones_replace_the_layer_befores(variant, clips):
    """VPT (Jia et al. 2022): every block sees ``[CLS, P, patches]`` of one length; deep VPT puts layer i's own prompts
    ``P_i`` in place of what the layer before made of ``P_{i-1}`` (the sequence does not grow), shallow VPT inserts
    ``P_0`` once before the first block."""
    import torch

    model = tiny_model("vpt", overrides={"variant": variant, "tokens": 3}).eval()
    vision, prompts = model.encoder.clip, model.encoder.before_block.vpt_prompts
    seen = []
    hooks = [block.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
             for block in vision.blocks]
    with torch.no_grad():
        model(clips[0][:1])
    for h in hooks:
        h.remove()
    patches = vision.num_tokens - 1
    assert [x.shape[1] for x in seen] == [1 + 3 + patches] * len(vision.blocks)
    for i, x in enumerate(seen):
        if variant == "deep" or i == 0:
            assert torch.equal(x[0, 1:4], prompts[i if variant == "deep" else 0].to(x.dtype)), i
        else:  # shallow: what the block before made of the prompts, not the prompts again
            assert not torch.equal(x[0, 1:4], prompts[0]), i
