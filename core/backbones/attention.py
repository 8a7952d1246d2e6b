"""Attention masks a method hands the trunk per call: causal, prefix-causal (AIM), block-causal
over clusters (ARM, ARVideo) and padding (ragged point clouds), all as one argument.

A mask speaks of the N patch tokens only; the trunk adds its P prefix tokens (class token,
registers), which come first in the order. Every patch token may attend to them. Where the
mask orders the tokens (causal, or an ``allowed`` matrix), a prefix token attends only to the
prefix tokens before it, so nothing of a later token reaches an earlier one through it; under
padding alone it attends to every valid token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class AttentionMask:
    """Which patch tokens each patch token may attend to.

    causal: no token attends to a later one.
    prefix: with ``causal``, the first ``prefix`` tokens also attend to each other both ways
        (AIM's prefix); an int for the whole batch or a (B,) tensor per sample.
    allowed: (N, N) for the batch or (B, N, N) per sample, row i the query: boolean (True: may
        attend) or additive float (0 or -inf and anything between), combined with the rest.
    valid: (B, N) boolean, False for padding tokens no token may attend to.
    """

    causal: bool = False
    prefix: int | Tensor = 0
    allowed: Tensor | None = None
    valid: Tensor | None = None

    @classmethod
    def prefix_causal(cls, prefix: int | Tensor) -> AttentionMask:
        """AIM: a bidirectional prefix, causal after it."""
        return cls(causal=True, prefix=prefix)

    @classmethod
    def block_causal(cls, cluster_rank: Tensor) -> AttentionMask:
        """Clusters predicted one after another: a token attends to every token of its own
        cluster and of the clusters before it. ``cluster_rank`` (N,) or (B, N) is the place of
        each token's cluster in the prediction order (raster or random)."""
        allowed = cluster_rank.unsqueeze(-2) <= cluster_rank.unsqueeze(-1)  # [.., query, key]
        return cls(allowed=allowed)

    @classmethod
    def padding(cls, valid: Tensor) -> AttentionMask:
        """Bidirectional attention among the valid tokens of each sample, (B, N) boolean."""
        return cls(valid=valid)

    @property
    def plain_causal(self) -> bool:
        """Causal with nothing else: SDPA's ``is_causal`` fast path, no mask tensor."""
        unprefixed = isinstance(self.prefix, int) and self.prefix == 0
        return self.causal and unprefixed and self.allowed is None and self.valid is None

    def for_sdpa(self, num_prefix: int, num_tokens: int, device: torch.device) -> Tensor:
        """The mask over the whole sequence (prefix tokens first), (B or 1, 1, P + N, P + N):
        boolean (True: may attend), or additive float when ``allowed`` is."""
        size = num_prefix + num_tokens
        patches = self._patch_mask(num_tokens, device)  # (B or 1, N, N)
        full = torch.zeros(patches.shape[0], size, size, dtype=torch.bool, device=device)
        full[:, num_prefix:, :num_prefix] = True
        full[:, num_prefix:, num_prefix:] = patches
        prefix_rows = full[:, :num_prefix]
        if self.causal or self.allowed is not None:
            prefix_rows[:, :, :num_prefix] = torch.ones(
                num_prefix, num_prefix, dtype=torch.bool, device=device
            ).tril()
        else:
            prefix_rows[:, :, :num_prefix] = True
            valid = True if self.valid is None else self.valid.to(device)[:, None]
            prefix_rows[:, :, num_prefix:] = valid
        if self.allowed is None or self.allowed.dtype == torch.bool:
            return full.unsqueeze(1)
        structure = torch.zeros(full.shape, dtype=self.allowed.dtype, device=device)
        structure = structure.masked_fill(~full, float("-inf"))
        allowed = F.pad(self.allowed.to(device), (num_prefix, 0, num_prefix, 0))  # prefix: 0
        return (structure + allowed).unsqueeze(1)

    def _patch_mask(self, num_tokens: int, device: torch.device) -> Tensor:
        mask = torch.ones(1, num_tokens, num_tokens, dtype=torch.bool, device=device)
        if self.causal:
            position = torch.arange(num_tokens, device=device)
            earlier = position[None, :] <= position[:, None]  # [query, key]
            prefix = torch.as_tensor(self.prefix, device=device).reshape(-1, 1, 1)
            mask = mask & (earlier | (position < prefix))
        if self.allowed is not None and self.allowed.dtype == torch.bool:  # additive: for_sdpa
            allowed = self.allowed.to(device)
            mask = mask & (allowed if allowed.dim() == 3 else allowed.unsqueeze(0))
        if self.valid is not None:
            mask = mask & self.valid.to(device)[:, None, :]
        return mask
