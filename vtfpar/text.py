"""The CLIP text side: attribute sentences -> one feature per attribute.

``ClipText`` holds the text tower of an open_clip CLIP model and encodes token ids, optionally
with learned context vectors spliced in after the start token (CoOp-style prompt tuning).
``CachedText`` is what every method that does not tune the text uses: the frozen encoder runs
**once** per model (the official code re-encodes the sentences on every forward pass) and the
features are kept as a non-persistent buffer, so they are neither saved in checkpoints nor
recomputed per step.
"""

from __future__ import annotations

import torch
from torch import nn

from vtfpar.backbone import clip_tokenizer, register_model_configs
from vtfpar.errors import UserError


class ClipText(nn.Module):
    def __init__(self, clip: nn.Module):
        super().__init__()
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.pool_type = getattr(clip, "text_pool_type", "argmax")
        self._global_pool = register_model_configs().transformer.text_global_pool  # open_clip's, as its encode_text
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.width = clip.token_embedding.embedding_dim
        self.context_length = clip.positional_embedding.shape[0]
        proj = clip.text_projection
        self.out_dim = proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]

    def forward(self, tokens: torch.Tensor, context: torch.Tensor | None = None,
                embedded: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [M,L] -> features [M,out_dim].

        ``context`` [n,width] replaces the embeddings of tokens 1..n (CoOp); ``embedded`` are
        precomputed ``token_embedding(tokens)`` (frozen, so callers may cache them).
        """
        x = self.token_embedding(tokens) if embedded is None else embedded
        if context is not None:
            n = context.shape[0]
            x = torch.cat([x[:, :1], context.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1), x[:, 1 + n:]], 1)
        x = x + self.positional_embedding.to(x.dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        x = self._global_pool(x, tokens, self.pool_type)
        proj = self.text_projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj


def tokenize(backbone: str, sentences: list[str], context_length: int, prefix_tokens: int = 0) -> torch.Tensor:
    """Token ids of ``sentences``; ``prefix_tokens`` placeholder words ("X") are put first for CoOp.

    Raises ``UserError`` if a sentence does not fit (its end-of-text token would be cut off).
    """
    tokenizer = clip_tokenizer(backbone, context_length)
    prefix = "X " * prefix_tokens
    tokens = tokenizer([prefix + s for s in sentences])
    too_long = [s for s, row in zip(sentences, tokens, strict=True) if row[-1] != 0]
    if too_long:
        raise UserError(f"attribute sentence(s) longer than the text encoder's {context_length} tokens"
                        f"{f' with {prefix_tokens} context vectors' if prefix_tokens else ''}: {too_long[0]!r}")
    return tokens


class CachedText(nn.Module):
    """Frozen text features, computed on first use and cached (``encode_calls`` counts the runs)."""

    def __init__(self, text: ClipText, tokens: torch.Tensor):
        super().__init__()
        self.encoder = text
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("features", torch.empty(0), persistent=False)
        self.encode_calls = 0
        self.out_dim = text.out_dim

    def forward(self) -> torch.Tensor:
        if self.features.numel() == 0:  # fp32 whether the first caller runs under autocast or not
            with torch.no_grad(), torch.autocast(self.tokens.device.type, enabled=False):
                self.features = self.encoder(self.tokens).float()
            self.encode_calls += 1
        return self.features

    def deploy(self) -> None:
        """Fill the cache outside ``inference_mode`` (a cache made there could not be used in training)."""
        self()

    def undeploy(self) -> None:
        pass
