"""ST-Adapter (Pan, Lin, Zhu, Shao, Li, "ST-Adapter: Parameter-Efficient Image-to-Video Transfer
Learning", NeurIPS 2022).

A spatio-temporal adapter before the attention of every block of the frozen image encoder mixes
information across frames inside CLIP. On the patch tokens of one clip, arranged as a
``T x h x w`` grid of ``C_a``-dimensional features after the down-projection:

    ST-Adapter(X) = X + DWConv3D(X W_down + b_down) W_up + b_up

with a depth-wise 3D convolution (one ``k_t x k_h x k_w`` filter per channel, "same" padding). The
class token passes through unchanged. As in the paper's code there is no non-linearity (the
convolution is the only mixing), and the convolution's weight and bias and both projection biases
start at zero, so training starts from CLIP exactly. Defaults: bottleneck ``C_a = 384`` and
kernel ``3 x 1 x 1`` (the paper's ViT-B/16 setting), one adapter before attention in each of the
12 blocks: ``12 (768 C_a + C_a + C_a (k_t k_h k_w + 1) + 768 C_a + 768)`` = 7,110,144 parameters
for ViT-B/16. Nothing folds for deployment: the adapter is not linear in the block's input path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from methods.registry import BuildContext, MethodSpec, Variant, register_method
from vtfpar.backbone import ClipVision
from vtfpar.encoders import VideoTokenEncoder
from vtfpar.errors import UserError
from vtfpar.settings import SettingError, check_settings, setting


@dataclass
class STAdapterConfig:
    bottleneck: int = setting(384, ge=1)  # C_a (paper: 384 for ViT-B/16)
    kernel: list[int] = field(default_factory=lambda: [3, 1, 1])  # (t, h, w), odd sizes
    position: str = setting("attn", choices=("attn", "mlp", "both"))  # before attention / MLP / both

    def __post_init__(self):
        check_settings(self, "", method="st_adapter")
        if len(self.kernel) != 3 or any(not isinstance(k, int) or k < 1 or k % 2 == 0 for k in self.kernel):
            raise UserError(f"st_adapter: kernel must be three odd positive sizes (t, h, w), got {self.kernel}")


class STAdapter(nn.Module):
    """Down-projection, depth-wise 3D convolution over (time, height, width), up-projection."""

    def __init__(self, width: int, bottleneck: int, kernel: tuple[int, int, int], grid: tuple[int, int]):
        super().__init__()
        self.grid = grid
        self.down = nn.Linear(width, bottleneck)
        self.conv = nn.Conv3d(bottleneck, bottleneck, kernel, padding=tuple(k // 2 for k in kernel),
                              groups=bottleneck)
        self.up = nn.Linear(bottleneck, width)
        for p in (self.down.bias, self.conv.weight, self.conv.bias, self.up.bias):
            nn.init.zeros_(p)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """tokens [B*T, 1+h*w, D] -> the same plus the adapter's output on the patch tokens."""
        n, length, _ = x.shape
        h, w = self.grid
        z = self.down(x[:, 1:])  # [B*T, h*w, C]
        c = z.shape[-1]
        z = z.view(n // frames, frames, h, w, c).permute(0, 4, 1, 2, 3)  # [B, C, T, h, w]
        z = self.conv(z).permute(0, 2, 3, 4, 1).reshape(n, h * w, c)
        return x + F.pad(self.up(z), (0, 0, 1, 0))


class AdaptedBlock(nn.Module):
    """An open_clip residual block with ST-Adapters before its attention and / or its MLP. The block's
    own modules keep their names (``ln_1``, ``attn``, ``ln_2``, ``mlp``), so the frozen weights load as before."""

    def __init__(self, block: nn.Module, adapter_attn: STAdapter | None, adapter_mlp: STAdapter | None):
        super().__init__()
        for name in ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2"):
            setattr(self, name, getattr(block, name))
        self.st_adapter_attn = adapter_attn
        self.st_adapter_mlp = adapter_mlp
        self.frames = 1

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.st_adapter_attn is not None:
            x = self.st_adapter_attn(x, self.frames)
        x = x + self.ls_1(self.attn(self.ln_1(x), attn_mask=attn_mask)[0])
        if self.st_adapter_mlp is not None:
            x = self.st_adapter_mlp(x, self.frames)
        return x + self.ls_2(self.mlp(self.ln_2(x)))


def build(vision: ClipVision, cfg: STAdapterConfig, ctx: BuildContext) -> VideoTokenEncoder:
    kt, kh, kw = cfg.kernel
    if kt > ctx.frames:
        raise SettingError("methods.st_adapter.kernel",
                           f"st_adapter: temporal kernel size {kt} does not fit {ctx.frames} frames: set "
                           f"methods.st_adapter.kernel with t <= {ctx.frames} (or more frames)", also=("data.frames",))
    if kh > vision.grid[0] or kw > vision.grid[1]:
        raise SettingError("methods.st_adapter.kernel", f"st_adapter: spatial kernel {kh}x{kw} is larger than the "
                           f"{vision.grid[0]}x{vision.grid[1]} patch grid of {ctx.backbone}", also=("model.backbone",))
    vision.requires_grad_(False)

    def adapter(where: str) -> STAdapter | None:
        if cfg.position not in (where, "both"):
            return None
        return STAdapter(vision.width, cfg.bottleneck, (kt, kh, kw), vision.grid)

    blocks = vision.blocks
    for i, block in enumerate(blocks):
        blocks[i] = AdaptedBlock(block, adapter("attn"), adapter("mlp"))
    return VideoTokenEncoder(vision, grad_through_clip=True)


register_method(MethodSpec(
    name="st_adapter", config_cls=STAdapterConfig, build=build, prefixes=("st_adapter",),
    summary="depth-wise 3D-conv adapters mixing frames inside every CLIP block", source="Pan et al. 2022",
    order=60, variants=(Variant("both", {"position": "both"}),),
))
