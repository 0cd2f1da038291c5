import os
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from vtfpar.backbone import ClipVision, SplitAttention, default_taps, load_clip
from vtfpar.errors import UserError


def test_split_attention_equals_multihead_attention():
    """In float64: equal to rounding that no CPU's kernels approach (float32 sums of outputs of order 1 differ in
    their last bits by kernel)."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(64, 4, batch_first=True)
    nn.init.normal_(mha.in_proj_bias)
    nn.init.normal_(mha.out_proj.bias)
    split = SplitAttention(mha).double()
    mha.double()
    x = torch.randn(3, 11, 64, dtype=torch.float64)
    mask = torch.triu(torch.full((11, 11), float("-inf"), dtype=torch.float64), 1)
    for m in (None, mask):
        ref = mha(x, x, x, need_weights=False, attn_mask=m)[0]
        torch.testing.assert_close(split(x, x, x, attn_mask=m)[0], ref, rtol=1e-10, atol=1e-10)


def test_split_attention_keeps_frozen_state():
    mha = nn.MultiheadAttention(32, 2, batch_first=True).requires_grad_(False)
    assert not any(p.requires_grad for p in SplitAttention(mha).parameters())


def test_converted_tower_matches_open_clip_image_encoder():
    torch.manual_seed(0)
    clip = load_clip("clip-tiny", "none").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = clip.encode_image(x)
        tokens, taps = ClipVision(clip.visual)(x, taps=[0, 2, 4])
        ours = tokens[:, 0] @ clip.visual.proj
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    assert sorted(taps) == [0, 2, 4] and taps[4].shape == (2, 65, 64)


def test_default_taps_follow_the_paper_on_vit_b16():
    assert default_taps(12) == [0, 3, 6, 9, 11]
    assert default_taps(4) == [0, 1, 2, 3]


def test_local_checkpoint_file_loads_exactly(tmp_path):
    torch.manual_seed(1)
    clip = load_clip("clip-tiny", "none")
    path = tmp_path / "tiny.pt"
    torch.save(clip.state_dict(), path)
    again = load_clip("clip-tiny", str(path))
    for (n, a), (_, b) in zip(clip.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), n


def test_a_checkpoint_file_holding_nan_is_named_at_load_not_blamed_on_the_learning_rate(tmp_path):
    torch.manual_seed(1)
    state = load_clip("clip-tiny", "none").state_dict()
    state["visual.conv1.weight"][0, 0, 0, 0] = float("nan")
    state["visual.proj"][1, 2] = float("inf")
    path = tmp_path / "diverged.pt"
    torch.save(state, path)
    with pytest.raises(UserError) as err:
        load_clip("clip-tiny", str(path))
    assert str(err.value) == (f"{path}: its weights hold NaN or infinite values (visual.proj, visual.conv1.weight): "
                              "the file is damaged, or was saved from a model whose training diverged; give another "
                              "copy")


@pytest.mark.parametrize("name,pretrained,fragment", [
    ("no-such-model", "none", "unknown backbone 'no-such-model'"),
    ("clip-tiny", "/nonexistent/weights.pt", "checkpoint file not found: /nonexistent/weights.pt"),
    ("clip-tiny", "/dev/null", "checkpoint file is not a regular file: /dev/null"),
    ("clip-tiny", "/", "checkpoint file is a folder, not a file: / (set model.pretrained"),
    ("clip-tiny", "openai", "unknown pretrained tag 'openai' for clip-tiny: known tags are vtfpar-synthetic;"),
])
def test_load_errors_name_the_fix(name, pretrained, fragment):
    with pytest.raises(UserError, match=fragment.replace("(", r"\(")):
        load_clip(name, pretrained)


def test_a_tag_is_a_tag_where_the_current_folder_holds_its_name(tmp_path, monkeypatch):
    """``openai`` names open_clip's weights even where a folder or file of that name is in the current folder;
    ``./openai`` names the file. Any other bare name that exists is a file."""
    from vtfpar.backbone import check_pretrained, local_weights

    monkeypatch.chdir(tmp_path)
    (tmp_path / "openai").mkdir()
    check_pretrained("ViT-B-16", "openai")  # the tag: no "checkpoint file is a folder" refusal
    assert local_weights("openai") is None
    with pytest.raises(UserError, match=r"checkpoint file is a folder, not a file: openai \("):
        check_pretrained("ViT-B-16", "./openai")
    torch.save(load_clip("clip-tiny", "none").state_dict(), tmp_path / "mine")
    assert local_weights("mine") == Path("mine") and local_weights("./mine") == Path("mine")
    check_pretrained("clip-tiny", "mine")
    # a file named as another backbone's tag: the refusal says how to name the file
    with pytest.raises(UserError, match=r"unknown pretrained tag 'openai' for clip-tiny: .*; the file openai here "
                                        r"is \./openai$"):
        check_pretrained("clip-tiny", "openai")


def test_a_tag_without_network_fails_at_once_and_quietly(tmp_path, monkeypatch, capfd):
    """Without a reachable Hub an open_clip tag is fetched in the Hub's offline mode: weights not in the cache
    fail at once with the one line saying what to do, not after the Hub's five retries and their warnings."""
    import time

    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))  # an empty cache, whatever this machine holds
    started = time.perf_counter()
    with pytest.raises(UserError, match="could not fetch ViT-B-16 weights 'openai'"):
        load_clip("ViT-B-16", "openai")
    assert time.perf_counter() - started < 10  # the retries alone took over 20 s
    assert "Retry" not in capfd.readouterr().err
    assert hub.HF_HUB_OFFLINE is False or os.environ.get("HF_HUB_OFFLINE")  # put back as it was


@pytest.mark.parametrize("name", ["junk.pt", "junk.safetensors"])
def test_a_file_that_is_no_checkpoint_says_so_without_unsafe_advice(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UserError) as err:
        load_clip("clip-tiny", str(path))
    assert "is not a PyTorch or safetensors checkpoint that loads safely" in str(err.value)
    assert "weights_only" not in str(err.value)


def test_the_weights_a_run_hashes_are_the_weights_it_loads(tmp_path, monkeypatch):
    """Only a local file is hashed into a run (an embedded tag is not, even with a file of its name here), and
    a file that cannot be read is one line, not an OSError."""
    import vtfpar.backbone as backbone

    monkeypatch.chdir(tmp_path)
    (tmp_path / "vtfpar-synthetic").write_bytes(b"x")
    assert backbone.weights_sha256("vtfpar-synthetic") is None and backbone.weights_sha256(" none ") is None
    (tmp_path / "w.pt").write_bytes(b"weights")
    assert backbone.weights_sha256(" w.pt ") == backbone.sha256_of(tmp_path / "w.pt")

    def unreadable(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(backbone, "sha256_of", unreadable)
    (tmp_path / "other.pt").write_bytes(b"other")
    with pytest.raises(UserError, match="cannot read the checkpoint file other.pt \\(Permission denied\\)"):
        backbone.weights_sha256("other.pt")


def test_wrong_architecture_checkpoint_is_a_user_error(tmp_path):
    """What is wrong with a checkpoint that is not this backbone's is said: a few of its missing and unexpected keys
    and tensors of another shape (torch's first line says only that there are some), or that it holds no weights."""
    path = tmp_path / "bad.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(UserError, match="could not load .*: its weights are not this architecture's \\(missing: "
                                        "[a-z_.0-9]+, [a-z_.0-9]+, [a-z_.0-9]+ and \\d+ more; unexpected: weight\\)"):
        load_clip("clip-tiny", str(path))
    state = load_clip("clip-tiny", "none").state_dict()
    state.pop("visual.conv1.weight")
    torch.save({**state, "visual.proj": torch.zeros(3, 3)}, path)
    with pytest.raises(UserError, match=re.escape("(missing: visual.conv1.weight; of another shape: visual.proj "
                                                  "[3, 3] (the model's [64, 64])): is it a checkpoint of another")):
        load_clip("clip-tiny", str(path))
    for held, why in (({}, "it holds no weights (an empty state dict)"),
                      ([1, 2], "it holds a list, not a state dict of named tensors")):
        torch.save(held, path)
        with pytest.raises(UserError, match=re.escape(f"could not load {path} into clip-tiny: {why}; give an ")):
            load_clip("clip-tiny", str(path))


def test_fused_qkv_projection_follows_frozen_weight_changes():
    """The q/k/v projections of a frozen tower run as one cached matrix; writing a weight invalidates it."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    vision = ClipVision(load_clip("clip-tiny", "none").visual).requires_grad_(False)
    attn = vision.blocks[0].attn
    x = torch.randn(2, 5, attn.q_proj.in_features)

    def by_hand():
        n, length, d = x.shape
        heads = [p(x).reshape(n, length, attn.num_heads, -1).transpose(1, 2) for p in (attn.q_proj, attn.k_proj,
                                                                                        attn.v_proj)]
        out = F.scaled_dot_product_attention(*heads)
        return attn.out_proj(out.transpose(1, 2).reshape(n, length, d))

    with torch.no_grad():
        torch.testing.assert_close(attn(x)[0], by_hand())
        attn.k_proj.weight.mul_(1.5)  # an in-place write (as load_state_dict does)
        torch.testing.assert_close(attn(x)[0], by_hand())
        attn.v_proj = torch.nn.Linear(attn.v_proj.in_features, attn.v_proj.out_features).requires_grad_(False)
        torch.testing.assert_close(attn(x)[0], by_hand())  # a replaced layer (as LoRA's merge does)


def test_tap_tokens_run_only_up_to_the_last_tap_and_equal_the_full_forward():
    torch.manual_seed(0)
    vision = ClipVision(load_clip("clip-tiny", "none").visual).eval()
    ran = []
    for i, block in enumerate(vision.blocks):
        block.register_forward_hook(lambda m, args, out, i=i: ran.append(i))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        _, full = vision(x, taps=[0, 1, 3])
        ran.clear()
        taps = vision.tap_tokens(x, [0, 1, 3])
    assert ran == [0, 1, 2]  # block 4 (index 3) and ln_post are not needed for tap 3
    assert sorted(taps) == [0, 1, 3]
    assert all(torch.equal(taps[k], full[k]) for k in full)
