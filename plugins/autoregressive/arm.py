"""ARM wired to fmcore's contract (ARM for images and volumes, ARVideo for video): the tokens
are grouped into clusters of neighbouring tokens (``method.cluster``, a box on the token grid),
the clusters are put in an order (``method.order``: raster, or a random permutation per sample
as ARVideo), the trunk runs under a block-causal mask (a token sees its own cluster and the
clusters before it), and every token predicts the token in the same place of the next cluster:
the modality's target (normalised pixels of a patch, 3D patch or tubelet) under its loss.

The head is told where the next cluster lies (a projection of the tokenizer's positional
embedding of the target token, added to the token's features): under a random order that is the
only way to know which cluster comes next. Evaluation runs the trunk with no mask on the mean
patch token (``method.features: mean``), as for AIM.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig
from torch import Tensor, nn

from fmcore.backbones.attention import AttentionMask
from fmcore.config_sections import one_of
from fmcore.encoder import Encoder, EncoderOutput
from fmcore.errors import ConfigError
from fmcore.method import Batch, StepContext, StepOutput
from fmcore.modalities.base import Modality, Tokens, gather_rows
from fmcore.plugins.autoregressive.base import Prediction, TokenRegression
from fmcore.plugins.autoregressive.clusters import (
    ORDERS,
    cluster_layout,
    cluster_ranks,
    fit_cluster,
    next_cluster_tokens,
    token_places,
)

CLUSTERS = "clusters"  # how many clusters a view's tokens fall into


@dataclass
class ClusterPass:
    """The trunk's output under the block-causal mask; following (B, N): each token's
    counterpart in the next cluster; scored (B, N): tokens outside their sample's last cluster
    (whose next cluster does not exist)."""

    encoded: EncoderOutput
    following: Tensor
    scored: Tensor


class ARM(TokenRegression):
    """Autoregression over clusters of tokens under a block-causal mask."""

    name = "arm"
    remedy = "check trainer.lr, method.cluster and the head (method.head)"

    def __init__(self, config: DictConfig, encoder: Encoder, modality: Modality) -> None:
        super().__init__(config, encoder, modality)
        self.cluster = tuple(int(size) for size in config.cluster)
        self.order = str(config.order)
        one_of("method.order", self.order, ORDERS)
        self.target_position = nn.Linear(encoder.embed_dim, encoder.embed_dim)

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        (view,) = ctx.views(batch.data, self.view_specs["global"], ctx.generator)
        tokens = self.encoder.tokenizer(view)
        layout = self.layout(tokens)
        ranks = cluster_ranks(tokens.x.shape[0], layout.shape[0], self.order, ctx.generator)
        out = self.predict(view, tokens, layout, ranks)
        return self.step_output(out, {CLUSTERS: float(layout.shape[0])})

    def layout(self, tokens: Tokens) -> Tensor:
        """The (C, K) cluster layout of ``tokens``' grid: ``method.cluster`` fitted to the grid
        (:func:`fit_cluster`), then laid out (:func:`cluster_layout`)."""
        if tokens.grid is None:
            raise ConfigError(
                f"method=arm groups tokens into boxes on the token grid; the"
                f" {self.modality.name} modality's tokens have no grid"
            )
        shape = fit_cluster(tokens.grid, self.cluster, "method.cluster")
        return cluster_layout(tokens.grid, shape, "method.cluster").to(tokens.x.device)

    def cluster_pass(self, tokens: Tokens, layout: Tensor, ranks: Tensor) -> ClusterPass:
        """The trunk under the block-causal mask of clusters in the order ``ranks`` (B, C)."""
        cluster_of, _ = token_places(layout)
        token_rank = ranks[:, cluster_of]  # (B, N)
        encoded = self.encoder.encode_tokens(
            tokens, attn_mask=AttentionMask.block_causal(token_rank)
        )
        return ClusterPass(
            encoded=encoded,
            following=next_cluster_tokens(layout, ranks),
            scored=token_rank < layout.shape[0] - 1,
        )

    def predict(self, view: Tensor, tokens: Tokens, layout: Tensor, ranks: Tensor) -> Prediction:
        """Every token's prediction of its counterpart in the next cluster, with clusters in the
        order ``ranks`` (B, C) gives; scored for tokens outside their sample's last cluster."""
        clusters = self.cluster_pass(tokens, layout, ranks)
        return self.pixel_prediction(view, tokens, clusters, self.next_position(tokens, clusters))

    def next_position(self, tokens: Tokens, clusters: ClusterPass) -> Tensor:
        """Where each token's target lies: the projected position of its counterpart in the
        next cluster (B, N, D), added to the token's features before a head."""
        return self.target_position(gather_rows(tokens.pos, clusters.following))

    def pixel_prediction(
        self, view: Tensor, tokens: Tokens, clusters: ClusterPass, next_position: Tensor
    ) -> Prediction:
        """The pixel head's prediction of each token's counterpart in the next cluster."""
        target = self.encoder.tokenizer.reconstruction_target(view, tokens, self.normalize_target)
        return Prediction(
            pred=self.head(clusters.encoded.patches + next_position),
            target=gather_rows(target, clusters.following),
            scored=clusters.scored,
            encoded=clusters.encoded,
        )
