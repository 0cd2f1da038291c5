"""Assemble the task model for a method: the same backbone, text features, fusion and head for all."""

from __future__ import annotations

import difflib

from torch import nn

from methods.registry import BuildContext, MethodSpec, get_method, method_named
from vtfpar.attributes import AttributeSet
from vtfpar.backbone import ClipVision, freeze
from vtfpar.errors import UserError, first_few
from vtfpar.fusion import FusionSpec
from vtfpar.model import VTFPAR, in_shared_part
from vtfpar.text import CachedText, ClipText, tokenize


def build_model(
    clip: nn.Module,
    *,
    backbone: str,
    attributes: AttributeSet,
    method: str,
    method_cfg: object,
    frames: int,
    fusion: FusionSpec | None = None,
    seed: int | None = None,
) -> VTFPAR:
    """Freeze ``clip`` entirely, let the method adapt it, and add fusion + head (always trained). ``seed``: the
    run's; fusion and head start from weights drawn from it alone, the same whatever the method (``vtfpar.fusion``).
    The method's own modules draw from the global generator (``seed_everything`` before the backbone loads)."""
    spec = get_method(method)
    vision = ClipVision(clip.visual)
    freeze(clip)
    text = ClipText(clip)
    ctx = BuildContext(frames=frames, backbone=backbone, sentences=tuple(attributes.sentences), text=text)
    encoder = _built(spec, "build", spec.build(vision, method_cfg, ctx), "video encoder (frames [B,T,3,H,W] -> "
                     "tokens [B,L,D]), e.g. a vtfpar.encoders.ClipTokenEncoder")
    text_side = (_built(spec, "build_text", spec.build_text(method_cfg, ctx), "text side (() -> features [M,D])")
                 if spec.build_text else CachedText(text, tokenize(backbone, list(ctx.sentences), text.context_length)))
    model = VTFPAR(encoder, text_side, len(attributes), fusion, seed=seed)
    _check_trains_its_own(spec, model)
    _check_gradients_can_reach(spec, model)
    _check_deployment_hooks(spec, model)
    return model


def _built(spec: MethodSpec, hook: str, module: object, what: str) -> nn.Module:
    """What a method's ``build`` / ``build_text`` returned, if it is a module with its width (``out_dim``), which
    the fusion is made for; else one line naming the method's file and the hook (a forgotten ``return`` would
    otherwise end in "'NoneType' object has no attribute 'out_dim'" from deep inside the model)."""
    if isinstance(module, nn.Module) and isinstance(getattr(module, "out_dim", None), int):
        return module
    got = "None" if module is None else f"a {type(module).__name__}" + (
        " without an int out_dim" if isinstance(module, nn.Module) else "")
    raise UserError(f"{method_named(spec)}: {hook}() returned {got}: it must return the "
                    f"{what}, an nn.Module whose out_dim is its output width")


def _check_trains_its_own(spec: MethodSpec, model: VTFPAR) -> None:
    """Besides fusion and head, exactly the method's own parameters train: those whose names hold one of its
    prefixes, and at least one of them if it declares any. A build that trains none would run, and be reported,
    as the frozen baseline under its own name; one that leaves other weights trainable (CLIP's, unfrozen by
    mistake, or a module it forgot to prefix) would fine-tune them under the name of a method that does not."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and not in_shared_part(n)]
    stray = [n for n in trainable if not any(x in n for x in spec.prefixes)]
    where = method_named(spec)
    if stray:
        raise UserError(f"{where}: its build leaves {len(stray)} parameter(s) trainable whose names hold none of its "
                        f"prefixes {list(spec.prefixes)} ({first_few(stray)}): freeze them, or name the method's own "
                        "modules with a prefix")
    if spec.prefixes and not trainable:
        raise UserError(f"{where}: its build leaves no trainable parameter whose "
                        f"name holds one of its prefixes {list(spec.prefixes)}, so it would train only fusion and "
                        "head: make its own parameters trainable (requires_grad) and named with a prefix, or "
                        "declare prefixes=() for a method that trains nothing of its own")


def _check_gradients_can_reach(spec: MethodSpec, model: VTFPAR) -> None:
    """No trainable parameter sits inside a CLIP tower that an encoder runs under ``no_grad``
    (``grad_through_clip`` false: ``ClipTokenEncoder(..., grad_through_clip=False)``, side tuning's frozen
    CLIP). Such a parameter never gets a gradient: the method would train and be reported as the frozen baseline
    under its own name. Training checks the general case (any parameter left without a gradient) on its first
    step; this one names the method's file before anything runs."""
    for name, module in model.named_modules():
        if getattr(module, "grad_through_clip", True) is False:
            stuck = [f"{name}.clip.{n}" for n, p in module.clip.named_parameters() if p.requires_grad]
            if stuck:
                raise UserError(f"{method_named(spec)}: {len(stuck)} trainable parameter(s) "
                                f"inside CLIP ({first_few(stuck)}) would never get a gradient: its "
                                f"{type(module).__name__} runs CLIP under no_grad; build it with "
                                "grad_through_clip=True")


HOOKS = ("deploy", "undeploy")


def _check_deployment_hooks(spec: MethodSpec, model: VTFPAR) -> None:
    """A module that takes part in deployment form defines both ``deploy()`` and ``undeploy()``
    (``VTFPAR.deployed``). One of them alone, or a misspelt one, would leave the model folded after an
    evaluation, or measure and evaluate the training form as if it were the deployment form, without a word."""
    for kind in {type(m) for m in model.modules()}:
        if kind.__module__.startswith("torch."):
            continue
        has = [h for h in HOOKS if callable(getattr(kind, h, None))]
        near = [n for n in dir(kind) if callable(getattr(kind, n, None)) and not any(h in n for h in HOOKS)
                and difflib.get_close_matches(n, HOOKS, n=1, cutoff=0.8)]
        if len(has) == 1:
            what = (f"defines {has[0]}() but no {HOOKS[has[0] == 'deploy']}()"
                    + (f" (is {near[0]}() misspelt?)" if near else ""))
        elif near and not has:
            what = f"defines {near[0]}(), which is neither deploy() nor undeploy()"
        else:
            continue
        raise UserError(f"{method_named(spec)}: {kind.__name__} {what}: a deployment form is "
                        "the pair deploy() / undeploy() (vtfpar.model), both or neither")
