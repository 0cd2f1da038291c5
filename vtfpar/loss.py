"""Weighted binary cross-entropy of VTFPAR++ (eq. 6-7).

    L = -(1/N) sum_i sum_j w_ij (y_ij log p_ij + (1 - y_ij) log(1 - p_ij))
    w_ij = exp(1 - r_j) if y_ij = 1 else exp(r_j)

with r_j the positive ratio of attribute j in the training set. Positives of rare attributes
weigh more. The paper's eq. 6 writes the normaliser as 1/M; the authors' code sums over the M
attributes and divides by the batch size N, which is our default (``normalize="batch"``);
``normalize="attributes"`` divides by M instead, as printed in eq. 6. The two differ by the
constant factor N/M, which an Adam optimiser mostly absorbs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WeightedBCE(nn.Module):
    def __init__(self, positive_ratio: torch.Tensor, normalize: str = "batch"):
        super().__init__()
        if normalize not in ("batch", "attributes"):
            raise ValueError(f"normalize must be 'batch' or 'attributes', got {normalize!r}")
        r = torch.as_tensor(positive_ratio, dtype=torch.float32).clamp(0.0, 1.0)
        self.normalize = normalize
        self.register_buffer("w_pos", torch.exp(1.0 - r))
        self.register_buffer("w_neg", torch.exp(r))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """logits [N,M] (pre-sigmoid), targets [N,M] in {0,1}."""
        targets = targets.to(torch.float32)
        weight = targets * self.w_pos + (1.0 - targets) * self.w_neg
        total = F.binary_cross_entropy_with_logits(logits.float(), targets, weight=weight, reduction="sum")
        return total / (logits.shape[0] if self.normalize == "batch" else logits.shape[1])
