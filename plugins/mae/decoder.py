"""MAE's light decoder: mask tokens at the hidden positions, a few pre-norm blocks, a linear head.

Positions come from the encoder's own tokenizer: the decoder projects ``Tokens.pos`` (a learned
grid embedding for images, volumes and video, an MLP of group centres for points) to its width.
So one decoder serves every modality; it never needs to know what a position is made of.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fmcore.backbones.vit import Block, ViTOptions
from fmcore.modalities.base import gather_rows


@dataclass(frozen=True)
class DecoderConfig:
    """``method.decoder``: MAE's published decoder is 8 blocks of width 512 with 16 heads."""

    embed_dim: int = 512
    depth: int = 8
    num_heads: int = 16
    mlp_ratio: float = 4.0


class MAEDecoder(nn.Module):
    """Reconstructs every token from the encoded visible tokens and the class token.

    The encoder's outputs are projected to the decoder width and scattered back to their
    positions; the hidden positions get the learned ``mask_token``. Every token then gets its
    projected positional embedding, the class token none (as MAE's zero row of its table).
    """

    def __init__(self, encoder_dim: int, target_dim: int, config: DecoderConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.embed = nn.Linear(encoder_dim, dim)
        self.pos = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        block = ViTOptions(num_heads=config.num_heads, mlp_ratio=config.mlp_ratio)
        self.blocks = nn.ModuleList(Block(block, dim, 0.0) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, target_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        # MAE's initialisation: xavier-uniform linears, zero biases, small normal mask token.
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(
        self,
        cls: Tensor,
        visible: Tensor,
        visible_index: Tensor,
        pos: Tensor,
        decoded_index: Tensor | None = None,
    ) -> Tensor:
        """Predicted target of every token (B, N, P), or of the K tokens ``decoded_index``
        (B, K) names (B, K, P): the decoder then runs on those only (VideoMAE V2's dual
        masking; they must include the visible ones, which the hidden ones attend to).

        cls (B, De) and visible (B, M, De) are encoder outputs; visible_index (B, M) says where
        each visible token sits among the N tokens; pos (B or 1, N, De) is the tokenizer's
        positional embedding of all N tokens.
        """
        batch, _, _ = visible.shape
        num_tokens = pos.shape[1]
        x = self.embed(visible)  # (B, M, Dd)
        dim = x.shape[-1]
        index = visible_index.unsqueeze(-1).expand(-1, -1, dim)  # (B, M, Dd)
        # mask tokens everywhere, then the visible tokens written back to their places
        full = self.mask_token.to(x.dtype).expand(batch, num_tokens, dim).scatter(1, index, x)
        full = full + self.pos(pos)  # (B, N, Dd)
        if decoded_index is not None:
            full = gather_rows(full, decoded_index)  # (B, K, Dd)
        x = torch.cat([self.embed(cls).unsqueeze(1), full], dim=1)  # (B, 1 + N or K, Dd)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 1:]))  # (B, N or K, P)
