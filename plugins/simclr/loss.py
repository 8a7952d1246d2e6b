"""NT-Xent, SimCLR's normalised temperature-scaled cross-entropy over 2B views."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """Mean NT-Xent loss of paired embeddings z1, z2 (B, D).

    Each view's positive is the other view of its sample; the other 2B - 2 views are negatives.
    """
    with torch.autocast(z1.device.type, enabled=False):  # similarities need full precision
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2B, D)
        logits = z @ z.T / temperature  # (2B, 2B)
        logits.fill_diagonal_(float("-inf"))  # a view is not its own negative
        batch = z1.shape[0]
        positives = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(z.device)
        return F.cross_entropy(logits, positives)
