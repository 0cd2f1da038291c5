"""LoRA (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022) through peft.

Each targeted linear layer computes ``W x + (alpha / r) B A x`` with frozen W, trainable
A [r, d_in] (Kaiming-uniform init) and B [d_out, r] (zero init, so training starts from CLIP).
Defaults: r = 8, alpha = 16, no dropout, targets q, k, v and out of every attention block.

Route: the image tower's ``nn.MultiheadAttention`` modules are converted to explicit q/k/v/out
``nn.Linear`` layers (``vtfpar.backbone.SplitAttention``, numerically identical), so peft's
plain ``nn.Linear`` LoRA applies. peft's special path for ``nn.MultiheadAttention`` has been
reported to apply the ``out_proj`` update twice (peft issue #3774), and ``out_proj`` alone
cannot be adapted through it at all, since ``nn.MultiheadAttention`` never calls ``out_proj``.
Targets: q, k, v, out (attention) and fc1 / fc2 (the MLP's ``c_fc`` / ``c_proj``).

Deployment form: ``W + (alpha / r) B A`` is written into each adapted layer's frozen W in place and
the layer is replaced by its base ``nn.Linear``, so inference costs exactly the frozen backbone, in
operators and in memory. A host copy of W is kept meanwhile: leaving deployment form puts W and the
LoRA layers back as they were, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from methods.registry import BuildContext, MethodSpec, Variant, register_method
from vtfpar.backbone import ClipVision
from vtfpar.encoders import ClipTokenEncoder, FoldingTokenEncoder
from vtfpar.errors import UserError
from vtfpar.model import InPlaceFold
from vtfpar.settings import check_settings, setting

TARGETS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "out": "out_proj", "fc1": "c_fc", "fc2": "c_proj"}


@dataclass
class LoraMethodConfig:
    rank: int = setting(8, ge=1)  # r
    alpha: float = setting(16.0, gt=0.0)  # scaling alpha / r
    dropout: float = setting(0.0, ge=0.0, lt=1.0)
    targets: list[str] = field(default_factory=lambda: ["q", "k", "v", "out"])  # of: q k v out fc1 fc2

    def __post_init__(self):
        check_settings(self, "", method="lora")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise UserError(f"lora: unknown target module(s) {unknown or '(none given)'}: choose from "
                            f"{', '.join(TARGETS)}")
        # A set: [q, q] and [v, q] are the runs [q] and [q, v] are (one run id, one row of the report).
        self.targets = [t for t in TARGETS if t in self.targets]


class LoraTokenEncoder(FoldingTokenEncoder):
    """CLIP tokens through a LoRA-adapted tower; merges the adapters in deployment form."""

    def fold(self, into: InPlaceFold) -> None:
        from peft.tuners.lora import LoraLayer

        for layer in [m for m in self.clip.modules() if isinstance(m, LoraLayer)]:
            base = layer.get_base_layer()
            into.write(base.weight, base.weight + layer.get_delta_weight("default").to(base.weight.dtype))
        into.replace_children(self.clip, LoraLayer, LoraLayer.get_base_layer)


def build(vision: ClipVision, cfg: LoraMethodConfig, ctx: BuildContext) -> ClipTokenEncoder:
    from peft import LoraConfig, inject_adapter_in_model  # here: peft's import (transformers') takes seconds

    names = sorted({TARGETS[t] for t in cfg.targets})
    present = {n.rsplit(".", 1)[-1] for n, _ in vision.named_modules()}
    missing = [n for n in names if n not in present]
    if missing:
        raise UserError(f"lora: target module(s) {missing} do not exist in backbone {ctx.backbone}")
    peft_cfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=names,
                          bias="none")
    inject_adapter_in_model(peft_cfg, vision)
    for n, p in vision.named_parameters():
        p.requires_grad_("lora_" in n)
    return LoraTokenEncoder(vision)


register_method(MethodSpec(
    name="lora", config_cls=LoraMethodConfig, build=build, prefixes=("lora_",),
    summary="low-rank updates of the image encoder's attention / MLP (peft)", source="Hu et al. 2022", order=20,
    variants=(Variant("mlp", {"targets": ["fc1", "fc2"]}),),
))
