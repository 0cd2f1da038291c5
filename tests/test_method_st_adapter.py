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


def test_the_adapter_output_lands_on_the_patch_tokens_it_was_computed_from():
    """ST-Adapter: ``x + up(DWConv3D(down(x)))`` on the patch tokens, each at its own (time, row, column); the class
    token passes unchanged. Computed here by hand with random (trained-looking) weights."""
    import torch.nn.functional as F

    from methods.st_adapter import STAdapter

    torch.manual_seed(0)
    adapter = STAdapter(16, 4, (3, 1, 1), (2, 3))
    for p in adapter.parameters():
        torch.nn.init.normal_(p, std=0.3)
    b, t = 2, 4
    x = torch.randn(b * t, 1 + 6, 16)
    with torch.no_grad():
        out = adapter(x, t)
        z = adapter.down(x[:, 1:]).view(b, t, 2, 3, 4).permute(0, 4, 1, 2, 3)  # [B, C, T, h, w]
        z = F.conv3d(z, adapter.conv.weight, adapter.conv.bias, padding=(1, 0, 0), groups=4)
        z = z.permute(0, 2, 3, 4, 1).reshape(b * t, 6, 4)
        torch.testing.assert_close(out[:, 1:], x[:, 1:] + adapter.up(z), rtol=1e-5, atol=1e-6)
    assert torch.equal(out[:, 0], x[:, 0])
