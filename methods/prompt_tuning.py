"""Prompt tuning of the text side (Zhou et al., "Learning to Prompt for Vision-Language Models",
CoOp, IJCV 2022), optionally with shallow visual prompts (Jia et al., VPT).

Learnable context vectors replace the first ``context`` word embeddings of every attribute
sentence ("X X X X The attribute age of this pedestrian is less than 40"); the frozen text
encoder then runs in every training step, with a graph through it, since its output is no longer
a constant. What stays frozen is cached: the token embeddings of the sentences. The context is
shared by all attributes (CoOp's unified context) and initialised N(0, 0.02) as in CoOp.
Defaults: 16 context vectors (CoOp), no visual prompts (``visual_tokens = 0``).

Deployment form: once trained, the context is constant, so the text features are computed once
when the model enters deployment form and reused for every clip; inference then costs what it
costs every method that does not tune the text side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from methods.registry import BuildContext, MethodSpec, Variant, register_method
from methods.vpt import visual_prompts
from vtfpar.backbone import ClipVision
from vtfpar.encoders import ClipTokenEncoder
from vtfpar.errors import UserError
from vtfpar.settings import check_settings, setting
from vtfpar.text import ClipText, tokenize


@dataclass
class PromptTuningConfig:
    context: int = setting(16, ge=1)  # learnable text context vectors (CoOp: 16)
    visual_tokens: int = setting(0, ge=0)  # optional shallow visual prompt tokens (0 = off)

    def __post_init__(self):
        check_settings(self, "", method="prompt_tuning")


class PromptedText(nn.Module):
    def __init__(self, text: ClipText, tokens: torch.Tensor, context: int):
        super().__init__()
        self.encoder = text
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("embedded", torch.empty(0), persistent=False)
        self.prompt_ctx = nn.Parameter(torch.randn(context, text.width) * 0.02)
        self.out_dim = text.out_dim
        self.deployed_features: torch.Tensor | None = None

    def forward(self) -> torch.Tensor:
        if self.deployed_features is not None:
            return self.deployed_features
        if self.embedded.numel() == 0:
            with torch.no_grad():
                self.embedded = self.encoder.token_embedding(self.tokens)
        return self.encoder(self.tokens, context=self.prompt_ctx, embedded=self.embedded)

    def deploy(self) -> None:
        self.deployed_features = self().float()

    def undeploy(self) -> None:
        self.deployed_features = None


def build(vision: ClipVision, cfg: PromptTuningConfig, ctx: BuildContext) -> ClipTokenEncoder:
    if cfg.visual_tokens:
        return ClipTokenEncoder(vision, grad_through_clip=True,
                                before_block=visual_prompts(vision, cfg.visual_tokens, False, 0.0))
    return ClipTokenEncoder(vision, grad_through_clip=False)


def build_text(cfg: PromptTuningConfig, ctx: BuildContext) -> PromptedText:
    try:
        tokens = tokenize(ctx.backbone, list(ctx.sentences), ctx.text.context_length, prefix_tokens=cfg.context)
    except UserError as exc:
        raise UserError(f"prompt_tuning: {exc}; lower methods.prompt_tuning.context") from None
    return PromptedText(ctx.text, tokens, cfg.context)


register_method(MethodSpec(
    name="prompt_tuning", config_cls=PromptTuningConfig, build=build, build_text=build_text,
    prefixes=("prompt_", "vpt_"),
    summary="learnable text context (CoOp), optional visual prompts", source="Zhou et al. 2022", order=50,
    variants=(Variant("visual", {"visual_tokens": 4}),),
))
