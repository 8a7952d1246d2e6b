"""The encoder users keep: a modality's tokenizer followed by the shared trunk."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fmcore.backbones.attention import AttentionMask
from fmcore.backbones.trunk import Trunk, TrunkOutput
from fmcore.errors import ConfigError
from fmcore.modalities.base import Tokenizer, Tokens


@dataclass
class EncoderOutput:
    """cls (B, D); registers (B, R, D); patches (B, M, D) for the tokens the trunk saw; tokens
    are those tokens (after masking or selection), with their positions."""

    cls: Tensor
    registers: Tensor
    patches: Tensor
    tokens: Tokens


class Encoder(nn.Module):
    """Tokenizer + trunk, with a learned mask token for masked-token methods (iBOT, BEiT).

    ``forward(x, mask=...)`` replaces masked token embeddings by the mask token (the trunk still
    sees every position); ``forward(x, keep=...)`` runs the trunk on the kept tokens only (MAE);
    ``attn_mask`` shapes the trunk's attention among the tokens it sees (after ``keep``).
    Parameters under ``trunk.`` are the trunk's (federation shares them across domains).
    """

    def __init__(self, tokenizer: Tokenizer, trunk: Trunk) -> None:
        super().__init__()
        if tokenizer.embed_dim != trunk.embed_dim:
            raise ValueError(
                f"tokenizer width {tokenizer.embed_dim} differs from trunk width {trunk.embed_dim}"
            )
        self.tokenizer = tokenizer
        self.trunk = trunk
        self.mask_token = nn.Parameter(torch.zeros(1, 1, trunk.embed_dim))
        self.embed_dim = trunk.embed_dim
        self.tokens_processed = 0  # tokens through the trunk since the engine last read it

    def take_token_count(self) -> int:
        count, self.tokens_processed = self.tokens_processed, 0
        return count

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        keep: Tensor | None = None,
        attn_mask: AttentionMask | None = None,
    ) -> EncoderOutput:
        return self.encode_tokens(self.tokenizer(x), mask=mask, keep=keep, attn_mask=attn_mask)

    def encode_tokens(
        self,
        tokens: Tokens,
        mask: Tensor | None = None,
        keep: Tensor | None = None,
        attn_mask: AttentionMask | None = None,
    ) -> EncoderOutput:
        if mask is not None:
            masked = mask.unsqueeze(-1).to(tokens.x.dtype)
            tokens = Tokens(
                x=tokens.x * (1 - masked) + self.mask_token.to(tokens.x.dtype) * masked,
                pos=tokens.pos,
                grid=tokens.grid,
                groups=tokens.groups,
                centers=tokens.centers,
            )
        if keep is not None:
            tokens = tokens.select(keep)
        out: TrunkOutput = self.trunk(tokens, attn_mask)
        self.tokens_processed += tokens.x.shape[0] * tokens.x.shape[1]
        return EncoderOutput(
            cls=out.cls, registers=out.registers, patches=out.patches, tokens=tokens
        )

    @torch.no_grad()
    def features(self, x: Tensor, kind: str = "cls", valid: Tensor | None = None) -> Tensor:
        """Frozen global features of ``x``, pooled as ``kind`` says (see :func:`pool`); with
        ``valid``, the batch's valid-pixel masks (``Batch.valid``), patch means cover only the
        tokens that hold data (a fundus photograph's field of view)."""
        token_valid = None if valid is None else self.tokenizer.valid_tokens(valid.to(x.dtype))
        return pool(self.forward(x), kind, token_valid)


FEATURE_KINDS = ("cls", "mean", "cls+mean")


def feature_kind(value: object, key: str) -> str:
    """``value`` of the config key ``key`` as a feature kind of :func:`pool`; unset: ``cls``."""
    kind = str(value or "cls")
    if kind not in FEATURE_KINDS:
        raise ConfigError(f"{key}={kind} is not one of {', '.join(FEATURE_KINDS)}")
    return kind


def pool(output: EncoderOutput, kind: str, token_valid: Tensor | None = None) -> Tensor:
    """Global features from an encoder output: ``cls`` the class token (B, D), ``mean`` the mean
    of the patch tokens (B, D), over the ``token_valid`` (B, N) ones when given, ``cls+mean``
    both side by side (B, 2D), as DINOv2's linear evaluation concatenates them. Methods differ
    in which one carries their signal: a self-distillation method trains the class token, MAE
    trains the patch tokens only."""
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind '{kind}'; valid: {', '.join(FEATURE_KINDS)}")
    if kind == "cls":
        return output.cls
    if token_valid is None:
        mean = output.patches.mean(dim=1)
    else:
        weights = token_valid.to(output.patches.dtype).unsqueeze(-1)  # (B, N, 1)
        mean = (output.patches * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
    return mean if kind == "mean" else torch.cat([output.cls, mean], dim=1)
