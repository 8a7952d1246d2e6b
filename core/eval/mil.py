"""Slide-level classification by attention-based multiple-instance learning (ABMIL).

Ilse, Tomczak and Welling (2018), "Attention-based Deep Multiple Instance Learning", with the
gated attention of their eq. 9: a slide is a bag of tile features from ``fmcore embed``; each
tile gets a weight ``a_k = softmax_k(w^T (tanh(V h_k) * sigmoid(U h_k)))`` and the slide is
``z = sum_k a_k h_k``, classified by a linear layer. Bags are read from their files one slide at
a time, so memory holds one slide, whatever the cohort's size.

Labels come from a CSV ``slide,label[,patient][,split]``. Without a split column the patients
(each slide its own patient when there is no patient column) are split, stratified by label, so
the slides of one patient never sit on both sides; with one, a patient on both sides is refused.
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from fmcore.config import as_dict
from fmcore.config_sections import MilSection, section
from fmcore.errors import ConfigError, MissingPath
from fmcore.eval.bootstrap import metrics_with_intervals
from fmcore.eval.feature_files import EMBED_FILE, read_slide, slide_files
from fmcore.eval.results import write_result
from fmcore.eval.sweep import stratified_split
from fmcore.plugin_manager import Registry


class GatedAttention(nn.Module):
    """Attention pooling of a bag (N, D) into one vector (D,), with the weights (N,) summing
    to 1 (Ilse et al. 2018, eq. 9)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.tanh_branch = nn.Linear(dim, hidden)  # V
        self.gate_branch = nn.Linear(dim, hidden)  # U
        self.score = nn.Linear(hidden, 1)  # w

    def forward(self, bag: Tensor) -> tuple[Tensor, Tensor]:
        gated = torch.tanh(self.tanh_branch(bag)) * torch.sigmoid(self.gate_branch(bag))
        weights = self.score(gated).squeeze(-1).softmax(dim=0)  # (N,)
        return weights @ bag, weights


class ABMIL(nn.Module):
    """Tile features -> a shared projection -> gated attention pooling -> class logits."""

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        *,
        hidden: int = 128,
        attention_hidden: int = 64,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.pool = GatedAttention(hidden, attention_hidden)
        self.classify = nn.Linear(hidden, num_classes)

    def forward(self, bag: Tensor) -> tuple[Tensor, Tensor]:
        """Logits (C,) and attention weights (N,) of one bag (N, feature_dim)."""
        pooled, weights = self.pool(self.project(bag))
        return self.classify(pooled), weights


@dataclass(frozen=True)
class SlideLabel:
    slide: str
    label: int
    patient: str  # the slide itself when the CSV has no patient column
    split: str | None


def read_slide_labels(path: Path) -> list[SlideLabel]:
    """Rows of a ``slide,label[,patient][,split]`` CSV; labels are integers or class names
    (numbered in sorted order)."""
    if not path.is_file():
        raise MissingPath(f"eval.labels={path} does not exist: give a CSV slide,label[,patient]")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = [
            {key.strip().lower(): (value or "").strip() for key, value in row.items() if key}
            for row in csv.DictReader(handle)
        ]
    if not rows or not {"slide", "label"} <= set(rows[0]):
        raise ConfigError(
            f"eval.labels={path} needs a header with the columns slide,label[,patient][,split]"
        )
    unlabelled = [row["slide"] for row in rows if not row["label"]]
    if unlabelled:
        raise ConfigError(f"eval.labels={path}: slide(s) without a label: {unlabelled[:5]}")
    names = [row["label"] for row in rows]
    if all(name.lstrip("-").isdigit() for name in names):
        numbers = [int(name) for name in names]
    else:
        classes = sorted(set(names))
        numbers = [classes.index(name) for name in names]
    return [
        SlideLabel(
            row["slide"], number, row.get("patient") or row["slide"], row.get("split") or None
        )
        for row, number in zip(rows, numbers, strict=True)
    ]


def patient_split(
    slides: Sequence[SlideLabel], test_fraction: float, seed: int
) -> tuple[list[SlideLabel], list[SlideLabel]]:
    """(train, test): ``test_fraction`` of each class's patients, with all their slides, held
    out; a patient's class is the most common label of their slides."""
    by_patient: dict[str, list[SlideLabel]] = defaultdict(list)
    for slide in slides:
        by_patient[slide.patient].append(slide)
    patients = list(by_patient)
    classes = torch.tensor(
        [Counter(s.label for s in by_patient[p]).most_common(1)[0][0] for p in patients]
    )
    train, test = stratified_split(classes, test_fraction, seed)
    return (
        [s for i in train.tolist() for s in by_patient[patients[i]]],
        [s for i in test.tolist() for s in by_patient[patients[i]]],
    )


def split_by_column(
    slides: Sequence[SlideLabel], train_split: str, test_split: str
) -> tuple[list[SlideLabel], list[SlideLabel]]:
    train = [s for s in slides if s.split == train_split]
    test = [s for s in slides if s.split == test_split]
    crossing = sorted({s.patient for s in train} & {s.patient for s in test})
    if crossing:
        raise ConfigError(
            f"patient(s) {crossing[:5]} have slides in both '{train_split}' and '{test_split}':"
            " fix the split column so each patient is on one side"
        )
    return train, test


class Standardize:
    """Feature-wise standardisation with statistics of every tile of the training slides,
    accumulated one slide at a time."""

    def __init__(self, bags: Sequence[Path]) -> None:
        total: Tensor | float = 0.0
        squares: Tensor | float = 0.0
        count = 0
        for path in bags:
            features = read_slide(path).features.double()
            total = total + features.sum(0)
            squares = squares + (features**2).sum(0)
            count += len(features)
        mean = torch.as_tensor(total) / count
        self.mean = mean.float()
        self.std = (squares / count - mean**2).clamp_min(0).sqrt().float().clamp_min(1e-6)

    def __call__(self, features: Tensor) -> Tensor:
        return (features - self.mean) / self.std


def train_abmil(
    bags: Sequence[Path],
    labels: Sequence[int],
    num_classes: int,
    standardize: Standardize,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    hidden: int,
    attention_hidden: int,
    dropout: float,
    seed: int,
) -> ABMIL:
    """ABMIL trained with AdamW and a cosine schedule, one slide per step as in Ilse et al."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    feature_dim = int(standardize.mean.shape[0])
    model = ABMIL(
        feature_dim,
        num_classes,
        hidden=hidden,
        attention_hidden=attention_hidden,
        dropout=dropout,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * len(bags))
    targets = torch.tensor(list(labels), dtype=torch.long)
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(len(bags), generator=generator).tolist():
            bag = standardize(read_slide(bags[index]).features.float())
            logits, _ = model(bag)
            loss = F.cross_entropy(logits[None], targets[index : index + 1])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def abmil_scores(model: ABMIL, bags: Sequence[Path], standardize: Standardize) -> Tensor:
    """Class probabilities (M, C) of the bags."""
    return torch.stack(
        [model(standardize(read_slide(path).features.float()))[0].softmax(dim=0) for path in bags]
    )


def evaluate_mil(
    config: DictConfig, registry: Registry, words: Sequence[str] = ()
) -> dict[str, Any]:
    """``fmcore eval eval=mil``: train ABMIL on the train slides, score the test slides, write
    ``eval.json`` into ``run.dir``; returns its content (``registry`` and ``words`` are unused:
    the features exist already)."""
    settings = section(config, "eval", MilSection)
    if not settings.embeddings or not settings.labels:
        raise ConfigError(
            "eval=mil needs eval.embeddings=<embed.out of fmcore embed> and"
            " eval.labels=<CSV slide,label[,patient][,split]>"
        )
    features_dir = Path(settings.embeddings).expanduser()
    embedding = _read_embedding(features_dir)
    files = slide_files(features_dir)
    slides = read_slide_labels(Path(settings.labels).expanduser())
    missing = sorted(s.slide for s in slides if s.slide not in files)
    slides = [s for s in slides if s.slide in files]
    seed = settings.seed
    if any(s.split for s in slides):
        train, test = split_by_column(slides, settings.train_split, settings.test_split)
    else:
        train, test = patient_split(slides, settings.test_fraction, seed)
    for name, part in (("train", train), ("test", test)):
        if not part:
            raise ConfigError(
                f"no {name} slides with features: {len(slides)} labelled slide(s) have feature"
                f" files in {features_dir} ({len(missing)} listed in eval.labels have none)"
            )
    num_classes = max(s.label for s in slides) + 1
    train_bags = [files[s.slide] for s in train]
    test_bags = [files[s.slide] for s in test]
    standardize = Standardize(train_bags)
    model = train_abmil(
        train_bags,
        [s.label for s in train],
        num_classes,
        standardize,
        epochs=settings.epochs,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        hidden=settings.hidden,
        attention_hidden=settings.attention_hidden,
        dropout=settings.dropout,
        seed=seed,
    )
    scores = abmil_scores(model, test_bags, standardize)
    test_labels = torch.tensor([s.label for s in test])
    result = {
        "protocol": "mil",
        **metrics_with_intervals(
            scores, test_labels, num_classes, resamples=settings.bootstrap, seed=seed
        ),
        "settings": as_dict(config.eval),
        "checkpoint": embedding["checkpoint"],
        "checkpoint_step": embedding.get("checkpoint_step"),
        "domain": embedding["domain"],
        "encoder": embedding["encoder"],
        "splits": {"train": len(train), "test": len(test)},
        "patients": {
            "train": len({s.patient for s in train}),
            "test": len({s.patient for s in test}),
        },
        "slides_without_features": missing,
        "num_classes": num_classes,
        "feature_dim": int(standardize.mean.shape[0]),
        "seed": seed,
    }
    return write_result(config, result)


def _read_embedding(directory: Path) -> dict[str, Any]:
    path = directory / EMBED_FILE
    if not path.is_file():
        raise MissingPath(
            f"eval.embeddings={directory} has no {EMBED_FILE}: run fmcore embed with"
            f" embed.out={directory} first"
        )
    return json.loads(path.read_text())
