"""Contrastive pre-training of a tiny open_clip model on synthetic frame-caption pairs.

Without network there are no real CLIP weights, and a randomly initialised frozen backbone
handicaps every frozen-backbone method. ``pretrain_clip`` gives the embedded default a CLIP of
its own: the registered ``clip-tiny`` config trained with open_clip's own ``ClipLoss`` (the
symmetric InfoNCE of CLIP) on single frames drawn by the synthetic generator and captions that
describe a random subset of each frame's attributes in varied wording (``data.captions``).

The pre-training draw never overlaps the downstream one: frames come from the ``pretrain`` split
(and held-out pairs from ``val``) under their own seed, while the attribute task uses the
``train``/``test`` splits. Everything is a function of the seed (CPU, fixed thread count).

``evaluate`` reports retrieval recall on held-out pairs and zero-shot attribute classification
(prompt per class, argmax of cosine similarity) against the majority-class rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from vtfpar.backbone import input_size, register_model_configs
from vtfpar.data.captions import caption, zero_shot_prompts
from vtfpar.data.synthetic import CLIP_MEAN, CLIP_STD, SyntheticPedestrians
from vtfpar.errors import UserError

# Pairs are rendered up front and kept in memory: a million 64x64 frames alone take 12 GB.
MAX_PAIRS = 1_000_000
# The retrieval numbers compare every held-out image with every caption: a [heldout, heldout] fp32 matrix, 1.6 GB
# at this bound.
MAX_HELDOUT = 20_000


@dataclass
class PretrainConfig:
    model: str = "clip-tiny"
    seed: int = 1000  # the downstream task uses seeds 0, 1, 2 ...; 1000+ keeps the draws apart
    images: int = 20000  # distinct training pairs (frames from the "pretrain" split)
    heldout: int = 1000  # held-out pairs for the zero-shot numbers ("val" split)
    epochs: int = 24
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    captions_per_image: int = 4  # a fresh caption per epoch, cycling through this many

    def __post_init__(self):
        for name, option, least in (("images", "--images", 1), ("heldout", "--heldout", 1), ("epochs", "--epochs", 1),
                                    ("batch_size", "--batch-size", 2), ("captions_per_image", None, 1)):
            value = getattr(self, name)
            if value < least:
                why = ": a contrastive batch needs negatives" if name == "batch_size" else ""
                raise ValueError(f"pretrain: {name}{f' ({option}, {value})' if option else f' ({value})'} must be "
                                 f">= {least}{why}")
        if self.images > MAX_PAIRS:
            raise ValueError(f"pretrain: images (--images, {self.images}) must be <= {MAX_PAIRS:,}: the pairs are "
                             "drawn up front and held in memory")
        if self.heldout > MAX_HELDOUT:
            raise ValueError(f"pretrain: heldout (--heldout, {self.heldout}) must be <= {MAX_HELDOUT:,}: every "
                             "held-out pair is compared with every other")
        if self.heldout < 5:
            raise ValueError(f"pretrain: heldout (--heldout, {self.heldout}) must be at least 5: the zero-shot "
                             "numbers include recall@5")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"pretrain: seed (--seed, {self.seed}) must be in [0, 2**63)")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"pretrain: lr (--lr, {self.lr}) must be a positive number")
        if self.batch_size > self.images:
            raise ValueError(f"pretrain: batch_size (--batch-size, {self.batch_size}) must not exceed images "
                             f"(--images, {self.images})")


def render_pairs(n: int, size: int, seed: int, split: str, captions_per_image: int,
                 progress: Callable[[int], None] | None = None) -> tuple[torch.Tensor, list[list[str]], list[dict]]:
    """``n`` single frames (uint8 [n,3,S,S]) with ``captions_per_image`` captions each, and their labels."""
    ds = SyntheticPedestrians(n, 1, size, seed=seed, split=split)
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    captions: list[list[str]] = []
    for i in range(n):
        frame = ds.raw(i)[0]
        images[i] = torch.from_numpy(np.round(frame * 255).astype(np.uint8).transpose(2, 0, 1))
        rng = np.random.default_rng([seed, 7, i])
        captions.append([caption(ds._labels[i], rng) for _ in range(captions_per_image)])
        if progress is not None:
            progress(1)
    return images, captions, ds._labels


def to_input(images: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 frames -> CLIP-normalised float, optionally mirrored where ``flip`` is True."""
    x = images.float() / 255.0
    if flip is not None:
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def create(cfg: PretrainConfig) -> torch.nn.Module:
    register_model_configs()
    torch.manual_seed(cfg.seed)
    return open_clip.create_model(cfg.model, pretrained=None, output_dict=True)


def pretrain_clip(cfg: PretrainConfig, log: Callable[[str], None] = print,
                  bar: Callable[[str, int], Callable[[int], None]] | None = None) -> tuple[torch.nn.Module, list[dict]]:
    """Train ``cfg.model`` contrastively; returns the model (eval mode) and one log row per epoch."""
    model = create(cfg)
    size = input_size(cfg.model)
    tokenizer = open_clip.get_tokenizer(cfg.model)
    images, caps, _ = render_pairs(cfg.images, size, cfg.seed, "pretrain", cfg.captions_per_image,
                                   bar("drawing frame-caption pairs", cfg.images) if bar else None)
    tokens = torch.stack([tokenizer(c) for c in caps])  # [n, captions_per_image, L]
    loss_fn = open_clip.loss.ClipLoss()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    steps_per_epoch = cfg.images // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    step = 0
    advance = bar("contrastive pre-training", total) if bar else None
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(cfg.images, generator=gen)
        flips = torch.rand(cfg.images, generator=gen) < 0.5
        losses = []
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * step / total))
            for g in opt.param_groups:
                g["lr"] = lr
            out = model(to_input(images[idx], flips[idx]), tokens[idx, epoch % cfg.captions_per_image])
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
            if not math.isfinite(value := loss.item()):  # a diverged model: nothing after this step is worth keeping
                raise UserError(f"pre-training diverged: the loss is {value} at step {step + 1} of {total} (epoch "
                                f"{epoch + 1}, learning rate {lr:.3g}, --lr {cfg.lr:g}): lower --lr; nothing was "
                                "written")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():  # as in CLIP: the temperature is clipped at 100
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(value)
            step += 1
            if advance is not None:
                advance(1)
        row = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "lr": lr,
               "logit_scale": model.logit_scale.detach().exp().item()}
        history.append(row)
        log(f"epoch {row['epoch']}  loss {row['loss']:.4f}  logit_scale {row['logit_scale']:.1f}")
    return model.eval(), history


@torch.no_grad()
def evaluate(model: torch.nn.Module, cfg: PretrainConfig, batch: int = 500) -> dict:
    """Held-out retrieval (R@1, R@5 both ways) and zero-shot attribute classification."""
    size = input_size(cfg.model)
    tokenizer = open_clip.get_tokenizer(cfg.model)
    images, caps, labels = render_pairs(cfg.heldout, size, cfg.seed, "val", 1)
    model.eval()
    img = torch.cat([F.normalize(model.encode_image(to_input(images[i:i + batch])), dim=-1)
                     for i in range(0, len(images), batch)])
    txt = F.normalize(model.encode_text(tokenizer([c[0] for c in caps])), dim=-1)
    sim = img @ txt.T
    target = torch.arange(len(img))

    def recall(s: torch.Tensor, k: int) -> float:
        return float((s.topk(k, dim=1).indices == target[:, None]).any(1).float().mean())

    out = {"heldout_pairs": len(img), "chance_r1": 1.0 / len(img),
           "image_to_text_r1": recall(sim, 1), "image_to_text_r5": recall(sim, 5),
           "text_to_image_r1": recall(sim.T, 1), "text_to_image_r5": recall(sim.T, 5), "zero_shot": {}}
    for group, (prompts, field) in zero_shot_prompts().items():
        p = F.normalize(model.encode_text(tokenizer(prompts)), dim=-1)
        pred = (img @ p.T).argmax(1).numpy()
        if field.startswith("binary:"):
            truth = np.array([int(lab["binary"][int(field.split(":")[1])]) for lab in labels])
        else:
            truth = np.array([lab[field] for lab in labels])
        majority = np.bincount(truth, minlength=len(prompts)).max() / len(truth)
        out["zero_shot"][group] = {"accuracy": float((pred == truth).mean()), "majority": float(majority),
                                   "classes": len(prompts)}
    return out

