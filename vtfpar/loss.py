"""Weighted binary cross-entropy of VTFPAR++ (eq. 6-7).

    L = -(1/N) sum_i sum_j w_ij (y_ij log p_ij + (1 - y_ij) log(1 - p_ij))
    w_ij = exp(1 - r_j) if y_ij = 1 else exp(r_j)

with r_j the positive ratio of attribute j in the training set. Positives of rare attributes
weigh more. The paper's eq. 6 writes the normaliser as 1/M; the authors' code sums over the M
attributes and divides by the batch size N, which is our default (``normalize="batch"``);
``normalize="attributes"`` divides by M instead, as printed in eq. 6. The two differ by the
constant factor N/M, which an Adam optimiser mostly absorbs.

When the batch is split over P processes whose gradients are averaged (data parallel), each process
holds N/P of the clips. Divided by its own N/P, each process's loss is the global batch's mean and
their average gradient is the global one; divided by M, each would be 1/P of its share of the global
sum, so ``processes=P`` multiplies it by P: the same gradient (and the same clipping and weight
decay) as one process with the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WeightedBCE(nn.Module):
    def __init__(self, positive_ratio: torch.Tensor, normalize: str = "batch", processes: int = 1):
        super().__init__()
        if normalize not in ("batch", "attributes"):
            raise ValueError(f"normalize must be 'batch' or 'attributes', got {normalize!r}")
        r = torch.as_tensor(positive_ratio, dtype=torch.float32).clamp(0.0, 1.0)
        self.normalize, self.processes = normalize, processes
        self.register_buffer("w_pos", torch.exp(1.0 - r))
        self.register_buffer("w_neg", torch.exp(r))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """logits [N,M] (pre-sigmoid), targets [N,M] in {0,1}."""
        targets = targets.to(torch.float32)
        weight = targets * self.w_pos + (1.0 - targets) * self.w_neg
        total = F.binary_cross_entropy_with_logits(logits.float(), targets, weight=weight, reduction="sum")
        if self.normalize == "batch":
            return total / logits.shape[0]
        return total / logits.shape[1] * self.processes  # this process's share of a global sum (module docstring)
