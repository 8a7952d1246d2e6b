"""DINOv2's three losses: DINO on class tokens, iBOT on masked patch tokens, KoLeo on features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def dino_cross_entropy(student: Tensor, teacher: Tensor, student_temp: float) -> Tensor:
    """Mean over every (student crop, teacher crop) pair of different views of
    -sum_k p_teacher log softmax(student / t).

    student: (S, B, K) logits of S crops, the first T of which are the global crops the teacher
    saw; teacher: (T, B, K) target distributions. A crop is never matched with its own view.
    """
    log_probs = F.log_softmax(student.float() / student_temp, dim=-1)  # (S, B, K)
    total = student.new_zeros((), dtype=torch.float32)
    terms = 0
    for s in range(student.shape[0]):
        for t in range(teacher.shape[0]):
            if s == t:
                continue
            total = total - (teacher[t] * log_probs[s]).sum(dim=-1).mean()
            terms += 1
    return total / max(terms, 1)


def ibot_patch_loss(student: Tensor, teacher: Tensor, mask: Tensor, student_temp: float) -> Tensor:
    """iBOT's loss over masked patch tokens only.

    student: (M, K) logits and teacher: (M, K) targets of the M masked tokens, taken in the order
    of ``mask`` (B, N). Each image's tokens are averaged, then images are averaged (images with
    nothing masked count as zero), as in DINOv2.
    """
    per_token = -(teacher * F.log_softmax(student.float() / student_temp, dim=-1)).sum(dim=-1)
    counts = mask.sum(dim=1).clamp(min=1).to(per_token.dtype)  # (B,)
    weights = (1.0 / counts).unsqueeze(1).expand_as(mask)[mask]  # (M,)
    return (per_token * weights).sum() / mask.shape[0]


def koleo_loss(features: Tensor, eps: float = 1e-8) -> Tensor:
    """Kozachenko-Leonenko entropy regulariser: -mean log distance to the nearest neighbour of
    each L2-normalised feature within the batch (spreads features apart)."""
    with torch.autocast(features.device.type, enabled=False):  # distances need full precision
        x = F.normalize(features.float(), dim=-1, eps=eps)  # (B, D)
        similarity = x @ x.t()
        similarity.fill_diagonal_(-2.0)  # a sample is not its own neighbour
        nearest = similarity.argmax(dim=1)
        distances = F.pairwise_distance(x, x[nearest], p=2, eps=eps)
        return -torch.log(distances + eps).mean()
