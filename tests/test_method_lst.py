"""lst: ladder side network of width d/r, gates, pruned initialisation, no gradient through CLIP."""

import torch

from methods.lst import prune_into, residual_channels
from tests.conftest import clip_blocks_keep_a_graph, tiny_model
from tests.method_counts import block_params, method_params
from vtfpar.side import SideBlock


def test_trainable_count():
    model = tiny_model("lst", overrides={"reduction": 2})
    vision = model.encoder.clip
    d, L, w = vision.width, vision.layers, vision.width // 2
    assert method_params(model) == L * block_params(w) + (L + 1) * (d * w + w) + L + 2 * w


def test_pruning_with_r1_keeps_the_clip_block():
    """Pruning nothing copies the block: the side block computes CLIP's block (up to its LN eps). Every weight,
    norm and bias is drawn away from its initial value first, so that one not copied shows."""
    model = tiny_model("frozen")
    vision = model.encoder.clip
    keep = residual_channels(vision, vision.width)
    assert torch.equal(keep, torch.arange(vision.width))
    block = vision.blocks[1]
    torch.manual_seed(1)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.2 * torch.randn_like(p))
    side = SideBlock(vision.width, vision.heads)
    prune_into(side, block, keep, vision.heads, 1)
    x = torch.randn(3, 7, vision.width)
    with torch.no_grad():
        torch.testing.assert_close(side(x), block(x), rtol=1e-4, atol=1e-4)


def test_pruning_keeps_the_largest_units_and_channels():
    """A hidden unit past the first k made dominant is kept, a dead one is dropped; a residual channel that every
    block reads and writes strongly is kept, one that no block reads or writes is dropped."""
    model = tiny_model("frozen")
    vision = model.encoder.clip
    block = vision.blocks[0]
    hidden, k = block.mlp.c_fc.weight.shape[0], vision.width // 4
    strong, dead = hidden - 3, 7  # the unit past the first hidden // 4, and one among them
    with torch.no_grad():
        block.mlp.c_fc.weight[strong].mul_(100.0)
        block.mlp.c_fc.weight[dead].zero_()
        for b in vision.blocks:
            for layer in (b.attn.q_proj, b.attn.k_proj, b.attn.v_proj, b.mlp.c_fc):
                layer.weight[:, vision.width - 1].mul_(100.0)
                layer.weight[:, 0].zero_()
            for layer in (b.attn.out_proj, b.mlp.c_proj):
                layer.weight[vision.width - 1].mul_(100.0)
                layer.weight[0].zero_()
    keep = residual_channels(vision, k)
    assert vision.width - 1 in keep and 0 not in keep and len(keep) == k
    side = SideBlock(k, vision.heads)
    prune_into(side, block, keep, vision.heads, 4)
    rows = side.mlp.fc1.weight
    assert any(torch.equal(row, block.mlp.c_fc.weight[strong, keep]) for row in rows)
    assert all(row.any() for row in rows)  # the dead unit's row (all zero) is not among them


def test_no_gradient_or_graph_through_clip(clips):
    model = tiny_model("lst")
    seen = clip_blocks_keep_a_graph(model, clips[0])
    assert seen and not any(seen)
    assert model.encoder.lst_side.gate.grad is not None and model.encoder.lst_side.gate.grad.any()


def test_the_gates_start_at_one_half(clips):
    model = tiny_model("lst")
    mu = torch.sigmoid(model.encoder.lst_side.gate / 0.1)
    assert torch.equal(mu, torch.full_like(mu, 0.5))  # alpha = 0 at the start


def test_the_side_stream_follows_the_ladder_recursion_with_the_gates_temperature():
    """``s_0 = W_0 h_0 + b_0``, ``s_i = SideBlock_i(mu_i s_{i-1} + (1 - mu_i)(W_i h_i + b_i))``, ``mu_i =
    sigmoid(alpha_i / T)``, ``out = LN(s_L)``, computed by hand with gates away from their start (alpha = 0 gives
    mu = 0.5 whatever T) and T = 0.1."""
    from methods.lst import LadderSide

    torch.manual_seed(0)
    side = LadderSide(16, 3, 8, 2, temperature=0.1).eval()
    with torch.no_grad():
        side.gate.copy_(torch.tensor([0.05, -0.2, 0.3]))
    taps = torch.randn(4, 2, 5, 16)
    with torch.no_grad():
        s = taps[0] @ side.down_weight[0] + side.down_bias[0]
        for i, block in enumerate(side.blocks):
            mu = torch.sigmoid(side.gate[i] / 0.1)
            s = block(mu * s + (1 - mu) * (taps[i + 1] @ side.down_weight[i + 1] + side.down_bias[i + 1]))
        torch.testing.assert_close(side(taps), side.norm(s), rtol=1e-5, atol=1e-5)
