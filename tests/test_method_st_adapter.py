"""st_adapter: down-projection, depth-wise 3D convolution over (time, h, w), up-projection before attention."""

import pytest
import torch

from tests.conftest import tiny_config, tiny_model
from tests.method_counts import method_params


@pytest.mark.parametrize("position,count", [("attn", 1), ("both", 2)])
def test_trainable_count(position, count):
    model = tiny_model("st_adapter", overrides={"position": position})
    vision, m = model.encoder.clip, tiny_config("st_adapter").method
    d, c, k = vision.width, m.bottleneck, m.kernel
    one = d * c + c + c * (k[0] * k[1] * k[2] + 1) + c * d + d
    assert method_params(model) == vision.layers * count * one


def _frame_tokens(model, clips):
    """CLIP's final tokens per frame [B,T,N,D] of the adapted tower."""
    b, t = clips.shape[:2]
    for block in model.encoder.clip.blocks:
        block.frames = t
    tokens, _ = model.encoder.clip(clips.flatten(0, 1))
    return tokens.view(b, t, *tokens.shape[1:])


@pytest.mark.parametrize("kernel,mixes", [([3, 1, 1], True), ([1, 3, 3], False)])
def test_mixes_neighbouring_frames_of_the_same_clip_only(kernel, mixes, clips):
    model = tiny_model("st_adapter", overrides={"kernel": kernel}).eval()
    with torch.no_grad():
        for p in model.encoder.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
        frames = clips[0][:2]
        before = _frame_tokens(model, frames)
        changed = frames.clone()
        changed[0, 0] += 1.0  # clip 0, frame 0
        after = _frame_tokens(model, changed)
    assert (after[0, 0] - before[0, 0]).abs().max() > 1e-3
    assert bool((after[0, 1] - before[0, 1]).abs().max() > 1e-3) is mixes  # the next frame sees it via k_t = 3
    assert torch.equal(after[1], before[1])  # the other clip never does


def test_starts_as_clip(clips):
    frozen, model = tiny_model("frozen").eval(), tiny_model("st_adapter", overrides={"position": "both"}).eval()
    with torch.no_grad():
        assert torch.equal(model.encoder(clips[0]), frozen.encoder(clips[0]))
