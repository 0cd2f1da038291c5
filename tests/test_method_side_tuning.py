"""VTFPAR++ side tuning: frozen CLIP, no graph through it, text encoded once, temporal order matters."""

import copy

import pytest
import torch

from tests.conftest import clip_blocks_keep_a_graph, losses_and_grads, tiny_model
from vtfpar.loss import WeightedBCE


def _steps(model, clips, n=3):
    frames, labels = clips
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    loss_fn = WeightedBCE(labels.mean(0))
    model.train()
    for _ in range(n):
        opt.zero_grad()
        loss_fn(model(frames), labels).backward()
        opt.step()
    return params


def test_clip_runs_without_an_autograd_graph(clips):
    seen = clip_blocks_keep_a_graph(tiny_model("side_tuning"), clips[0])
    assert seen and not any(seen)


def test_text_encoder_runs_once_per_model(clips):
    model = tiny_model("side_tuning")
    _steps(model, clips, n=3)
    model.eval()
    with torch.no_grad():
        model(clips[0])
    assert model.text.encode_calls == 1


def test_temporal_network_sees_frame_order_spatial_does_not():
    torch.manual_seed(0)
    model = tiny_model("side_tuning").eval()
    enc = model.encoder
    frames = torch.randn(2, 4, 3, 64, 64)
    reversed_frames = frames.flip(1)
    with torch.no_grad():
        taps = enc.tap_features(frames.flatten(0, 1))
        taps_r = enc.tap_features(reversed_frames.flatten(0, 1))
        s = enc.side_spatial(frames.flatten(0, 1), taps).reshape(2, 4, 65, -1).mean(1)
        s_r = enc.side_spatial(reversed_frames.flatten(0, 1), taps_r).reshape(2, 4, 65, -1).mean(1)
        t = enc.side_temporal(taps.view(taps.shape[0], 2, 4, 64, -1))
        t_r = enc.side_temporal(taps_r.view(taps.shape[0], 2, 4, 64, -1))
    torch.testing.assert_close(s, s_r, rtol=1e-4, atol=1e-5)
    assert (t - t_r).abs().max() > 1e-3


def test_the_head_reads_each_attribute_from_its_own_token():
    """Changing attribute j's output token changes logit j only (the head's wiring; that the fusion returns each
    attribute's own text token is ``test_methods``')."""
    model = tiny_model("side_tuning").eval()
    tokens = torch.randn(2, 23, model.head.weight.shape[1])
    base = model.head(tokens)
    tokens2 = tokens.clone()
    tokens2[:, 5] += 1.0
    diff = (model.head(tokens2) - base).abs()[0]
    assert diff[5] > 0 and diff[torch.arange(23) != 5].max() == 0


def test_tap_fusion_equals_layernorm_then_projection_with_gradients():
    """LN(F) w with the affine folded into the projection (eq. 2-3), all taps in one product, is the
    plain composition per tap, in training and in deployment form."""
    from vtfpar.side import TapFusions, normalize_taps

    torch.manual_seed(0)
    fuse = TapFusions(2, 48, 16)
    with torch.no_grad():  # non-trivial affine parameters, so the fold is really exercised
        fuse.norm_weight.uniform_(0.5, 1.5)
        fuse.norm_bias.normal_(0, 0.3)
    refs = []
    for s in range(2):
        norm, proj = torch.nn.LayerNorm(48), torch.nn.Linear(48, 16)
        with torch.no_grad():
            norm.weight.copy_(fuse.norm_weight[s, 0]), norm.bias.copy_(fuse.norm_bias[s, 0])
            proj.weight.copy_(fuse.proj_weight[s]), proj.bias.copy_(fuse.proj_bias[s, 0])
        refs.append((norm, proj))
    tokens = torch.randn(2, 3, 7, 48) * 2 + 1
    out = fuse(normalize_taps(tokens))
    expected = torch.stack([proj(norm(tokens[s])) for s, (norm, proj) in enumerate(refs)])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    for s, (norm, proj) in enumerate(refs):
        for mine, ref in ((fuse.norm_weight, norm.weight), (fuse.norm_bias, norm.bias),
                          (fuse.proj_weight, proj.weight), (fuse.proj_bias, proj.bias)):
            torch.testing.assert_close(mine.grad[s].view_as(ref.grad), ref.grad, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        fuse.deploy()
        torch.testing.assert_close(fuse(normalize_taps(tokens)), expected, rtol=1e-5, atol=1e-5)
        fuse.undeploy()


def test_side_block_is_timms_vit_block():
    """Same parameter names, same initialisation from the same seed, same outputs and gradients (in float64)."""
    from timm.models.vision_transformer import Block

    from vtfpar.side import SideBlock

    torch.manual_seed(3)
    ours = SideBlock(32, 4)
    torch.manual_seed(3)
    timm_block = Block(32, 4, qkv_bias=True)
    ref = {k: v for k, v in timm_block.state_dict().items()}
    assert ours.state_dict().keys() == ref.keys()
    for k, v in ours.state_dict().items():
        assert torch.equal(v, ref[k]), k
    ours.double(), timm_block.double()
    x = torch.randn(3, 9, 32, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, out_ref = ours(x), timm_block(x_ref)
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(out)
    out.backward(grad)
    out_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-10)
    for (name, p), q in zip(ours.named_parameters(), timm_block.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-10, msg=name)


def test_weights_saved_with_one_fusion_module_per_tap_or_without_the_broadcast_axis_still_load():
    from vtfpar.side import TapFusions

    fuse = TapFusions(3, 8, 4)
    keys = (("norm_weight", "norm.weight"), ("norm_bias", "norm.bias"), ("proj_weight", "proj.weight"),
            ("proj_bias", "proj.bias"))
    per_tap = {f"{s}.{name}": getattr(fuse, key)[s].detach().squeeze(0).clone() for s in range(3) for key, name in keys}
    flat = {key: getattr(fuse, key).detach().squeeze(1).clone() for key, _ in keys}
    for old in (per_tap, flat):
        fresh = TapFusions(3, 8, 4)
        fresh.load_state_dict(old)
        for k, v in fuse.state_dict().items():
            assert torch.equal(fresh.state_dict()[k], v), k


def test_fusion_backward_is_autograds_gradient_in_float64():
    """The hand-written backward of the folded fusion (training form) is the derivative of its forward."""
    from vtfpar.side import TapFusions

    torch.manual_seed(0)
    fuse = TapFusions(2, 6, 3).double()
    with torch.no_grad():
        fuse.norm_weight.uniform_(0.5, 1.5)
        fuse.norm_bias.normal_(0, 0.3)
    taps = torch.randn(2, 2, 3, 6, dtype=torch.float64)
    params = tuple(fuse.parameters())

    def run(*values):
        return torch.func.functional_call(fuse, dict(zip([n for n, _ in fuse.named_parameters()], values, strict=True)),
                                          (taps,))

    assert torch.autograd.gradcheck(run, params)


def test_side_network_linear_layers_give_autograds_gradients_bit_for_bit():
    """``FlatLinear``'s shorter backward calls the same products as autograd's ``F.linear`` (fp32 and bf16 autocast)."""
    from vtfpar.side import FlatLinear

    torch.manual_seed(0)
    ref = torch.nn.Linear(24, 40)
    ours = FlatLinear(24, 40)
    ours.load_state_dict(ref.state_dict())
    x, grad = torch.randn(30, 24), torch.randn(30, 40)
    for amp in (False, True):
        inputs = [x.clone().requires_grad_() for _ in range(2)]
        for layer in (ref, ours):
            layer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            outs = [layer(v) for layer, v in zip((ref, ours), inputs, strict=True)]
        for out in outs:
            (out.float() * grad).sum().backward()
        assert outs[0].dtype == outs[1].dtype and torch.equal(outs[0], outs[1])
        assert torch.equal(inputs[0].grad, inputs[1].grad)
        for a, b in zip(ref.parameters(), ours.parameters(), strict=True):
            assert a.grad.dtype == b.grad.dtype == torch.float32 and torch.equal(a.grad, b.grad)
    x = torch.randn(4, 24, requires_grad=True)
    (first,) = torch.autograd.grad(ours(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):  # first derivatives only: an error, never a wrong second derivative
        first.sum().backward()


def test_attention_head_split_gives_autograds_gradient_bit_for_bit_with_one_copy():
    """The q/k/v split's backward writes the gradients once into the flat layout: the same bits as autograd's
    backward of ``view/permute/unbind`` (fp32, bf16), as many operators, and one copy instead of two."""
    import torch.nn.functional as F

    from tests.operators import dispatched
    from vtfpar.side import _split_heads, _SplitHeadsFunction

    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        qkv = torch.randn(3 * 7, 3 * 12, dtype=dtype)
        inputs = [qkv.clone().requires_grad_() for _ in range(2)]
        grads, ops = [], []
        for split, x in zip((_split_heads, _SplitHeadsFunction.apply), inputs, strict=True):
            def step(split=split, x=x):
                q, k, v = split(x, 3, 2)
                assert q.shape == (3, 2, 7, 6)
                out = F.scaled_dot_product_attention(q, k * 2, v.square())
                (out.float() * torch.linspace(-1, 1, 6)).sum().backward()

            ops.append(dispatched(step))
            grads.append(x.grad)
        assert torch.equal(grads[0], grads[1]) and grads[1].is_contiguous()
        assert len(ops[0]) == len(ops[1])
        copies = [sum(op.startswith(("aten.clone", "aten.stack", "aten.cat", "aten.copy_")) for op in o) for o in ops]
        assert copies == [2, 1], (copies, ops)


def test_recompute_gives_the_same_loss_and_gradients(clips):
    plain = tiny_model("side_tuning")
    recomputed = copy.deepcopy(plain)
    recomputed.encoder.side_spatial.recompute = recomputed.encoder.side_temporal.recompute = True
    losses, grads = losses_and_grads((plain, recomputed), clips)
    torch.testing.assert_close(losses[0], losses[1])
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_trainable_count():
    """Spatial: patch embedding, class token, position embedding, one fusion per tap, depth blocks;
    temporal: class token, position embedding, one fusion per tap, one block per frame."""
    from tests.conftest import tiny_config
    from tests.method_counts import block_params, method_params

    model = tiny_model("side_tuning")
    vision, m = model.encoder.clip, tiny_config("side_tuning").method
    d, n, w, p = vision.width, vision.num_tokens, m.width, vision.patch_size[0]
    fuse = len(model.encoder.side_spatial.taps) * (2 * d + d * w + w)
    spatial = 3 * p * p * w + w + w + n * w + fuse + m.depth * block_params(w)
    temporal = w + n * w + fuse + model.encoder.side_temporal.frames * block_params(w)
    assert method_params(model) == spatial + temporal


def test_side_networks_compute_eq_2_to_4_step_by_step(clips):
    """The flat, batched side networks equal a plain reading of eq. 2-4 (per block, per stream), with gradients; in
    float64, so that float32 rounding, which differs by CPU kernel and by matrix shape, is not what is compared."""
    import torch.nn.functional as F

    model = tiny_model("side_tuning").double()
    enc, frames = model.encoder, clips[0][:2].double()
    b, t = frames.shape[:2]
    flat = frames.flatten(0, 1)
    taps = enc.tap_features(flat).double()  # normalised in float32 (normalize_taps): both sides start from these
    sp, tp = enc.side_spatial, enc.side_temporal

    def spatial():  # eq. 2: S^j <- LN(F^i) w_s + S^j on the patch tokens, position embedding after each block
        x = sp.patch_embed(flat).flatten(2).transpose(1, 2)
        x = torch.cat([sp.cls_token.expand(len(x), -1, -1), x], 1) + sp.pos_embed
        injected = sp.fuse(taps)
        for j, block in enumerate(sp.blocks):
            if j < len(sp.taps):
                x = x + F.pad(injected[j], (0, 0, 1, 0))
            x = block(x) + sp.pos_embed
        return x

    def temporal():  # eq. 3-4: per stream i, T_{k+1} = L_k(LN(F_k^i) w_t + T_k); streams averaged
        injected = tp.fuse(taps)
        injected = injected.view(len(tp.taps), b, t, *injected.shape[2:])
        streams = []
        for i in range(len(tp.taps)):
            state = (F.pad(tp.cls_token, (0, 0, 0, injected.shape[3])) + tp.pos_embed).expand(b, -1, -1)
            for k, block in enumerate(tp.blocks):
                state = block(state + F.pad(injected[i, :, k], (0, 0, 1, 0)))
            streams.append(state)
        return torch.stack(streams).mean(0)

    for network, reference, args in ((sp, spatial, (flat, taps)), (tp, temporal, (taps.view(len(tp.taps), b, t,
                                                                                             *taps.shape[2:]),))):
        params = [p for p in network.parameters()]
        ours, ref = network(*args), reference()
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
        grad = torch.randn_like(ours)
        mine = torch.autograd.grad(ours, params, grad)
        theirs = torch.autograd.grad(ref, params, grad)
        for (name, _), a, r in zip(network.named_parameters(), mine, theirs, strict=True):
            torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9, msg=name)


def test_the_side_networks_read_clips_patch_tokens_at_the_taps_and_the_spatial_one_averages_frames(clips):
    """What CLIP hands the side networks, read off CLIP's own modules with hooks: at tap 0 the embeddings after
    ``ln_pre``, at tap k the output of block k (counting from 1), class token left out, each layer-normalised
    without affine (the affine part is the fusion's). The encoder's output is the spatial network's tokens averaged
    over the T frames plus the temporal network's (eq. 5's video tokens)."""
    import torch.nn.functional as F

    model = tiny_model("side_tuning", overrides={"taps": [0, 2, 3]}).eval()
    enc, frames = model.encoder, clips[0][:2]
    b, t = frames.shape[:2]
    flat = frames.flatten(0, 1)
    seen = {}
    vision = enc.clip.visual
    hooks = [vision.ln_pre.register_forward_hook(lambda m, args, out: seen.__setitem__(0, out))]
    hooks += [block.register_forward_hook(lambda m, args, out, k=k: seen.__setitem__(k, out))
              for k, block in enumerate(enc.clip.blocks, start=1)]
    with torch.no_grad():
        taps = enc.tap_features(flat)
        for h in hooks:
            h.remove()
        assert sorted(seen) == [0, 1, 2, 3]  # the blocks after the last tap do not run
        expected = torch.stack([F.layer_norm(seen[k][:, 1:], seen[k].shape[-1:]) for k in (0, 2, 3)])
        torch.testing.assert_close(taps, expected, rtol=0, atol=1e-6)
        spatial = enc.side_spatial(flat, taps)
        temporal = enc.side_temporal(taps.view(taps.shape[0], b, t, *taps.shape[2:]))
        per_frame = spatial.view(b, t, *spatial.shape[1:])
        torch.testing.assert_close(enc(frames), per_frame.mean(1) + temporal, rtol=0, atol=1e-6)
    assert not torch.allclose(per_frame[:, 0], per_frame[:, -1], atol=1e-3)  # the frames' tokens differ: a mean


def test_fusion_takes_autograds_path_for_taps_with_a_gradient_and_fp32_taps_under_autocast():
    from vtfpar.side import TapFusions

    torch.manual_seed(0)
    fuse = TapFusions(2, 6, 3)
    taps = torch.randn(2, 2, 3, 6, requires_grad=True)
    fuse(taps).sum().backward()
    assert taps.grad is not None and taps.grad.abs().sum() > 0
    grads = []
    for use_function in (True, False):  # fp32 taps under bf16 autocast: the written backward, then autograd's
        fuse.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fuse(taps.detach().requires_grad_(not use_function))
        out.float().sum().backward()
        grads.append([p.grad for p in fuse.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def test_resumed_adam_state_saved_without_the_broadcast_axis_steps_like_the_old_layout():
    """Checkpoints from before TapFusions' [S,1,D] parameters: the moments are reshaped, and the step is the same."""
    from benchmark.step import fit_state_shapes

    torch.manual_seed(0)
    old = torch.nn.Parameter(torch.randn(3, 8))
    new = torch.nn.Parameter(old.detach().clone().view(3, 1, 8))
    old_opt, new_opt = torch.optim.Adam([old], lr=0.1), torch.optim.Adam([new], lr=0.1)
    old.grad = torch.randn(3, 8)
    old_opt.step()
    with torch.no_grad():
        new.copy_(old.view(3, 1, 8))
    new_opt.load_state_dict(copy.deepcopy(old_opt.state_dict()))  # as read from a checkpoint file
    fit_state_shapes(new_opt)
    grad = torch.randn(3, 8)
    old.grad, new.grad = grad, grad.view(3, 1, 8).clone()
    old_opt.step()
    new_opt.step()
    assert torch.equal(new.detach().view(3, 8), old.detach())
    other = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3, 9))])
    other.load_state_dict(old_opt.state_dict())
    with pytest.raises(ValueError, match="shape"):
        fit_state_shapes(other)


def test_taps_written_out_as_the_backbones_default_are_the_default_run():
    """[0, 3, 6, 9, 11] on ViT-B/16 (every layer of clip-tiny's four) builds the model the default [] builds: one
    experiment, so one run id and one row of a report; any other list is an experiment of its own."""
    from benchmark.config import load_config
    from vtfpar.backbone import vision_layers

    def config(backbone, taps=None):
        return load_config(None, {"run": {"method": "side_tuning"}, "model": {"backbone": backbone}},
                           [f"methods.side_tuning.taps={taps}"] if taps else None)

    assert vision_layers("clip-tiny") == 4 and vision_layers("ViT-B-16") == 12 and vision_layers("RN50") is None
    for backbone, default in (("clip-tiny", "[0, 1, 2, 3]"), ("ViT-B-16", "[0, 3, 6, 9, 11]")):
        written = config(backbone, default)
        assert written.method.taps == [] and written.run_id() == config(backbone).run_id()
    other = config("clip-tiny", "[0, 2]")
    assert other.method.taps == [0, 2] and other.run_id() != config("clip-tiny").run_id()
    assert config("ViT-B-16", "[0, 1, 2, 3]").method.taps == [0, 1, 2, 3]  # clip-tiny's default is not ViT-B/16's
