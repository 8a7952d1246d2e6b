"""Frozen features of a labelled domain split, as every evaluation protocol consumes them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from fmcore.config_sections import FeatureEvalSection
from fmcore.domain import Domain
from fmcore.encoder import Encoder
from fmcore.engine.data import DomainDataset, collate
from fmcore.errors import BadSample, ConfigError

PIXELS = "pixels"


class RawPixels(nn.Module):
    """The normalised input itself, flattened, as features: ``checkpoint=pixels``, the baseline
    that tells whether an encoder adds anything a nearest neighbour on the input cannot find."""

    def features(self, x: Tensor, kind: str = PIXELS) -> Tensor:
        return x.flatten(1)


@dataclass
class Features:
    """features (N, D) float32 on the CPU and labels (N,) int64 of one split."""

    features: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@torch.no_grad()
def extract_features(
    encoder: Encoder | RawPixels,
    domain: Domain,
    split: str,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    l2_normalize: bool = False,
    num_workers: int = 0,
    kind: str = "cls",
) -> Features:
    """Features of every sample of ``split``, in index order, pooled as ``kind``
    (``Encoder.features``: cls, mean or cls+mean).

    The encoder runs in eval mode without gradients and on unaugmented samples passed through
    the domain's ``normalize`` (the same input mapping it was trained with). Unlabelled samples
    (label -1) are refused: a metric computed on them would be meaningless.
    """
    refs = domain.index(split)
    if len(refs) == 0:
        raise ConfigError(f"split '{split}' of domain '{domain.name}' has no samples")
    loader = DataLoader(
        DomainDataset(domain, refs),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate,
    )
    was_training = encoder.training
    encoder.eval().to(device)
    chunks: list[Tensor] = []
    labels: list[Tensor] = []
    try:
        for batch, unreadable in loader:
            if unreadable:  # features must cover the whole split, or the metric is of another one
                raise BadSample(unreadable[0].split(":", 1)[0], f"cannot evaluate: {unreadable[0]}")
            images = domain.normalize(batch.data.to(device, non_blocking=True).float())
            chunks.append(encoder.features(images, kind).float().cpu())
            labels.append(batch.labels)
    finally:
        encoder.train(was_training)
    features = torch.cat(chunks)
    targets = torch.cat(labels)
    if (targets < 0).any():
        raise ConfigError(
            f"split '{split}' of domain '{domain.name}' has unlabelled samples (label -1):"
            " evaluation needs a labelled split"
        )
    if l2_normalize:
        features = F.normalize(features, dim=1)
    return Features(features, targets)


@dataclass(frozen=True)
class SplitFeatures:
    """How an evaluation gets its features: the two labelled splits, the pooling, the batch and
    whether to L2-normalise (the ``eval`` section's ``train_split``, ``test_split``,
    ``batch_size``, ``l2_normalize``; ``kind`` is resolved by the caller: eval.features or the
    method's own)."""

    train_split: str
    test_split: str
    batch_size: int
    l2_normalize: bool
    kind: str

    @classmethod
    def from_section(cls, settings: FeatureEvalSection, kind: str) -> SplitFeatures:
        return cls(
            settings.train_split,
            settings.test_split,
            settings.batch_size,
            settings.l2_normalize,
            kind,
        )

    def extract(
        self,
        encoder: Encoder | RawPixels,
        domain: Domain,
        device: torch.device | str,
        num_workers: int,
    ) -> tuple[Features, Features]:
        """Features of the train split and of the test split."""
        options = {
            "batch_size": self.batch_size,
            "device": device,
            "l2_normalize": self.l2_normalize,
            "num_workers": num_workers,
            "kind": self.kind,
        }
        train = extract_features(encoder, domain, self.train_split, **options)
        test = extract_features(encoder, domain, self.test_split, **options)
        return train, test
