"""One matrix over the method registry: every method and every declared variant gets every test here.

A method's own hand formula for its trainable parameters, and anything else specific to it, lives
in ``tests/test_method_<name>.py``. The rules every method obeys:

* only the method's own prefixed parameters train, besides fusion and head; each gets a gradient, and none
  has a gradient that is zero whatever the weights (it would train on rounding noise);
  the frozen backbone stays bit-identical;
* the fusion and head count is the same formula for all;
* deployment form gives the training form's outputs, holds no second copy of any weight, and leaves the
  model exactly as it was;
* the trainable state saved by a run reloads into a fresh model and reproduces its outputs.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from unittest import mock

import pytest
import torch

import methods
from methods.registry import MethodSpec, Variant, method_cases
from tests.conftest import tiny_config, tiny_model
from tests.method_counts import SHARED, block_params
from tests.operators import operator_trace
from vtfpar.encoders import ClipTokenEncoder
from vtfpar.errors import UserError
from vtfpar.fusion import AttributeHead, VideoTextFusion
from vtfpar.loss import WeightedBCE
from vtfpar.model import load_trainable_state, trainable_state_dict, weights_held_in

ROOT = Path(__file__).resolve().parents[1]
ALL = methods.list_methods()
CASES = method_cases()
IDS = [case_id for case_id, _, _ in CASES]


def test_registry_holds_every_method_file_and_rejects_duplicates():
    files = {p.stem for p in Path(methods.__file__).parent.glob("*.py")} - {"__init__", "registry", "build"}
    assert set(ALL) == files
    with pytest.raises(UserError, match=r"^tests/test_methods.py: method name 'lora' is already registered by "
                                        r"methods/lora.py: give the MethodSpec another name$"):
        methods.registry.register_method(methods.get_method("lora"))
    twice = MethodSpec(name="twice", config_cls=object, build=print, prefixes=(), summary="", source="", order=99,
                       variants=(Variant("a", {}), Variant("a", {})))
    with pytest.raises(UserError, match=r"^tests/test_methods.py: method 'twice' has duplicate variant ids"):
        methods.registry.register_method(twice)
    misspelt = MethodSpec(name="misspelt", config_cls=methods.get_method("lora").config_cls, build=print,
                          prefixes=(), summary="", source="", order=99, variants=(Variant("r4", {"rnak": 4}),))
    with pytest.raises(UserError, match=r"^tests/test_methods.py: method 'misspelt', variant 'r4': unknown "
                                        r"setting\(s\) \['rnak'\] \(settings of LoraMethodConfig: rank, alpha, "
                                        r"dropout, targets\)$"):
        methods.registry.register_method(misspelt)
    assert not {"twice", "misspelt"} & set(methods.list_methods())


def test_a_method_name_taken_twice_stops_the_cli_in_one_line_naming_both_files(tmp_path):
    """The registry is filled on import, so a clash stops every command: one line and exit code 2, not a traceback.
    Here a researcher's new methods/lora_plus.py registers the name of lora.py (a copy of the tree, linked file by
    file)."""
    import subprocess
    import sys

    for name in ("benchmark", "vtfpar", "bench.toml"):
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / "methods").mkdir()
    for f in (ROOT / "methods").glob("*.py"):
        (tmp_path / "methods" / f.name).symlink_to(f)
    (tmp_path / "methods" / "__init__.py").unlink()
    init = (ROOT / "methods" / "__init__.py").read_text().replace("    lora,\n", "    lora,\n    lora_plus,\n")
    (tmp_path / "methods" / "__init__.py").write_text(init)
    (tmp_path / "methods" / "lora_plus.py").write_text(
        "from methods.lora import LoraMethodConfig, build\nfrom methods.registry import MethodSpec, register_method\n"
        "register_method(MethodSpec(name='lora', config_cls=LoraMethodConfig, build=build, prefixes=('lora_',), "
        "summary='', source='', order=4))\n")
    r = subprocess.run([sys.executable, "-m", "benchmark.cli", "list"], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == ("error: methods/lora_plus.py: method name 'lora' is already registered by "
                                "methods/lora.py: give the MethodSpec another name")


def test_a_method_file_without_its_import_line_is_named_as_such(monkeypatch):
    """The recipe's second step forgotten: methods/lora.py is there but never imported (here: unregistered)."""
    from benchmark.perf import select_rows
    from methods.registry import _REGISTRY

    monkeypatch.delitem(_REGISTRY, "lora")
    hint = ("unknown method 'lora': methods/lora.py is not imported by methods/__init__.py (add 'lora,' to its "
            "import list), or registers another name")
    with pytest.raises(UserError) as err:
        methods.get_method("lora")
    assert str(err.value) == hint
    with pytest.raises(UserError) as err:
        select_rows("frozen,lora")
    assert str(err.value) == f"--methods: {hint}"
    with pytest.raises(UserError, match="^unknown method 'registry': choose one of frozen"):
        methods.get_method("registry")


def _own(name: str, method: str) -> bool:
    return any(p in name for p in methods.get_method(method).prefixes)


def _train(model, clips, steps=3):
    frames, labels = clips
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.Adam(trainable.values(), lr=1e-3)
    loss_fn = WeightedBCE(labels.mean(0))
    got_grad = dict.fromkeys(trainable, False)
    model.train()
    for _ in range(steps):  # zero-initialised B (LoRA) / up (adapters) block the first step's gradient of A / down
        opt.zero_grad()
        loss_fn(model(frames), labels).backward()
        for n, p in trainable.items():
            got_grad[n] |= bool(p.grad is not None and p.grad.abs().sum() > 0)
        opt.step()
    return trainable, got_grad


@pytest.mark.parametrize("case_id,method,overrides", CASES, ids=IDS)
def test_only_method_parameters_change_and_all_get_gradients(case_id, method, overrides, clips):
    model = tiny_model(method, overrides=overrides)
    before = copy.deepcopy(model.state_dict())
    trainable, got_grad = _train(model, clips)
    assert all(n.startswith(SHARED) or _own(n, method) for n in trainable), case_id
    assert [n for n, g in got_grad.items() if not g] == []
    after = model.state_dict()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen
    for n in frozen:
        assert torch.equal(before[n], after[n]), f"{case_id}: frozen {n} changed"
    changed = {n for n in trainable if not torch.equal(before[n], after[n])}
    assert changed == set(trainable)


# CLIP's key projection's shift: softmax is invariant to it, so its gradient is zero whatever the weights. BitFit
# ("all bias terms"), SSF (a shift after every operation) and full fine-tuning train it by their definition, and
# their files say so; nothing else may. (The key third of a fused q/k/v bias, as in timm's Block, is the same kind
# of parameter; this test looks at whole tensors and does not see it.)
KEY_SHIFT = re.compile(r"^encoder\.clip\.visual\.transformer\.resblocks\.\d+\.attn\.k_proj\.(bias|ssf_shift)$")
KEEP_KEY_SHIFT = {"bitfit", "ssf", "full_finetune"}


@pytest.mark.parametrize("case_id,method,overrides", CASES, ids=IDS)
def test_no_trainable_parameter_has_a_gradient_that_is_zero_by_construction(case_id, method, overrides, clips):
    """In float64 and with every trainable weight moved off its start (zero-initialised LoRA B or adapter up
    blocks the gradient of the part before them only at the start), a gradient that is zero whatever the weights,
    such as a shift that a BatchNorm removes, is zero up to rounding (~1e-17): Adam would scale that noise to
    steps of the learning rate's size. Every other gradient is far above it."""
    model = tiny_model(method, overrides=overrides).double()
    frames, labels = clips
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for p in trainable.values():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.05)
    model.train()
    WeightedBCE(labels.mean(0).double())(model(frames.double()), labels.double()).backward()
    largest = {n: p.grad.abs().max().item() if p.grad is not None else 0.0 for n, p in trainable.items()}
    dead = {n for n, g in largest.items() if g < 1e-9}
    key_shifts = {n for n in dead if KEY_SHIFT.match(n)}
    assert dead - key_shifts == set(), case_id
    assert len(key_shifts) == (4 if method in KEEP_KEY_SHIFT else 0), case_id  # the test's clip-tiny has 4 blocks


@pytest.mark.parametrize("case_id,method,overrides", CASES, ids=IDS)
def test_fusion_and_head_count_is_the_same_formula_for_all(case_id, method, overrides):
    cfg = tiny_config(method)
    model = tiny_model(method, overrides=overrides)
    W, M, Dt = cfg.model.fusion_width, 23, model.text.out_dim
    vis = model.encoder.out_dim
    # the last LayerNorm has no shift and the head's dense layers no bias (both would have a zero gradient)
    shared = (Dt * W + W) + (0 if vis == W else vis * W + W) + block_params(W) + W + (M * W + 2 * M)
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith(SHARED)) == shared


def test_every_method_of_a_seed_starts_from_the_same_fusion_and_head():
    """Under one seed, what methods share starts equal, so that a comparison differs only by what each adds: every
    part of fusion and head but the video projection, whose input width is the method's (LST's tokens are narrower:
    its projection must not shift the draws of the parts after it). Another seed starts each part elsewhere; the
    global generators are left as they were."""
    def shared(model):
        return {n: t for n, t in model.state_dict().items() if n.startswith(SHARED)}

    start = {m: shared(tiny_model(m, seed=3)) for m in ALL}
    ref = start["frozen"]
    torch.manual_seed(5)
    state, draw = torch.get_rng_state(), torch.rand(4)
    torch.set_rng_state(state)
    with mock.patch("torch.cuda.manual_seed_all") as cuda_seeded:  # what torch.manual_seed does besides the CPU's
        VideoTextFusion(64, 8, 64, 4, seed=3), AttributeHead(5, 64, seed=3)
    cuda_seeded.assert_not_called()  # CUDA's generators are left as they are
    assert torch.equal(torch.rand(4), draw)  # and the CPU's is where it was
    assert "fusion.visual_proj.weight" not in ref and "fusion.visual_proj.weight" in start["lst"]  # LST's is narrower
    for method, params in start.items():
        common = {n for n in params if "visual_proj" not in n}
        assert common == set(ref), method
        assert all(torch.equal(params[n], ref[n]) for n in common), method
    other = shared(tiny_model("lst", seed=4))
    for part in ("fusion.text_proj.weight", "fusion.visual_proj.weight", "fusion.blocks.0.attn.qkv.weight",
                 "fusion.blocks.0.mlp.fc2.weight", "head.weight"):
        assert not torch.equal(other[part], start["lst"][part]), part


def _away_from_init(model, seed: int = 0) -> None:
    """Every bias of the frozen towers drawn from N(0, 0.3) and every weight a method trains moved by N(0, 0.05):
    a random open_clip starts its attention and LayerNorm biases at exactly zero, and a method's weights at its own
    start (scales of one, LoRA's B of zero), where a fold that drops a bias term, or scales rows where it should
    scale columns, still gives the training form's outputs, or misses them by little more than rounding."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(SHARED):
                continue
            if not p.requires_grad and name.endswith("bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("case_id,method,overrides", CASES, ids=IDS)
def test_deployment_form_equals_training_form_and_leaves_the_model_as_it_was(case_id, method, overrides, clips):
    model = tiny_model(method, overrides=overrides)
    _train(model, clips, steps=2)  # non-trivial LoRA B, adapter up, prompts...
    _away_from_init(model)
    twin = copy.deepcopy(model)
    frames, labels = clips
    model.eval()
    with torch.no_grad():
        reference = model(frames)
    state = copy.deepcopy(model.state_dict())
    storage = {p.data_ptr() for p in model.parameters()}
    with model.deployed(), torch.inference_mode():
        deployed = model(frames)
        # Folds go into the model's own tensors: no second copy of any weight while deployed.
        assert {p.data_ptr() for p in model.parameters()} <= storage, \
            f"{case_id}: deployment form holds weights in new tensors; fold into the model's own (InPlaceFold)"
    assert (deployed - reference).abs().max() <= 1e-5, \
        f"{case_id}: deployment form's outputs differ from the training form's by {(deployed - reference).abs().max()}"
    after = model.state_dict()
    assert after.keys() == state.keys(), f"{case_id}: undeploy() did not restore the training form's modules " \
        f"(missing {sorted(state.keys() - after.keys())[:3]}, new {sorted(after.keys() - state.keys())[:3]})"
    for k in state:
        assert torch.equal(after[k], state[k]), f"{case_id}: {k} changed by deployment form"
    # Training after an evaluation in deployment form is what it would have been without it.
    for m in (model, twin):
        torch.manual_seed(5)
        _train(m, clips, steps=1)
    for (k, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{case_id}: {k} differs after training past an evaluation"
    # A second deployment folds the new weights, not what the first one cached.
    model.eval()
    with torch.no_grad():
        reference = model(frames)
    with model.deployed(), torch.inference_mode():
        assert (model(frames) - reference).abs().max() <= 1e-5, case_id


@pytest.mark.parametrize("case_id,method,overrides", CASES, ids=IDS)
def test_a_clips_prediction_does_not_depend_on_the_other_clips_of_its_batch(case_id, method, overrides, clips):
    """Every method pools, attends and normalises within a clip (frames of one clip, never across clips): in eval
    mode, training and deployment form alike, a clip predicted in a batch of three is the clip predicted alone."""
    model = tiny_model(method, overrides=overrides)
    _train(model, clips, steps=1)  # running BatchNorm statistics and method weights away from their start
    frames = clips[0][:3]
    model.eval()
    with torch.no_grad():
        batch = model(frames)
        alone = torch.cat([model(frames[i:i + 1]) for i in range(3)])
        with model.deployed():
            deployed = model(frames)
            deployed_alone = torch.cat([model(frames[i:i + 1]) for i in range(3)])
    assert (batch - alone).abs().max() <= 1e-5, case_id
    assert (deployed - deployed_alone).abs().max() <= 1e-5, case_id
    assert (batch[0] - batch[1]).abs().max() > 1e-3, case_id  # the clips are told apart at all


@pytest.mark.parametrize("case_id,method,overrides", CASES, ids=IDS)
def test_weights_held_in_the_autocast_dtype_give_the_same_bits_with_fewer_operators(case_id, method, overrides,
                                                                                     clips):
    """Deployment form under autocast (bf16 here, on CPU) holds the matrix-product weights in bf16: exactly the
    values autocast casts them to on every call, so the logits are bit-identical and the casts are gone; on
    leaving, every parameter is the same fp32 tensor again and training goes on as if nothing happened."""
    model = tiny_model(method, overrides=overrides)
    _train(model, clips, steps=2)
    twin = copy.deepcopy(model)
    params = dict(model.named_parameters())
    storage = {n: (p.dtype, p.data_ptr()) for n, p in params.items()}
    accumulators = [(p, _accumulator(p)) for p in params.values() if p.requires_grad]
    state = copy.deepcopy(model.state_dict())

    def bf16_inference():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(clips[0])

    with model.deployed():
        reference, plain_ops = bf16_inference(), len(operator_trace(bf16_inference))
    with model.deployed(torch.bfloat16):
        held = [n for n, p in model.named_parameters() if p.dtype == torch.bfloat16]
        assert held and not any(n.startswith("text.") for n in held), case_id
        logits, held_ops = bf16_inference(), len(operator_trace(bf16_inference))
    assert torch.equal(logits, reference), case_id
    assert held_ops < plain_ops, case_id
    assert dict(model.named_parameters()) == params  # the same Parameter objects ...
    assert {n: (p.dtype, p.data_ptr()) for n, p in params.items()} == storage  # ... on their own fp32 storage
    assert all(_accumulator(p) is a for p, a in accumulators), case_id  # ... and autograd identity (DDP's hooks)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"{case_id}: {k} changed"
    for m in (model, twin):
        torch.manual_seed(5)
        _train(m, clips, steps=1)
    for (k, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{case_id}: {k} differs after training past a bf16 evaluation"


def _accumulator(p: torch.Tensor):
    """The AccumulateGrad node of a leaf parameter (what DistributedDataParallel hooks its reduction on)."""
    with torch.enable_grad():
        return p.view_as(p).grad_fn.next_functions[0][0]


@pytest.mark.parametrize("method", ["lora", "side_tuning"])
def test_held_weights_offloaded_to_the_host_come_back_exactly(method, clips, monkeypatch):
    """The GPU path (fp32 originals in host memory while held), taken on the CPU: the originals are emptied
    in place, the outputs are the held ones, and on exit each original has its values and autograd identity;
    the held copies are freed before the originals are copied back (on a GPU both would be there at once)."""
    import weakref

    model = tiny_model(method).eval()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    originals = dict(model.named_parameters())
    accumulators = [(p, _accumulator(p)) for p in originals.values() if p.requires_grad]
    autocast = partial(torch.autocast, "cpu", dtype=torch.bfloat16)
    with torch.inference_mode(), autocast():
        reference = model(clips[0])
    with weights_held_in(torch.bfloat16, model.encoder, model.fusion, model.head, offload=True):
        emptied = [n for n, p in originals.items() if p.numel() == 0]
        assert emptied and all(model.get_parameter(n).dtype == torch.bfloat16 for n in emptied)
        with torch.inference_mode(), autocast():
            assert torch.equal(model(clips[0]), reference)
        held, alive, copy = [weakref.ref(model.get_parameter(n)) for n in emptied], [], torch.Tensor.to

        def count_then_copy(tensor, *args, **kwargs):  # the copies back: how many held copies live then
            alive.append(sum(r() is not None for r in held))
            return copy(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, "to", count_then_copy)
    monkeypatch.undo()
    assert len(alive) == len(emptied) and max(alive) == 0, alive
    assert dict(model.named_parameters()) == originals
    for n, p in originals.items():
        assert p.dtype == before[n].dtype and torch.equal(p, before[n]), n
    assert all(_accumulator(p) is a for p, a in accumulators)


@pytest.mark.parametrize("case_id,method,overrides", CASES, ids=IDS)
def test_trainable_state_reloads_into_a_fresh_model(case_id, method, overrides, clips):
    model = tiny_model(method, overrides=overrides)
    _train(model, clips, steps=2)
    saved = trainable_state_dict(model)
    fresh = tiny_model(method, overrides=overrides)  # same seed: the same frozen backbone
    load_trainable_state(fresh, saved, "test")
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(clips[0]), fresh(clips[0])), case_id


@dataclass
class _NoSettings:
    """The settings of a method a test writes: none."""


def _test_method(name: str, build, prefixes: tuple[str, ...] = ()) -> MethodSpec:
    """A method as a test writes it, to put in the registry: ``build`` and ``prefixes``, no settings."""
    return MethodSpec(name=name, config_cls=_NoSettings, build=build, prefixes=prefixes, summary="", source="",
                      order=99)


def _norm_tuning(layer_type):
    """A method that means to train CLIP's LayerNorms, with the layers of ``layer_type`` made trainable."""

    def build(vision, cfg, ctx):
        for m in vision.modules():
            if isinstance(m, layer_type):
                m.requires_grad_(True)
        return ClipTokenEncoder(vision, grad_through_clip=True)

    return _test_method("norm_tuning", build, ("ln_",))


def test_a_method_that_trains_none_of_its_own_parameters_is_refused_not_run_as_frozen(monkeypatch):
    from methods.registry import _REGISTRY

    monkeypatch.setitem(_REGISTRY, "norm_tuning", _norm_tuning(torch.nn.LayerNorm))
    assert any(p.requires_grad for n, p in tiny_model("norm_tuning").named_parameters() if "ln_" in n)
    monkeypatch.setitem(_REGISTRY, "norm_tuning", _norm_tuning(torch.nn.BatchNorm2d))  # no such layer in CLIP
    with pytest.raises(UserError, match=r"method 'norm_tuning' \(tests/test_methods.py\): its build leaves no "
                                        r"trainable parameter whose name holds one of its prefixes \['ln_'\]"):
        tiny_model("norm_tuning")


def test_a_method_that_leaves_other_weights_trainable_is_refused_not_run_as_fine_tuning(monkeypatch):
    """Norm tuning that unfreezes the whole tower by mistake would fine-tune CLIP under its name."""
    from methods.registry import _REGISTRY

    monkeypatch.setitem(_REGISTRY, "norm_tuning", _norm_tuning(torch.nn.Module))  # every module: all of CLIP
    with pytest.raises(UserError) as err:
        tiny_model("norm_tuning")
    assert re.match(r"method 'norm_tuning' \(tests/test_methods.py\): its build leaves \d+ parameter\(s\) trainable "
                    r"whose names hold none of its prefixes \['ln_'\] \(encoder\.clip\.visual\.\S+, .* and \d+ more\): "
                    "freeze them", str(err.value)), err.value


def test_trainable_weights_inside_a_tower_run_without_gradients_are_refused_not_run_as_frozen(monkeypatch):
    """Norm tuning built like the frozen baseline (CLIP under no_grad) would report the frozen model under its
    name: its LayerNorms are trainable but never get a gradient."""
    from methods.registry import _REGISTRY

    def build(vision, cfg, ctx):
        for m in vision.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.requires_grad_(True)
        return ClipTokenEncoder(vision, grad_through_clip=False)

    monkeypatch.setitem(_REGISTRY, "norm_tuning", _test_method("norm_tuning", build, ("ln_",)))
    with pytest.raises(UserError) as err:
        tiny_model("norm_tuning")
    assert re.match(r"method 'norm_tuning' \(tests/test_methods.py\): \d+ trainable parameter\(s\) inside CLIP "
                    r"\(encoder\.clip\.visual\.ln_pre\.weight, .*\) would never get a gradient: its ClipTokenEncoder "
                    r"runs CLIP under no_grad; build it with grad_through_clip=True$", str(err.value)), err.value


class _Unused(ClipTokenEncoder):
    """A method's own parameter that its forward never uses."""

    def __init__(self, vision):
        super().__init__(vision, grad_through_clip=False)
        self.spare_scale = torch.nn.Parameter(torch.ones(vision.width))


def test_a_trainable_parameter_no_gradient_reaches_stops_training_in_its_first_step(monkeypatch, clips):
    from torch.utils.data import DataLoader, TensorDataset

    from benchmark.step import new_train_state
    from benchmark.train import train_epoch
    from methods.registry import _REGISTRY

    monkeypatch.setitem(_REGISTRY, "spare", _test_method("spare", lambda vision, cfg, ctx: _Unused(vision),
                                                         ("spare_",)))
    model = tiny_model("spare")
    cfg = tiny_config("spare")
    state = new_train_state(model, WeightedBCE(torch.full((clips[1].shape[1],), 0.5)), torch.device("cpu"),
                            cfg.train, 1)
    data = DataLoader(TensorDataset(*clips), batch_size=4)
    with pytest.raises(UserError, match=r"^method 'spare' \(tests/test_methods.py\): 1 trainable parameter\(s\) "
                                        r"got no gradient in the first training step \(encoder\.spare_scale\), so "
                                        "they would never train: the method's forward must use every parameter"):
        train_epoch(state, data, torch.device("cpu"), method="spare")
    state = new_train_state(tiny_model("frozen"), WeightedBCE(torch.full((clips[1].shape[1],), 0.5)),
                            torch.device("cpu"), cfg.train, 1)
    assert train_epoch(state, data, torch.device("cpu"))["clips"] == len(clips[0])  # every parameter learns


class _NoWidth(torch.nn.Module):
    def __init__(self, vision):
        super().__init__()
        self.inner = ClipTokenEncoder(vision, grad_through_clip=False)

    def forward(self, frames):
        return self.inner(frames)


@pytest.mark.parametrize("build,got", [
    (lambda v, c, x: None, "None"),  # a forgotten return
    (lambda v, c, x: v.blocks, "a ModuleList without an int out_dim"),
    (lambda v, c, x: _NoWidth(v), "a _NoWidth without an int out_dim"),
])
def test_a_build_that_returns_no_encoder_is_named_with_its_file_and_hook(monkeypatch, build, got):
    from methods.registry import _REGISTRY

    monkeypatch.setitem(_REGISTRY, "broken", _test_method("broken", build))
    with pytest.raises(UserError) as err:
        tiny_model("broken")
    assert str(err.value).startswith(f"method 'broken' (tests/test_methods.py): build() returned {got}: it must "
                                     "return the video encoder"), err.value


class _Gain(ClipTokenEncoder):
    """Frozen tokens times a trainable gain, with a deployment form whose hooks are spelt as a test gives them."""

    def __init__(self, vision):
        super().__init__(vision, grad_through_clip=False)
        self.gain_g = torch.nn.Parameter(torch.ones(vision.width))

    def forward(self, frames):
        return super().forward(frames) * self.gain_g


@pytest.mark.parametrize("hooks,fragment", [
    (("deploy", "undeploy"), None),
    (("deploy", "undeply"), "_Gain defines deploy() but no undeploy() (is undeply() misspelt?)"),
    (("depoly", "undeploy"), "_Gain defines undeploy() but no deploy() (is depoly() misspelt?)"),
    (("depoly", "undepoly"), "_Gain defines depoly(), which is neither deploy() nor undeploy()"),
    (("deploy", "restore"), "_Gain defines deploy() but no undeploy()"),
])
def test_a_deployment_form_with_one_hook_or_a_misspelt_one_is_refused(monkeypatch, hooks, fragment):
    """deploy() alone would leave the model folded after the first evaluation; a misspelt pair would evaluate and
    measure the training form as the deployment form without a word."""
    from methods.registry import _REGISTRY

    kind = type("_Gain", (_Gain,), {name: lambda self: None for name in hooks})
    monkeypatch.setitem(_REGISTRY, "gain", _test_method("gain", lambda v, c, x: kind(v), ("gain_",)))
    if fragment is None:
        tiny_model("gain")
        return
    with pytest.raises(UserError) as err:
        tiny_model("gain")
    assert str(err.value).startswith(f"method 'gain' (tests/test_methods.py): {fragment}: a deployment form is the "
                                     "pair deploy() / undeploy()"), err.value


class _Pooled(_Gain):
    """Tokens pooled away: [B,D] where the fusion takes [B,L,D]."""

    def forward(self, frames):
        return super().forward(frames).mean(1)


def test_an_encoder_of_the_wrong_shape_is_named_with_its_file_not_failing_inside_the_fusion(monkeypatch, clips):
    from methods.registry import _REGISTRY

    monkeypatch.setitem(_REGISTRY, "pooled", _test_method("pooled", lambda v, c, x: _Pooled(v), ("gain_",)))
    model = tiny_model("pooled")
    frames = clips[0][:2]
    with pytest.raises(UserError) as err:
        model(frames)
    assert str(err.value) == (f"tests/test_methods.py: _Pooled returned tokens of shape [2, 64] for frames of shape "
                              f"{list(frames.shape)}: a video encoder maps frames [B,T,3,H,W] to tokens [B,L,D], D its "
                              "out_dim (64)")


@pytest.mark.parametrize("setting,fragment", [
    ("methods.lora.rank=0", "lora: rank must be >= 1"),
    ("methods.lora.targets=['q', 'gate']", "lora: unknown target module(s) ['gate']"),
    ("methods.vpt.tokens=0", "vpt: tokens must be >= 1"),
    ("methods.vpt.variant='middle'", "vpt: unknown variant 'middle'"),
    ("methods.adapter.variant='lora'", "adapter: unknown variant 'lora'"),
    ("methods.prompt_tuning.context=0", "prompt_tuning: context must be >= 1"),
    ("methods.st_adapter.kernel=[2, 1, 1]", "st_adapter: kernel must be three odd positive sizes"),
    ("methods.st_adapter.position='end'", "st_adapter: unknown position 'end'"),
    ("methods.aim.ratio=0", "aim: ratio must be > 0"),
    ("methods.lst.reduction=0", "lst: reduction must be >= 1"),
    ("methods.ssf.init_std=-1", "ssf: init_std must be >= 0"),
])
def test_invalid_method_settings(setting, fragment):
    from benchmark.config import load_config
    from vtfpar.errors import UserError

    method = setting.split(".")[1]
    with pytest.raises(UserError) as err:
        load_config(None, {"run": {"method": method}}, [setting])
    assert fragment in str(err.value)


@pytest.mark.parametrize("method,overrides,frames,fragment", [
    ("st_adapter", {"kernel": [5, 1, 1]}, 4, "temporal kernel size 5 does not fit 4 frames"),
    ("st_adapter", {"kernel": [1, 9, 9]}, 4, "spatial kernel 9x9 is larger than the 8x8 patch grid"),
    ("lst", {"reduction": 3}, 4, "lst: reduction 3 must divide the width (64)"),
])
def test_settings_that_do_not_fit_the_backbone_or_clip(method, overrides, frames, fragment):
    from vtfpar.errors import UserError

    with pytest.raises(UserError) as err:
        tiny_model(method, frames=frames, overrides=overrides)
    assert fragment in str(err.value)
    assert getattr(err.value, "key", "").startswith(f"methods.{method}.")  # a setting's: the run names where it was set


def test_vit_b16_parameter_counts(capsys):
    """Counts on the paper's backbone (random weights, nothing downloaded), printed for the docs."""
    from benchmark.config import load_config
    from vtfpar.backbone import load_clip
    from vtfpar.data.synthetic import SYNTHETIC_ATTRIBUTES

    def build(method):
        cfg = load_config(None, {"run": {"method": method, "dataset": "mars"}})
        return methods.build_model(load_clip("ViT-B-16", "none"), backbone="ViT-B-16", attributes=SYNTHETIC_ATTRIBUTES,
                                   method=method, method_cfg=cfg.method, frames=6)

    counts = {}
    for method in ALL:
        model = build(method)
        counts[method] = {k: sum(p.numel() for n, p in model.named_parameters()
                                 if p.requires_grad and n.startswith(k)) for k in ("encoder.", "text.", "")}
        del model
    with capsys.disabled():
        print("\nViT-B/16 trainable parameters (method part / all):")
        for m, c in counts.items():
            print(f"  {m:14s} {c['encoder.'] + c['text.']:>12,d} {c['']:>12,d}")
    # The paper's side networks: spatial ~6.7 M (PAPER.md, from the official code); the full image tower 85.8 M.
    spatial = sum(p.numel() for p in build("side_tuning").encoder.side_spatial.parameters())
    assert abs(spatial - 6.7e6) / 6.7e6 < 0.01
    assert abs(counts["full_finetune"]["encoder."] - 85.8e6) / 85.8e6 < 0.01
    assert counts["lora"]["encoder."] == 12 * 4 * 8 * (768 + 768)
    assert counts["vpt"]["encoder."] == 12 * 10 * 768
    d, L = 768, 12
    assert counts["bitfit"]["encoder."] == L * 11 * d + 2 * d
    assert counts["ssf"]["encoder."] == L * 22 * d + 6 * d
    assert counts["ia3"]["encoder."] == L * (d + d + 4 * d)  # l_k, l_v and l_ff: 55,296
    assert counts["st_adapter"]["encoder."] == L * (d * 384 + 384 + 384 * 4 + 384 * d + d)  # 7.11 M
    assert counts["aim"]["encoder."] == 3 * L * (2 * d * 192 + 192 + d) + 6 * d  # 10.66 M (paper: 11 M with head)
    assert counts["lst"]["encoder."] == L * block_params(96) + (L + 1) * (d * 96 + 96) + L + 2 * 96


def test_the_fusion_returns_each_attributes_own_text_token_and_the_text_side_encodes_the_attribute_sentences():
    """Eq. 5: text tokens first, then the video tokens; the head reads the fused token of attribute j for attribute j
    (with the Transformer blocks left out, exactly the j-th projected text feature, whatever the video). The frozen
    text encoder reads the prompt sentence of every attribute, in the attributes' order."""
    from vtfpar.data.synthetic import SYNTHETIC_ATTRIBUTES
    from vtfpar.text import tokenize

    torch.manual_seed(0)
    fusion = VideoTextFusion(16, 24, 32, 4, 1).eval()
    fusion.blocks = torch.nn.Identity()
    text = torch.randn(5, 16)
    for visual in (torch.randn(3, 7, 24), torch.randn(3, 7, 24) * 10):
        with torch.no_grad():
            out = fusion(text, visual)
            torch.testing.assert_close(out, fusion.norm(fusion.text_proj(text)).expand(3, -1, -1), rtol=0, atol=1e-6)
    model = tiny_model("frozen")
    expected = tokenize("clip-tiny", list(SYNTHETIC_ATTRIBUTES.sentences), model.text.tokens.shape[1])
    assert torch.equal(model.text.tokens, expected)
    assert len(set(SYNTHETIC_ATTRIBUTES.sentences)) == len(SYNTHETIC_ATTRIBUTES)  # one sentence per attribute
