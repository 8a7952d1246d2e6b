"""Frozen features of a labelled domain split, as every evaluation protocol consumes them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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

    def features(self, x: Tensor, kind: str = PIXELS, valid: Tensor | None = None) -> Tensor:
        return x.flatten(1)  # a pixel outside a valid region is the same in every sample


@dataclass
class Features:
    """features (N, D) float32 on the CPU and labels (N,) int64 of one split."""

    features: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


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
    group_by: str | None = None,
) -> Features:
    """Features of every sample of ``split``, in index order, pooled as ``kind``
    (``Encoder.features``: cls, mean or cls+mean); with ``group_by`` (a metadata key the
    domain's samples carry, e.g. ``video``), one feature per group instead: the mean of its
    samples' (a video's clips), in the order groups first appear.

    Unlabelled samples (label -1) are refused: a metric computed on them would be meaningless.
    """
    features, targets, metas = encode_samples(
        encoder,
        domain,
        split_refs(domain, split),
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        kind=kind,
    )
    if group_by is not None:
        groups = [group_of(meta, group_by, domain.name) for meta in metas]
        features, targets = mean_per_group(features, targets, groups, group_by)
    if (targets < 0).any():
        raise ConfigError(
            f"split '{split}' of domain '{domain.name}' has unlabelled samples (label -1):"
            " evaluation needs a labelled split"
        )
    if l2_normalize:
        features = F.normalize(features, dim=1)
    return Features(features, targets)


def split_refs(domain: Domain, split: str) -> Sequence[Any]:
    """The references of ``split``; a :class:`ConfigError` when it has none."""
    refs = domain.index(split)
    if len(refs) == 0:
        raise ConfigError(f"split '{split}' of domain '{domain.name}' has no samples")
    return refs


@torch.no_grad()
def encode_samples(
    encoder: Encoder | RawPixels,
    domain: Domain,
    refs: Sequence[Any],
    *,
    batch_size: int,
    device: torch.device | str,
    num_workers: int,
    kind: str,
) -> tuple[Tensor, Tensor, list[dict[str, Any]]]:
    """Features (N, D), labels (N,) and metadata of the samples ``refs`` name, in their order.

    The encoder runs in eval mode without gradients and on unaugmented samples passed through
    the domain's ``normalize`` (the same input mapping it was trained with). A sample that
    cannot be read fails the evaluation: features must cover the whole split, or the metric is
    of another one.
    """
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
    metas: list[dict[str, Any]] = []
    try:
        for batch, unreadable in loader:
            if unreadable:
                raise BadSample(unreadable[0].split(":", 1)[0], f"cannot evaluate: {unreadable[0]}")
            images = domain.encoder_input(batch.data.to(device, non_blocking=True))
            valid = None if batch.valid is None else batch.valid.to(device)
            chunks.append(encoder.features(images, kind, valid).float().cpu())
            labels.append(batch.labels)
            metas.extend(batch.meta)
    finally:
        encoder.train(was_training)
    return torch.cat(chunks), torch.cat(labels), metas


def group_of(meta: dict, key: str, domain: str) -> object:
    if key not in meta:
        raise ConfigError(
            f"eval.group_by={key}: samples of domain '{domain}' carry no '{key}'; they carry"
            f" {', '.join(sorted(meta)) or 'no metadata'}"
        )
    return meta[key]


def mean_per_group(
    features: Tensor, labels: Tensor, groups: list[object], key: str
) -> tuple[Tensor, Tensor]:
    """One row per group (the mean of its rows) and its label, groups in first-seen order; a
    group whose samples disagree on the label is refused."""
    order = list(dict.fromkeys(groups))
    number = {group: index for index, group in enumerate(order)}
    members = torch.tensor([number[group] for group in groups])
    sums = torch.zeros(len(order), features.shape[1]).index_add_(0, members, features)
    counts = torch.bincount(members, minlength=len(order)).unsqueeze(1)
    group_labels = torch.full((len(order),), -2, dtype=labels.dtype).scatter_(0, members, labels)
    if not torch.equal(group_labels[members], labels):
        bad = order[int(members[group_labels[members] != labels][0])]
        raise ConfigError(f"eval.group_by={key}: the samples of {key} {bad} carry different labels")
    return sums / counts, group_labels


@dataclass(frozen=True)
class SplitFeatures:
    """How an evaluation gets its features: the two labelled splits, the pooling, the batch,
    whether to L2-normalise and what to average over (the ``eval`` section's ``train_split``,
    ``test_split``, ``batch_size``, ``l2_normalize``, ``group_by``; ``kind`` is resolved by the
    caller: eval.features or the method's own)."""

    train_split: str
    test_split: str
    batch_size: int
    l2_normalize: bool
    kind: str
    group_by: str | None = None

    @classmethod
    def from_section(cls, settings: FeatureEvalSection, kind: str) -> SplitFeatures:
        return cls(
            settings.train_split,
            settings.test_split,
            settings.batch_size,
            settings.l2_normalize,
            kind,
            settings.group_by,
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
            "group_by": self.group_by,
        }
        train = extract_features(encoder, domain, self.train_split, **options)
        test = extract_features(encoder, domain, self.test_split, **options)
        return train, test
