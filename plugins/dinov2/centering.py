"""Teacher centering: Sinkhorn-Knopp (DINOv2's default) or softmax with an EMA centre (DINO).

Both turn teacher logits (N, K) into targets whose rows are probability distributions over the
K prototypes; both are all-reduced across processes so every rank centres on the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from fmcore.distributed import all_reduce_, world_size


@torch.no_grad()
def sinkhorn_knopp(logits: Tensor, temperature: float, iterations: int = 3) -> Tensor:
    """Balanced soft assignment of N samples to K prototypes (SwAV / DINOv2).

    Alternately normalises Q = exp(logits / t), viewed as K x N, so that every prototype gets
    total mass 1/K and every sample 1/N; the result is rescaled so each row (sample) sums to 1.
    """
    logits = logits.float()
    # One shift for every rank (it cancels in the normalisation only if it is the same everywhere).
    shift = all_reduce_(logits.max().reshape(1), op=dist.ReduceOp.MAX)
    q = torch.exp((logits - shift) / temperature).t()  # (K, N)
    samples = q.shape[1] * world_size()
    prototypes = q.shape[0]
    q /= all_reduce_(q.sum())
    for _ in range(iterations):
        q /= all_reduce_(q.sum(dim=1, keepdim=True))
        q /= prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= samples
    return (q * samples).t()  # (N, K), rows sum to 1


class SoftmaxCentering(nn.Module):
    """DINO's centring: subtract an EMA of the teacher's mean logits, then a sharp softmax."""

    def __init__(self, num_prototypes: int, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, num_prototypes))

    @torch.no_grad()
    def forward(self, logits: Tensor, temperature: float) -> Tensor:
        targets = F.softmax((logits.float() - self.center) / temperature, dim=-1)
        self.update(logits)
        return targets

    @torch.no_grad()
    def update(self, logits: Tensor) -> None:
        total = all_reduce_(logits.float().sum(dim=0, keepdim=True))
        batch_center = total / (logits.shape[0] * world_size())
        self.center.mul_(self.momentum).add_(batch_center, alpha=1 - self.momentum)
