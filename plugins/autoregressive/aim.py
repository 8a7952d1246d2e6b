"""AIM wired to fmcore's contract: one view -> tokens in raster order -> trunk under a
prefix-causal mask (a random prefix per sample) -> per-token MLP head -> each token predicts the
next token's normalised pixels; the loss counts only the tokens after the prefix.

The prefix is what makes the encoder usable bidirectionally afterwards (AIM's finding):
the first tokens learn to attend both ways, so ``fmcore eval`` runs the trunk with no mask and
scores the mean patch token (``method.features: mean``). Targets and loss are the modality's
(``Tokenizer.reconstruction_target``, ``Modality.reconstruction_loss``), so images, volumes and
video work alike; a modality without a token grid (point groups) has no raster order and is
refused.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fmcore.backbones.attention import AttentionMask
from fmcore.errors import ConfigError
from fmcore.method import Batch, StepContext, StepOutput
from fmcore.modalities.base import Tokens
from fmcore.plugins.autoregressive.base import Prediction, TokenRegression

PREFIX_FRACTION = "prefix_fraction"  # mean share of the tokens in the bidirectional prefix


def random_prefix(batch: int, num_tokens: int, generator: torch.Generator) -> Tensor:
    """Prefix lengths (B,) drawn uniformly from 1 .. N - 1: at least one token to condition on
    and one to predict."""
    return torch.randint(1, num_tokens, (batch,), generator=generator, device=generator.device)


def next_token_scored(prefix: Tensor, num_tokens: int) -> Tensor:
    """(B, N - 1) bool: True where the prediction made at position k (of token k + 1) counts,
    i.e. where token k + 1 lies after the prefix."""
    targets = torch.arange(1, num_tokens, device=prefix.device)
    return targets.unsqueeze(0) >= prefix.unsqueeze(1)


class AIM(TokenRegression):
    """Autoregressive next-token regression under prefix-causal attention."""

    name = "aim"
    remedy = "check trainer.lr and the head (method.head)"

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        (view,) = ctx.views(batch.data, self.view_specs["global"], ctx.generator)
        tokens = self.encoder.tokenizer(view)  # (B, N, D) in raster order
        batch_size, num_tokens = tokens.x.shape[:2]
        if num_tokens < 2:
            raise ConfigError(f"method=aim needs at least 2 tokens per view, got {num_tokens}")
        prefix = random_prefix(batch_size, num_tokens, ctx.generator)
        out = self.predict(view, tokens, prefix)
        return self.step_output(out, {PREFIX_FRACTION: float(prefix.float().mean() / num_tokens)})

    def predict(self, view: Tensor, tokens: Tokens, prefix: Tensor) -> Prediction:
        """Position k's prediction of token k + 1 for k < N - 1, under a prefix of ``prefix``
        (B,) tokens; scored where token k + 1 lies after the prefix."""
        if tokens.grid is None:
            raise ConfigError(
                f"method=aim predicts tokens in raster order; the {self.modality.name}"
                " modality's tokens have no grid"
            )
        num_tokens = tokens.x.shape[1]
        encoded = self.encoder.encode_tokens(tokens, attn_mask=AttentionMask.prefix_causal(prefix))
        return Prediction(
            pred=self.head(encoded.patches[:, :-1]),
            target=self.encoder.tokenizer.reconstruction_target(
                view, tokens, self.normalize_target
            )[:, 1:],
            scored=next_token_scored(prefix, num_tokens),
            encoded=encoded,
        )
