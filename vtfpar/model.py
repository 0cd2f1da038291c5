"""VTFPAR: a video encoder + text features + fusion Transformer + attribute head.

The model is the same for every tuning method; only ``encoder`` (and, for prompt tuning,
``text``) differ. ``forward`` returns logits; ``predict`` applies the sigmoid of eq. 5.

**Deployment form.** A trained model can fold what a method adds into a cheaper equivalent for
inference: LoRA merged into the frozen weights, prompt-tuned text features computed once, the
side networks' layer-norm affine folded into their projections. Any submodule may take part by
defining ``deploy()`` (fold, in place, without changing outputs beyond float rounding) and
``undeploy()`` (restore the training form exactly, bit for bit). ``VTFPAR.deployed()`` is the
context in which evaluation, prediction and every inference measurement run.

Under autocast (bf16/fp16) the deployment form also holds the weights of the video side's matrix-product
layers in the autocast dtype (``weights_held_in``): autocast would cast each fp32 weight on every call (it
caches casts only of tensors that require grad, and only within one autocast region), a kernel per weight
per forward pass; held, the outputs are bit-identical and those kernels are gone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from vtfpar.errors import UserError
from vtfpar.fusion import SHARED_START, AttributeHead, FusionSpec, VideoTextFusion, fold_dropped_shifts


class VTFPAR(nn.Module):
    def __init__(self, encoder: nn.Module, text: nn.Module, num_attributes: int, fusion: FusionSpec | None = None,
                 seed: int | None = None):
        """``seed``: the run's; fusion and head then start from weights drawn from it alone, the same under every
        method (``vtfpar.fusion``). None draws them from the global generator."""
        super().__init__()
        # how fusion and head drew their first weights (vtfpar.fusion.SHARED_START); a resumed run sets its checkpoint's
        self.fusion_start = SHARED_START if seed is not None else 1
        fusion = fusion or FusionSpec()
        self.encoder = encoder
        self.text = text
        self.fusion = VideoTextFusion(text.out_dim, encoder.out_dim, fusion.fusion_width, fusion.fusion_heads,
                                      fusion.fusion_depth, fusion.drop_path, seed=seed)
        self.head = AttributeHead(num_attributes, fusion.fusion_width, seed=seed)
        # checkpoints of earlier versions hold two zero-gradient shifts: folded where they load
        self.register_load_state_dict_pre_hook(_fold_dropped_shifts)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B,T,3,H,W] -> attribute logits [B,M]."""
        tokens = self.encoder(frames)
        if tokens.dim() != 3 or tokens.shape[0] != frames.shape[0] or tokens.shape[2] != self.encoder.out_dim:
            # A method's encoder of another shape would otherwise fail deep inside the fusion: named here, with
            # its file and what it owes.
            kind = type(self.encoder)
            raise UserError(f"{kind.__module__.replace('.', '/')}.py: {kind.__name__} returned tokens of shape "
                            f"{list(tokens.shape)} for frames of shape {list(frames.shape)}: a video encoder maps "
                            f"frames [B,T,3,H,W] to tokens [B,L,D], D its out_dim ({self.encoder.out_dim})")
        return self.head(self.fusion(self.text(), tokens))

    @torch.no_grad()
    def predict(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(frames).float())

    @contextlib.contextmanager
    def deployed(self, compute_dtype: torch.dtype | None = None) -> Iterator[VTFPAR]:
        """Eval mode in deployment form; on exit the training form and the previous mode come back.
        Nested use keeps the outer form; a failure while folding unfolds what was folded.

        ``compute_dtype``: the autocast dtype inference will run under (``benchmark.step.compute_dtype``);
        the video side's matrix-product weights are then held in it (``weights_held_in``). Leave it None
        for inference without autocast."""
        if getattr(self, "_deployed", False):
            yield self
            return
        was_training = self.training
        self.eval()
        folded = []
        self._deployed = True
        try:
            with torch.no_grad():
                for module in self.modules():
                    if callable(getattr(module, "deploy", None)):
                        folded.append(module)  # before deploy(): undeploy() also undoes a partial fold
                        module.deploy()
            with weights_held_in(compute_dtype, self.encoder, self.fusion, self.head):
                yield self
        finally:
            error = None
            with torch.no_grad():
                for module in reversed(folded):  # every module restored even if one of them fails
                    try:
                        module.undeploy()
                    except BaseException as e:  # noqa: BLE001 - re-raised below, after the rest are restored
                        error = error or e
            self._deployed = False
            self.train(was_training)
            if error is not None:
                raise error


def _fold_dropped_shifts(model: VTFPAR, state: dict, prefix: str, *_) -> None:
    fold_dropped_shifts(state, prefix)


MATMUL_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@contextlib.contextmanager
def weights_held_in(dtype: torch.dtype | None, *modules: nn.Module, offload: bool | None = None
                    ) -> Iterator[None]:
    """Inside: every linear and convolution layer in ``modules`` computes with its fp32 weight and bias held
    in ``dtype`` (the autocast dtype): exactly the values autocast would cast them to on each call. On exit
    the layers have their own fp32 Parameters back, bit for bit.

    Only for inference under autocast (``dtype`` None: nothing changes). Autocast runs these layers in
    ``dtype`` whatever their weights' dtype, so outputs are bit-identical; what goes is one cast kernel per
    weight per forward pass. The held copies are new frozen Parameters put in the layers' places; the
    originals keep their dtype, device and autograd identity (DistributedDataParallel's gradient hooks hang on
    it, and are lost if a parameter's data changes dtype or device). With ``offload`` (default: when not on
    the CPU) their values wait in host memory meanwhile, so the device holds only the held copies."""
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    offloaded: list[tuple[nn.Parameter, torch.Tensor]] = []
    held: dict[int, nn.Parameter] = {}
    try:
        if dtype is not None:
            with torch.no_grad():
                for layer in (m for root in modules for m in root.modules() if isinstance(m, MATMUL_LAYERS)):
                    for name in ("weight", "bias"):
                        p = layer._parameters.get(name)
                        if p is None or p.dtype != torch.float32:  # originals stay fp32, even when shared
                            continue
                        if id(p) not in held:
                            held[id(p)] = nn.Parameter(p.detach().to(dtype), requires_grad=False)
                            if p.device.type != "cpu" if offload is None else offload:
                                offloaded.append((p, p.data.to("cpu", copy=True)))
                                p.data = p.data.new_empty(0)  # same dtype and device: autograd identity kept
                        swapped.append((layer, name, p))
                        layer._parameters[name] = held[id(p)]
        yield
    finally:
        error = None
        for layer, name, p in reversed(swapped):
            layer._parameters[name] = p
        # The held copies go before the originals come back, so that the device never holds both; so does what
        # a layer derived from them (CLIP's cached q/k/v concatenation, ``ClipVision.clear_caches``).
        if held:
            for module in (m for root in modules for m in root.modules()):
                if callable(getattr(module, "clear_caches", None)):
                    module.clear_caches()
        held.clear()
        with torch.no_grad():
            for p, home in reversed(offloaded):  # each one restored even if another fails
                try:
                    p.data = home.to(p.device)
                except BaseException as e:  # noqa: BLE001 - re-raised below, after the rest are restored
                    error = error or e
        if error is not None:
            raise error


Replaced = list[tuple[nn.Module, str, nn.Module]]


def replace_children(root: nn.Module, kind: type | tuple[type, ...], make) -> Replaced:
    """Every submodule of ``root`` of type ``kind`` replaced in its parent by ``make(module)``; returns
    ``(parent, name, original)`` for ``restore_children`` (methods wrap layers, deployment forms merge them)."""
    replaced = []
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, kind):
                setattr(parent, name, make(child))
                replaced.append((parent, name, child))
    return replaced


def restore_children(replaced: Replaced) -> None:
    """Put back what ``replace_children`` replaced, last first."""
    for parent, name, original in reversed(replaced):
        setattr(parent, name, original)


class InPlaceFold:
    """What a deployment form changes in place, and how to undo it exactly: frozen tensors overwritten
    with folded values (each with a host copy that puts it back bit for bit) and children replaced.
    Folding into the frozen weights themselves (not into copies beside them) keeps one copy of the
    backbone on the device, so a merged model's inference memory is the frozen model's."""

    def __init__(self):
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._replaced: Replaced = []

    def begin(self) -> None:
        """Start a fold; one still in place means ``deploy()`` ran twice without ``undeploy()``."""
        if self._saved or self._replaced:
            raise RuntimeError("deploy() called twice without undeploy(): use VTFPAR.deployed()")

    def write(self, tensor: torch.Tensor, value: torch.Tensor) -> None:
        self._saved.append((tensor, tensor.detach().to("cpu", copy=True)))
        tensor.detach().copy_(value)

    def replace_children(self, root: nn.Module, kind: type | tuple[type, ...], make) -> None:
        self._replaced += replace_children(root, kind, make)

    def undo(self) -> None:
        """Children and overwritten tensors back as they were, last first."""
        restore_children(self._replaced)
        self._replaced = []
        for tensor, saved in reversed(self._saved):
            tensor.detach().copy_(saved)
        self._saved = []


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The part of the state that is not the frozen backbone: trainable parameters and all buffers.

    Frozen parameters are left out; they come back from the backbone reference in the run config.
    """
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in frozen}


def non_finite(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """The names of the tensors holding a NaN or an infinity (tensors on one device; one host sync in all)."""
    pairs = list(named)
    if not pairs:
        return []
    finite = torch.stack([torch.isfinite(t.detach()).all() for _, t in pairs]).tolist()
    return [n for (n, _), ok in zip(pairs, finite, strict=True) if not ok]


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor], source: str,
                         fix: str = "delete it or rerun with --force") -> None:
    """Load what ``trainable_state_dict`` saved; anything missing or unexpected is an error naming ``source``
    and ending in ``fix`` (what the command that reads it offers)."""
    from vtfpar.errors import UserError, first_few, one_line

    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{source} holds no weights of a model (not a table of tensors): {fix}")
    # Training stops on a non-finite loss or weights before it saves, so NaN or inf here is a damaged file: it
    # would predict nothing (every metric 0) without a word.
    broken = non_finite((k, v) for k, v in state.items() if v.is_floating_point())
    if broken:
        raise UserError(f"{source} holds NaN or infinite weights ({first_few(broken)}), which training never "
                        f"saves: {fix}")
    floating = {k for k, v in model.state_dict().items() if v.is_floating_point()}
    whole = [f"{k} ({str(v.dtype).removeprefix('torch.')})" for k, v in state.items()
             if k in floating and not v.is_floating_point()]  # load_state_dict would cast them without a word
    if whole:
        raise UserError(f"{source} holds whole numbers where the model's weights are floating point "
                        f"({first_few(whole)}), which training never saves: {fix}")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of another shape: another backbone, method or attribute set
        raise UserError(f"{source} does not match this model ({one_line(exc).split(': ', 1)[-1][:160]}): "
                        f"{fix}") from None
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    missing = [k for k in result.missing_keys if k not in frozen]
    if result.unexpected_keys or missing:
        raise UserError(f"{source} does not match this model (unexpected {result.unexpected_keys[:3]}, missing "
                        f"{missing[:3]}): {fix}")


SHARED_PARTS = ("fusion", "head")
"""The modules of ``VTFPAR`` that every method trains alike; what else trains is the method's own."""


def in_shared_part(name: str) -> bool:
    """Whether the parameter ``name`` (of a ``VTFPAR``) belongs to ``SHARED_PARTS``, not to the method."""
    return name.split(".", 1)[0] in SHARED_PARTS


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``trainable`` and ``total`` parameters (each tensor once), ``trainable_pct``, and ``method``: the trainable
    parameters outside ``SHARED_PARTS``, what the tuning method adds (0 for the frozen baseline), which is what
    PEFT papers report; the shared part is the same for every method but for the video projection, which a method
    whose tokens already have the fusion's width does not need."""
    named = {id(p): (n, p) for n, p in model.named_parameters()}.values()
    total = sum(p.numel() for _, p in named)
    trainable = sum(p.numel() for _, p in named if p.requires_grad)
    own = sum(p.numel() for n, p in named if p.requires_grad and not in_shared_part(n))
    return {"trainable": trainable, "total": total, "trainable_pct": round(100.0 * trainable / max(total, 1), 4),
            "method": own}
