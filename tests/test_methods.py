"""One matrix over the method registry: a new method gets every test here for free."""

from __future__ import annotations

import copy

import pytest
import torch

import methods
from benchmark.config import load_config
from tests.conftest import tiny_config, tiny_model
from vtfpar.errors import UserError
from vtfpar.loss import WeightedBCE

ALL = methods.list_methods()
SHARED = ("fusion.", "head.")


def test_registry_is_complete_and_rejects_duplicates():
    assert set(ALL) == {"adapter", "frozen", "full_finetune", "lora", "prompt_tuning", "side_tuning", "vpt"}
    with pytest.raises(ValueError, match="already registered"):
        methods.registry.register_method(methods.get_method("lora"))


def _own(name: str, method: str) -> bool:
    return any(p in name for p in methods.get_method(method).prefixes)


@pytest.mark.parametrize("method", ALL)
def test_only_method_parameters_change_and_all_get_gradients(method, clips):
    model = tiny_model(method)
    frames, labels = clips
    before = copy.deepcopy(model.state_dict())
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith(SHARED) or _own(n, method) for n in trainable), method
    got_grad = dict.fromkeys(trainable, False)
    opt = torch.optim.Adam(trainable.values(), lr=1e-3)
    loss_fn = WeightedBCE(labels.mean(0))
    model.train()
    for _ in range(3):  # zero-initialised B (LoRA) / up (adapters) block the first step's gradient of A / down
        opt.zero_grad()
        loss_fn(model(frames), labels).backward()
        for n, p in trainable.items():
            got_grad[n] |= bool(p.grad is not None and p.grad.abs().sum() > 0)
        opt.step()
    assert [n for n, g in got_grad.items() if not g] == []
    after = model.state_dict()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen
    for n in frozen:
        assert torch.equal(before[n], after[n]), f"{method}: frozen {n} changed"
    changed = {n for n in trainable if not torch.equal(before[n], after[n])}
    assert changed == set(trainable)


def _block(w: int) -> int:
    """A pre-norm Transformer block of width w with a 4w MLP: qkv, proj, fc1, fc2 and two LayerNorms."""
    return 12 * w * w + 13 * w


def _expected_method_params(method: str, model, cfg) -> int:
    vision = model.encoder.clip
    L, d, n = vision.layers, vision.width, vision.num_tokens
    m = cfg.method
    if method == "frozen":
        return 0
    if method == "full_finetune":
        return sum(p.numel() for n, p in vision.named_parameters() if n != "visual.proj")
    if method == "lora":  # layers x targets x r x (d_in + d_out), all targets d x d here
        return L * len(m.targets) * m.rank * (d + d)
    if method == "vpt":
        return (L if m.variant == "deep" else 1) * m.tokens * d
    if method == "adapter":
        one = d * m.bottleneck + m.bottleneck + m.bottleneck * d + d
        return L * one * (2 if m.variant == "houlsby" else 1)
    if method == "prompt_tuning":
        return m.context * model.text.encoder.width + (m.visual_tokens * d)
    if method == "side_tuning":
        w, taps, p = m.width, len(vision_taps(model)), vision.patch_size[0]
        fuse = taps * (2 * d + d * w + w)
        spatial = 3 * p * p * w + w + w + n * w + fuse + m.depth * _block(w)
        temporal = w + n * w + fuse + model.encoder.side_temporal.frames * _block(w)
        return spatial + temporal
    raise AssertionError(f"no formula for {method}: add one")


def vision_taps(model):
    return model.encoder.side_spatial.taps


@pytest.mark.parametrize("method", ALL)
def test_trainable_count_matches_hand_formula(method):
    cfg = tiny_config(method)
    model = tiny_model(method)
    own = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not n.startswith(SHARED))
    assert own == _expected_method_params(method, model, cfg)
    W, M, Dt = cfg.model.fusion_width, 23, model.text.out_dim
    vis = model.encoder.out_dim
    shared = (Dt * W + W) + (0 if vis == W else vis * W + W) + _block(W) + 2 * W + (M * W + M + 2 * M)
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith(SHARED)) == shared


@pytest.mark.parametrize("variant", ["houlsby", "adaptformer"])
def test_adapter_variants_start_as_identity(variant, clips):
    from methods.adapter import AdapterConfig
    from vtfpar.backbone import load_clip
    from vtfpar.data.synthetic import SYNTHETIC_ATTRIBUTES

    torch.manual_seed(0)
    ref = tiny_model("frozen").eval()
    torch.manual_seed(0)
    cfg = tiny_config("adapter")
    model = methods.build_model(load_clip("clip-tiny", "none"), "clip-tiny", SYNTHETIC_ATTRIBUTES, "adapter",
                                AdapterConfig(variant=variant, bottleneck=8), 4, cfg.model.fusion_width,
                                cfg.model.fusion_heads).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(clips[0]), ref.encoder(clips[0]))


def test_lora_layer_is_exactly_w_plus_scaled_ba_and_merges():
    torch.manual_seed(0)
    model = tiny_model("lora")
    cfg = tiny_config("lora").method
    layer = model.encoder.clip.blocks[1].attn.out_proj
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    with torch.no_grad():
        a.normal_()
        b.normal_()
    x = torch.randn(5, layer.in_features)
    w, bias = layer.base_layer.weight, layer.base_layer.bias
    expected = x @ w.T + bias + (cfg.alpha / cfg.rank) * (x @ a.T @ b.T)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        layer.merge()
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.base_layer(x), expected, rtol=1e-5, atol=1e-5)
        layer.unmerge()
        torch.testing.assert_close(layer.base_layer(x), x @ w.T + bias, rtol=1e-5, atol=1e-5)


def test_lora_on_out_proj_alone_trains_and_changes_the_output(clips):
    """The failure mode of LoRA on nn.MultiheadAttention (out_proj never called) cannot happen here."""
    torch.manual_seed(0)
    cfg = tiny_config("lora")
    from methods.lora import LoraMethodConfig
    from vtfpar.backbone import load_clip
    from vtfpar.data.synthetic import SYNTHETIC_ATTRIBUTES

    model = methods.build_model(load_clip("clip-tiny", "none"), "clip-tiny", SYNTHETIC_ATTRIBUTES, "lora",
                                LoraMethodConfig(targets=["out"]), 4, cfg.model.fusion_width,
                                cfg.model.fusion_heads).eval()
    with torch.no_grad():
        before = model.encoder(clips[0])
        for m in model.modules():
            if hasattr(m, "lora_B"):
                m.lora_B["default"].weight.normal_()
        after = model.encoder(clips[0])
    assert (after - before).abs().max() > 1e-3


@pytest.mark.parametrize("setting,fragment", [
    ("methods.lora.rank=0", "lora: rank must be >= 1"),
    ("methods.lora.targets=['q', 'gate']", "lora: unknown target module(s) ['gate']"),
    ("methods.vpt.tokens=0", "vpt: tokens must be >= 1"),
    ("methods.vpt.variant='middle'", "vpt: unknown variant 'middle'"),
    ("methods.adapter.variant='lora'", "adapter: unknown variant 'lora'"),
    ("methods.prompt_tuning.context=0", "prompt_tuning: context must be >= 1"),
])
def test_invalid_method_settings(setting, fragment):
    method = setting.split(".")[1]
    with pytest.raises(UserError) as err:
        load_config(None, {"run": {"method": method}}, [setting])
    assert fragment in str(err.value)


def test_prompt_context_too_long_for_the_text_encoder():
    cfg = tiny_config("prompt_tuning")
    cfg.method.context = 30
    from vtfpar.backbone import load_clip
    from vtfpar.data.synthetic import SYNTHETIC_ATTRIBUTES

    with pytest.raises(UserError, match="lower methods.prompt_tuning.context"):
        methods.build_model(load_clip("clip-tiny", "none"), "clip-tiny", SYNTHETIC_ATTRIBUTES, "prompt_tuning",
                            cfg.method, 4, 64, 4)


def test_vit_b16_parameter_counts(capsys):
    """Counts on the paper's backbone (random weights, nothing downloaded), printed for the docs."""
    from vtfpar.backbone import load_clip
    from vtfpar.data.synthetic import SYNTHETIC_ATTRIBUTES

    counts = {}
    for method in ALL:
        cfg = load_config(None, {"run": {"method": method, "dataset": "mars"}})
        model = methods.build_model(load_clip("ViT-B-16", "none"), "ViT-B-16", SYNTHETIC_ATTRIBUTES, method,
                                    cfg.method, 6)
        counts[method] = {k: sum(p.numel() for n, p in model.named_parameters()
                                 if p.requires_grad and n.startswith(k)) for k in ("encoder.", "text.", "")}
        del model
    with capsys.disabled():
        print("\nViT-B/16 trainable parameters (method part / all):")
        for m, c in counts.items():
            print(f"  {m:14s} {c['encoder.'] + c['text.']:>12,d} {c['']:>12,d}")
    # The paper's side networks: spatial ~6.7 M (PAPER.md, from the official code); the full image tower 85.8 M.
    side = methods.build_model(load_clip("ViT-B-16", "none"), "ViT-B-16", SYNTHETIC_ATTRIBUTES, "side_tuning",
                               load_config(None, {"run": {"dataset": "mars"}}).method, 6)
    spatial = sum(p.numel() for p in side.encoder.side_spatial.parameters())
    assert abs(spatial - 6.7e6) / 6.7e6 < 0.01
    assert abs(counts["full_finetune"]["encoder."] - 85.8e6) / 85.8e6 < 0.01
    assert counts["lora"]["encoder."] == 12 * 4 * 8 * (768 + 768)
    assert counts["vpt"]["encoder."] == 12 * 10 * 768
