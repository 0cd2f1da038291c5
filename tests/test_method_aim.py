"""aim: temporal attention with the block's frozen weights, spatial and joint adapters, temporal embedding."""

import torch

from tests.conftest import tiny_config, tiny_model
from tests.method_counts import method_params


def test_trainable_count():
    model = tiny_model("aim", frames=4)
    vision, m = model.encoder.clip, tiny_config("aim").method
    d = vision.width
    r = round(m.ratio * d)
    assert method_params(model) == vision.layers * 3 * (2 * d * r + r + d) + 4 * d


def test_starts_as_clip(clips):
    frozen, model = tiny_model("frozen").eval(), tiny_model("aim").eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(clips[0]), frozen.encoder(clips[0]), rtol=0, atol=1e-6)


def test_temporal_attention_reuses_the_frozen_attention_across_frames(clips):
    """The block computes z_T = x + A_T(Attn(LN_1(x)) over each token position's frames) with its own frozen
    attention, then the spatial and joint paths on z_T (eq. 1-3)."""
    model = tiny_model("aim").eval()
    block = model.encoder.clip.blocks[0]
    d = model.encoder.clip.width
    with torch.no_grad():
        for p in block.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
        x = torch.randn(2 * 4, 5, d)
        block.frames = 4
        xt = x.view(2, 4, 5, d).transpose(1, 2).reshape(10, 4, d)  # [clips * positions, frames, d]
        temporal = block.aim_temporal(block.attn(block.ln_1(xt))[0]).view(2, 5, 4, d).transpose(1, 2).reshape(8, 5, d)
        z_t = x + temporal
        a = block.attn(block.ln_1(z_t))[0]
        z_s = z_t + a + block.aim_spatial(a)
        h = block.ln_2(z_s)
        expected = z_s + block.mlp(h) + block.scale * block.aim_joint(h)
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
        assert temporal.abs().max() > 1e-3  # the temporal branch is live once its up-projection is


def test_clip_length_must_match_the_built_one(clips):
    import pytest

    model = tiny_model("aim", frames=4)
    with pytest.raises(ValueError, match="built for 4 frames"):
        model.encoder(clips[0][:, :2])
