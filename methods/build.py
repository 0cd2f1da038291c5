"""Assemble the task model for a method: the same backbone, text features, fusion and head for all."""

from __future__ import annotations

import difflib

from torch import nn

from methods.registry import BuildContext, MethodSpec, get_method, method_file
from vtfpar.attributes import AttributeSet
from vtfpar.backbone import ClipVision, freeze
from vtfpar.errors import UserError
from vtfpar.fusion import FusionSpec
from vtfpar.model import VTFPAR
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
) -> VTFPAR:
    """Freeze ``clip`` entirely, let the method adapt it, and add fusion + head (always trained)."""
    spec = get_method(method)
    vision = ClipVision(clip.visual)
    freeze(clip)
    text = ClipText(clip)
    ctx = BuildContext(frames=frames, backbone=backbone, sentences=tuple(attributes.sentences), text=text)
    encoder = spec.build(vision, method_cfg, ctx)
    text_side = (spec.build_text(method_cfg, ctx) if spec.build_text
                 else CachedText(text, tokenize(backbone, list(ctx.sentences), text.context_length)))
    model = VTFPAR(encoder, text_side, len(attributes), fusion)
    _check_trains_its_own(spec, model)
    _check_deployment_hooks(spec, model)
    return model


def _check_trains_its_own(spec: MethodSpec, model: VTFPAR) -> None:
    """A method that declares prefixes trains at least one parameter carrying one: otherwise it would run, and
    be reported, as the frozen baseline under its own name."""
    if not spec.prefixes:
        return
    if not any(p.requires_grad and any(x in n for x in spec.prefixes) for n, p in model.named_parameters()
               if not n.startswith(("fusion.", "head."))):
        raise UserError(f"method '{spec.name}' ({method_file(spec)}): its build leaves no trainable parameter whose "
                        f"name holds one of its prefixes {list(spec.prefixes)}, so it would train only fusion and "
                        "head: make its own parameters trainable (requires_grad) and named with a prefix, or "
                        "declare prefixes=() for a method that trains nothing of its own")


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
        raise UserError(f"method '{spec.name}' ({method_file(spec)}): {kind.__name__} {what}: a deployment form is "
                        "the pair deploy() / undeploy() (vtfpar.model), both or neither")
