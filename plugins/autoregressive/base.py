"""What AIM and ARM share: one view per sample, a per-token head regressing the modality's
target of another token, the loss on the scored predictions only, and the reconstruction
collapse signal."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from omegaconf import DictConfig
from torch import Tensor

from fmcore.collapse import (
    FEATURE_STD,
    LOSS_VS_MEAN,
    feature_spread,
    loss_vs_mean_predictor,
    mean_predictor_warning,
)
from fmcore.config_sections import structured
from fmcore.encoder import Encoder, EncoderOutput
from fmcore.errors import ConfigError
from fmcore.method import Method, StepOutput
from fmcore.modalities.base import Modality
from fmcore.plugins.autoregressive.head import HeadConfig, PixelHead


@dataclass
class Prediction:
    """pred, target (B, M, P): the head's predictions and what each should have been;
    scored (B, M) bool: the predictions the loss counts; encoded: the trunk's output."""

    pred: Tensor
    target: Tensor
    scored: Tensor
    encoded: EncoderOutput


class TokenRegression(Method):
    """Base of the autoregressive methods: subclasses say which token predicts which, under
    which attention mask, and turn a :class:`Prediction` into a step with :meth:`step_output`."""

    #: what to check when the prediction ignores the encoder, for the collapse warning
    remedy: ClassVar[str]

    def __init__(self, config: DictConfig, encoder: Encoder, modality: Modality) -> None:
        super().__init__(config, encoder, modality)
        if self.view_specs["global"].count != 1:
            raise ConfigError(
                f"method.views.global.count must be 1 for method={self.name} (one view per sample)"
            )
        self.normalize_target = bool(config.normalize_target)
        self.head_config = structured(config.head, HeadConfig, "method.head")
        self.head = PixelHead(encoder.embed_dim, encoder.tokenizer.target_dim, self.head_config)
        # No token is replaced; a trainable parameter without a gradient would stall DDP.
        encoder.mask_token.requires_grad_(False)

    def step_output(self, out: Prediction, metrics: Mapping[str, float]) -> StepOutput:
        """The modality's loss over the scored predictions, with the collapse signals."""
        loss_fn = self.modality.reconstruction_loss
        loss = loss_fn(out.pred, out.target, out.scored)
        return StepOutput(
            loss=loss,
            metrics={
                **metrics,
                FEATURE_STD: feature_spread(out.encoded.patches.mean(dim=1)),
                LOSS_VS_MEAN: loss_vs_mean_predictor(loss_fn, loss, out.target, out.scored),
            },
        )

    def collapse_warnings(self, metrics: Mapping[str, float], progress: float) -> dict[str, str]:
        return super().collapse_warnings(metrics, progress) | mean_predictor_warning(
            metrics, progress, self.remedy
        )
