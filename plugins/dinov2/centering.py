"""Teacher centering: Sinkhorn-Knopp (DINOv2's default) or softmax with an EMA centre (DINO).

Both turn teacher logits (N, K) into targets whose rows are probability distributions over the
K prototypes; both are all-reduced across processes so every rank centres on the global batch.
"""

from __future__ import annotations

import math

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
    Computed in the log domain: at the cold temperatures small runs need (t = 0.01, exponents of
    -200) exp underflows to zero for whole prototypes and the plain iteration divides 0 by 0.
    """
    log_q = (logits.float() / temperature).t()  # (K, N)
    prototypes = log_q.shape[0]
    samples = log_q.shape[1] * world_size()
    for _ in range(iterations):
        log_q = log_q - _logsumexp_over_ranks(log_q) - math.log(prototypes)
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(samples)
    return (log_q + math.log(samples)).exp().t()  # (N, K), rows sum to 1


def _logsumexp_over_ranks(log_q: Tensor) -> Tensor:
    """log of each row's sum of exp over the samples of every rank (K, 1)."""
    peak = all_reduce_(log_q.amax(dim=1, keepdim=True), op=dist.ReduceOp.MAX)
    return peak + all_reduce_((log_q - peak).exp().sum(dim=1, keepdim=True)).log()


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
