"""The embedded pre-trained tiny CLIP: captions, reproducible contrastive training, the shipped file."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_cli import bench
from vtfpar import backbone
from vtfpar.backbone import EMBEDDED_WEIGHTS, load_clip, sha256_of
from vtfpar.data.captions import caption
from vtfpar.data.synthetic import SyntheticPedestrians, sample_labels
from vtfpar.errors import UserError
from vtfpar.pretrain import PretrainConfig, evaluate, pretrain_clip

EMBEDDED = EMBEDDED_WEIGHTS["vtfpar-synthetic"]
TINY = PretrainConfig(images=96, heldout=32, epochs=2, batch_size=32, warmup_steps=2)


def test_captions_vary_never_mention_motion_and_leave_attributes_out():
    rng = np.random.default_rng(0)
    lab = sample_labels(rng)
    same_frame = {caption(lab, rng) for _ in range(30)}
    assert len(same_frame) >= 20  # varied wording for one and the same label vector
    many = [caption(sample_labels(rng), rng) for _ in range(500)]
    assert all(c.strip() for c in many)
    for word in ("standing", "walking", "running", "motion", "moving"):
        assert not any(word in c.replace("walking towards", "") for c in many), word
    clauses = np.array([c.count(",") + c.count(" and ") + 1 for c in many])
    assert clauses.mean() < 5  # a partial description: 9 facts per frame are visible


def test_pretraining_is_reproducible_from_the_seed_and_lowers_the_loss():
    a, hist_a = pretrain_clip(TINY, log=lambda s: None)
    b, hist_b = pretrain_clip(TINY, log=lambda s: None)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert hist_a == hist_b
    assert hist_a[-1]["loss"] < hist_a[0]["loss"]
    c, _ = pretrain_clip(PretrainConfig(**{**TINY.__dict__, "seed": 7}), log=lambda s: None)
    assert not torch.equal(a.visual.conv1.weight, c.visual.conv1.weight)


def test_pretraining_and_downstream_draws_do_not_overlap():
    frames = [SyntheticPedestrians(4, 1, 64, seed=s, split=sp).raw(0) for s, sp in
              ((TINY.seed, "pretrain"), (TINY.seed, "val"), (0, "train"), (0, "test"))]
    for i in range(len(frames)):
        for j in range(i + 1, len(frames)):
            assert not np.array_equal(frames[i], frames[j])


def test_shipped_weights_match_their_card_and_carry_attribute_information():
    path = EMBEDDED["file"]
    assert sha256_of(path) == EMBEDDED["sha256"]
    card = path.with_suffix(".md").read_text()
    info = json.loads(path.with_suffix(".json").read_text())
    assert EMBEDDED["sha256"] in card and info["sha256"] == EMBEDDED["sha256"]
    assert path.stat().st_size < 10 * 2**20
    model = load_clip("clip-tiny", "vtfpar-synthetic")
    metrics = evaluate(model, PretrainConfig(heldout=300))
    assert metrics["image_to_text_r5"] > 20 * 5 * metrics["chance_r1"]
    zs = metrics["zero_shot"]
    for group in ("top colour", "bottom colour"):  # clearly above always answering the majority class
        assert zs[group]["accuracy"] > zs[group]["majority"] + 0.2, (group, zs[group])


def test_damaged_or_misused_embedded_weights_give_one_line_errors(tmp_path, monkeypatch):
    damaged = tmp_path / "clip-tiny-synthetic.safetensors"
    shutil.copy(EMBEDDED["file"], damaged)
    data = bytearray(damaged.read_bytes())
    data[-100] ^= 0xFF
    damaged.write_bytes(bytes(data))
    monkeypatch.setitem(backbone.EMBEDDED_WEIGHTS, "vtfpar-synthetic", {**EMBEDDED, "file": damaged})
    with pytest.raises(UserError, match="sha256.*restore it with 'git checkout' or regenerate"):
        load_clip("clip-tiny", "vtfpar-synthetic")
    monkeypatch.setitem(backbone.EMBEDDED_WEIGHTS, "vtfpar-synthetic", {**EMBEDDED, "file": tmp_path / "gone"})
    with pytest.raises(UserError, match="embedded weights missing"):
        load_clip("clip-tiny", "vtfpar-synthetic")
    monkeypatch.setitem(backbone.EMBEDDED_WEIGHTS, "vtfpar-synthetic", EMBEDDED)
    with pytest.raises(UserError, match="is a clip-tiny checkpoint, not ViT-B-16"):
        load_clip("ViT-B-16", "vtfpar-synthetic")


def test_pretrain_cli_writes_weights_card_and_zero_shot_numbers(tmp_path, bench_proc):
    out = tmp_path / "w.safetensors"
    r = bench("pretrain-clip", "--images", "64", "--heldout", "32", "--epochs", "1", "--batch-size", "32",
              "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    info = json.loads(out.with_suffix(".json").read_text())
    card = out.with_suffix(".md").read_text()
    assert info["sha256"] == sha256_of(out) and info["sha256"] in card
    assert card.startswith("# w: a pre-trained tiny CLIP") and "**File:** `w.safetensors`" in card  # not the embedded
    assert set(info["metrics"]["zero_shot"]) >= {"top colour", "orientation"}
    assert "held-out retrieval" in r.stdout
    loaded = load_clip("clip-tiny", str(out))  # an ordinary open_clip checkpoint file
    assert loaded.visual.conv1.weight.dtype == torch.float32
    bad = bench_proc("pretrain-clip", "--images", "16", "--batch-size", "32", "--out", str(out), "--no-progress")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--batch-size" in bad.stderr


@pytest.fixture
def embedded_copy(tmp_path, monkeypatch):
    """The embedded weights, record and card copied to a folder of their own, which ``pretrain-clip`` without
    ``--out`` then re-makes; their bytes, by name."""
    folder = tmp_path / "weights"
    folder.mkdir()
    for suffix in (".safetensors", ".json", ".md"):
        shutil.copy(EMBEDDED["file"].with_suffix(suffix), folder)
    monkeypatch.setitem(EMBEDDED_WEIGHTS, "vtfpar-synthetic", {**EMBEDDED, "file": folder / EMBEDDED["file"].name})
    return folder, {p.name: p.read_bytes() for p in folder.iterdir()}


def test_remaking_the_embedded_weights_with_other_settings_is_refused_before_training(embedded_copy):
    from benchmark.pretrain import run_pretrain

    folder, before = embedded_copy
    lines = []
    with pytest.raises(UserError) as exc:
        run_pretrain(PretrainConfig(images=256, heldout=64, epochs=1), None, 1, False, "pretrain-clip", lines.append)
    assert str(exc.value).startswith("pretrain-clip --images 256 --heldout 64 --epochs 1: without --out this would "
                                     "replace the embedded weights")
    assert "give --out FILE.safetensors" in str(exc.value) and lines == []  # refused before the first step
    weights = folder / EMBEDDED["file"].name
    with pytest.raises(UserError, match=rf"^pretrain-clip --lr 0.01: --out {weights} is the embedded weights file, "):
        run_pretrain(PretrainConfig(lr=0.01), weights, 1, False, "pretrain-clip", lines.append)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_embedded_weights_remade_otherwise_are_kept_and_the_new_ones_written_beside_them(embedded_copy):
    """Re-made with the recorded settings, weights that differ from the embedded sha256 (another CPU or torch
    rounds differently) go beside the embedded file, which every synthetic run loads and checks; weights that
    equal it replace it with their card."""
    from benchmark.pretrain import run_pretrain

    folder, before = embedded_copy
    cfg = PretrainConfig(images=64, heldout=16, epochs=1, batch_size=32, warmup_steps=2)
    record = json.loads(before["clip-tiny-synthetic.json"])
    (folder / "clip-tiny-synthetic.json").write_text(json.dumps({**record, "config": cfg.__dict__}))
    before["clip-tiny-synthetic.json"] = (folder / "clip-tiny-synthetic.json").read_bytes()
    lines = []
    info = run_pretrain(cfg, None, 1, False, "pretrain-clip", lines.append)
    remade = folder / "clip-tiny-synthetic.remade.safetensors"
    assert info["sha256"] == sha256_of(remade) != EMBEDDED["sha256"]
    assert {p.name: p.read_bytes() for p in folder.iterdir() if ".remade." not in p.name} == before
    assert sorted(p.name for p in folder.glob("*.remade.*")) == [
        "clip-tiny-synthetic.remade.json", "clip-tiny-synthetic.remade.md", "clip-tiny-synthetic.remade.safetensors"]
    assert "are kept" in lines[-1] and info["sha256"] in lines[-1]
    card = (folder / "clip-tiny-synthetic.remade.md").read_text()  # meant to replace the embedded one's, as it says
    assert card.startswith("# clip-tiny-synthetic: the embedded") and "`clip-tiny-synthetic.safetensors`" in card
    for p in folder.glob("*.remade.*"):
        p.unlink()
    EMBEDDED_WEIGHTS["vtfpar-synthetic"]["sha256"] = info["sha256"]  # weights that reproduce the embedded ones
    again = run_pretrain(cfg, None, 1, False, "pretrain-clip", lines.append)
    assert again["sha256"] == info["sha256"] == sha256_of(folder / "clip-tiny-synthetic.safetensors")
    assert not list(folder.glob("*.remade.*"))
    card = (folder / "clip-tiny-synthetic.md").read_text()
    assert card.startswith("# clip-tiny-synthetic: the embedded") and info["sha256"] in card


def test_a_warm_up_as_long_as_the_pretraining_is_warned_of():
    from benchmark.pretrain import warmup_note

    note = warmup_note(PretrainConfig(images=4000, heldout=500, epochs=1, batch_size=256))
    assert note.startswith("warning: the learning rate warms up over 100 steps and this run has 15 (--epochs 1 x "
                           "--images 4000 // --batch-size 256): it never reaches --lr 0.002")
    assert warmup_note(PretrainConfig()) is None  # 24 epochs of 78 steps


def test_pretrain_stopped_while_evaluating_keeps_the_previous_weights_and_card(tmp_path, monkeypatch):
    """The weights replace the previous file only once evaluated, so a stop during the evaluation leaves the
    file and the sha256 its card gives in agreement."""
    import benchmark.pretrain as pretrain
    from vtfpar.pretrain import PretrainConfig

    out = tmp_path / "w.safetensors"
    cfg = PretrainConfig(images=64, heldout=16, epochs=1, batch_size=32)
    pretrain.run_pretrain(cfg, out, 1, False, "pretrain-clip", log=lambda _: None)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain, "evaluate", stopped)
    with pytest.raises(KeyboardInterrupt):
        pretrain.run_pretrain(PretrainConfig(images=64, heldout=16, epochs=1, batch_size=32, seed=7), out, 1, False,
                              "pretrain-clip", log=lambda _: None)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing left behind, nothing replaced
    assert json.loads(out.with_suffix(".json").read_text())["sha256"] == sha256_of(out)


@pytest.mark.parametrize("args,fragment", [
    (["--heldout", "4"], "--heldout, 4) must be at least 5"),
    (["--images", str(10**12)], "--images, 1000000000000) must be <= 1,000,000"),
    (["--heldout", "20001"], "--heldout, 20001) must be <= 20,000: every held-out pair is compared with every"),
    (["--out", "{tmp}/w.json"], "must end in .safetensors"),
    (["--out", "{tmp}"], "is a folder"),
    (["--out", "{tmp}/file.txt/w.safetensors"], "file.txt is a file, not a folder"),
])
def test_pretrain_cli_refuses_bad_options_before_training(tmp_path, bench_proc, args, fragment):
    (tmp_path / "file.txt").write_text("kept")
    r = bench_proc("pretrain-clip", "--images", "64", "--batch-size", "32", "--epochs", "1", "--no-progress",
                   "--out", tmp_path / "w.safetensors", *[a.format(tmp=tmp_path) for a in args])  # last --out wins
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and fragment in r.stderr, r.stderr
    assert r.stdout == ""  # refused before the first epoch
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
    assert (tmp_path / "file.txt").read_text() == "kept"


@pytest.mark.parametrize("present", [["README.md"], ["ViT-B-16.safetensors"], ["ViT-B-16.json", "ViT-B-16.md"]])
def test_pretrain_replaces_only_files_it_wrote_itself(tmp_path, bench_proc, present):
    """``--out X.safetensors`` writes X.safetensors, X.json and X.md: a file of those names that an earlier
    ``bench pretrain-clip`` did not write (a README beside, someone's weights, which runs check by sha256) is
    refused before training and left as it was; its own earlier output is replaced."""
    import benchmark.pretrain as pretrain
    from vtfpar.pretrain import PretrainConfig

    for name in present:
        (tmp_path / name).write_text(f"mine: {name}")
    stem = Path(present[0]).stem
    out = tmp_path / f"{stem}.safetensors"
    r = bench_proc("pretrain-clip", "--images", "64", "--batch-size", "32", "--epochs", "1", "--no-progress",
                   "--out", out)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stdout == "", r.stderr
    assert "not written by bench pretrain-clip" in r.stderr and "choose another --out" in r.stderr, r.stderr
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {n: f"mine: {n}" for n in present}
    mine = tmp_path / "mine.safetensors"  # the command's own output, made again: replaced
    cfg = PretrainConfig(images=64, heldout=16, epochs=1, batch_size=32)
    first = pretrain.run_pretrain(cfg, mine, 1, False, "pretrain-clip", log=lambda _: None)
    again = pretrain.run_pretrain(PretrainConfig(images=64, heldout=16, epochs=1, batch_size=32, seed=7), mine, 1,
                                  False, "pretrain-clip", log=lambda _: None)
    assert again["sha256"] != first["sha256"] and sha256_of(mine) == again["sha256"]


def test_pretraining_that_diverges_stops_at_the_first_non_finite_loss_and_writes_nothing(tmp_path, bench_proc):
    """A learning rate far too high makes the loss NaN: said in one line at that step, with the fix (lower --lr),
    rather than trained to the end and the weights then blamed as a damaged file under a temporary name."""
    r = bench_proc("pretrain-clip", "--out", tmp_path / "new" / "w.safetensors", "--lr", "1e6", "--images", "8",
                   "--heldout", "5", "--epochs", "2", "--batch-size", "4", "--no-progress")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert re.fullmatch(r"error: pre-training diverged: the loss is nan at step \d of 4 \(epoch \d, learning rate "
                        r"\S+, --lr 1e\+06\): lower --lr; nothing was written\n", r.stderr), r.stderr
    assert not (tmp_path / "new").exists()
