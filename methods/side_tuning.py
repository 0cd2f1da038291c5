"""Side tuning, the VTFPAR++ method (Wang et al., "Spatio-Temporal Side Tuning Pre-trained
Foundation Models for Video-based Pedestrian Attribute Recognition", eq. 2-4).

CLIP's image and text encoders stay frozen and run without an autograd graph. A spatial side
network (per frame, across CLIP layers) and a temporal side network (per CLIP layer, across
frames) read CLIP's tokens after the tapped layers and are the only trained part of the video
side. Defaults follow the paper: width 240, 6 heads, spatial depth 8, taps [0, 3, 6, 9, 11] on
ViT-B/16 (evenly spaced on other depths), one temporal block per frame.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from methods.registry import BuildContext, MethodSpec, Variant, register_method
from vtfpar.backbone import ClipVision, default_taps, vision_layers
from vtfpar.encoders import SideTuningEncoder
from vtfpar.errors import UserError
from vtfpar.settings import MAX_BLOCKS, SettingError, check_settings, setting
from vtfpar.side import SpatialSideNetwork, TemporalSideNetwork


@dataclass
class SideTuningConfig:
    width: int = setting(240, ge=1)  # side network width (paper: 240)
    heads: int = setting(6, ge=1)  # attention heads (paper: 6)
    depth: int = setting(8, ge=1, le=MAX_BLOCKS)  # spatial side network depth (paper: 8)
    taps: list[int] = field(default_factory=list)  # CLIP layers read; empty = [0,3,6,9,11]-style default
    drop_path: float = setting(0.0, ge=0.0, lt=1.0)  # stochastic depth inside the side networks
    recompute: bool = False  # activation checkpointing of side blocks: less memory, ~1 more side forward

    def __post_init__(self):
        check_settings(self, "", method="side_tuning")
        if self.width % self.heads:
            raise UserError(f"side_tuning: width ({self.width}) must be a multiple of heads ({self.heads})")


def canonical(cfg: SideTuningConfig, backbone: str) -> SideTuningConfig:
    """Taps written out as the backbone's default are the default (``[]``): one model, one run id."""
    layers = vision_layers(backbone)
    if cfg.taps and layers is not None and list(cfg.taps) == default_taps(layers):
        return dataclasses.replace(cfg, taps=[])
    return cfg


def build(vision: ClipVision, cfg: SideTuningConfig, ctx: BuildContext) -> SideTuningEncoder:
    taps = list(cfg.taps) or default_taps(vision.layers)
    bad = [t for t in taps if not 0 <= t <= vision.layers]
    if bad:
        raise SettingError("methods.side_tuning.taps",
                           f"side_tuning: taps {bad} are not layers of this {vision.layers}-layer backbone: each "
                           f"tap is 0 (patch embedding) .. {vision.layers} (last block); fix "
                           "methods.side_tuning.taps, or leave it [] for the default")
    if len(taps) > cfg.depth:
        raise SettingError("methods.side_tuning.depth",
                           f"side_tuning: {len(taps)} taps need depth >= {len(taps)}, got depth {cfg.depth}; raise "
                           f"methods.side_tuning.depth to {len(taps)} or give fewer methods.side_tuning.taps",
                           also=("methods.side_tuning.taps",) if cfg.taps else ())
    if vision.patch_size[0] != vision.patch_size[1]:
        raise UserError("side_tuning: square patches only")
    spatial = SpatialSideNetwork(vision.width, vision.num_tokens, vision.patch_size[0], taps,
                                 cfg.width, cfg.heads, cfg.depth, cfg.drop_path, cfg.recompute)
    temporal = TemporalSideNetwork(vision.width, vision.num_tokens, ctx.frames, taps, cfg.width, cfg.heads,
                                   cfg.drop_path, cfg.recompute)
    return SideTuningEncoder(vision, spatial, temporal)


register_method(MethodSpec(
    name="side_tuning", config_cls=SideTuningConfig, build=build, prefixes=("side_",),
    summary="VTFPAR++ spatial + temporal side networks beside a frozen CLIP", source="VTFPAR++", order=90,
    variants=(Variant("recompute", {"recompute": True}, perf=True),), canonical=canonical,
))
