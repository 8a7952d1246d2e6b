"""``fmcore embed``: frozen features of every sample of a domain split, streamed into files.

A domain that groups its index (``Domain.index_groups``: a slide's tiles) gets one file per
group; any other domain gets shards of ``embed.shard_size`` samples (layout in
:mod:`.feature_files`). Samples go through the engine's ``DomainDataset`` and ``collate`` in
batches that never mix two files, so only the file being filled is held in memory, and each file
is written atomically as soon as its last batch is done. Files already present are skipped, so an
interrupted run continues where it stopped; ``embed.json`` pins what the directory holds, and a
run with another checkpoint, pooling or data into the same directory is refused.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from fmcore.config import as_dict
from fmcore.config_sections import EmbedSection, section
from fmcore.distributed import pick_device
from fmcore.domain import Domain, Sample
from fmcore.engine.data import DomainDataset, Skipped, collate
from fmcore.errors import ConfigError
from fmcore.eval.feature_files import EMBED_FILE, shard_path, slide_path
from fmcore.eval.loading import BASELINES, LoadedEncoder, load_encoder
from fmcore.io import atomic_save_tensors, atomic_write_text, read_metadata
from fmcore.plugin_manager import Registry

FORMAT = "fmcore.embed/1"
DEFAULT_OPTION = "embed=default"  # configs/embed/default.yaml
POSITION = "embed_position"  # meta key carrying a sample's position in the split's index
TILE_COORDS = ("x", "y")  # per-tile meta of a slide domain; its other meta values are the slide's
SKIPPED_LISTED = 100  # bad samples named in embed.json (every file lists its own)


@dataclass
class FeatureFile:
    """One output file and the positions of the split's index it holds."""

    path: Path
    positions: Sequence[int]
    slide_id: str | None = None  # None: a shard


@dataclass
class _Filling:
    """What the batches of the file being written have produced so far."""

    features: list[Tensor] = field(default_factory=list)
    labels: list[Tensor] = field(default_factory=list)
    meta: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class _PositionedDataset(Dataset):
    """The engine's dataset, with each good sample's index position added to its meta (the
    engine's ``collate`` drops bad samples, so positions identify the ones that remain)."""

    def __init__(self, dataset: DomainDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, position: int) -> Sample | Skipped:
        item = self.dataset[position]
        if isinstance(item, Sample):
            return replace(item, meta={**item.meta, POSITION: position})
        return item


def with_embed_defaults(words: Sequence[str]) -> list[str]:
    """The command line with ``embed=default`` chosen unless an ``embed=`` option is given."""
    if any(word.split("=", 1)[0] == "embed" for word in words):
        return list(words)
    return [DEFAULT_OPTION, *words]


def plan_files(domain: Domain, split: str, out: Path, shard_size: int) -> tuple[Any, list]:
    """The split's index and the files covering it: one per slide, or shards."""
    grouped = domain.index_groups(split)
    if grouped is not None:
        refs, groups = grouped
        return refs, [FeatureFile(slide_path(out, sid), pos, sid) for sid, pos in groups.items()]
    refs = domain.index(split)
    starts = range(0, len(refs), shard_size)
    shards = [
        FeatureFile(shard_path(out, number), range(start, min(start + shard_size, len(refs))))
        for number, start in enumerate(starts)
    ]
    return refs, shards


def embed(config: DictConfig, registry: Registry, words: Sequence[str] = ()) -> dict[str, Any]:
    """Write the features of ``embed.split`` into ``embed.out``; returns ``embed.json``'s
    content."""
    if "embed" not in config or not config.embed.get("out"):
        raise ConfigError("set embed.out=<directory> for the feature files")
    settings = section(config, "embed", EmbedSection)
    out = Path(str(settings.out)).expanduser()
    loaded = load_encoder(config, registry, words)
    pooling = loaded.feature_kind(settings.features, "embed.features")
    refs, files = plan_files(loaded.domain, settings.split, out, settings.shard_size)
    description = _describe(config, loaded, settings, files, pooling)
    _claim(out, description)
    pending = [file for file in files if not file.path.exists()]
    print(
        f"embed: {len(files) - len(pending)} of {len(files)} file(s) already in {out};"
        f" embedding {sum(len(file.positions) for file in pending):,} sample(s)",
        file=sys.stderr,
        flush=True,
    )
    file_metadata = {
        "format": FORMAT,
        "checkpoint": description["checkpoint"],
        "checkpoint_step": str(description["checkpoint_step"] or ""),
        "domain": description["domain"],
        "pooling": pooling,
        "encoder": OmegaConf.to_yaml(loaded.config.encoder),
    }
    _write_files(loaded, refs, pending, config, settings.batch_size, file_metadata)
    summary = {
        **description,
        **_count(files),
        "bad_inputs": list(loaded.domain.bad_inputs),
        "complete": True,
    }
    atomic_write_text(out / EMBED_FILE, json.dumps(summary, indent=2) + "\n")
    return {**summary, "out": str(out)}


def _describe(
    config: DictConfig,
    loaded: LoadedEncoder,
    settings: EmbedSection,
    files: list[FeatureFile],
    pooling: str,
) -> dict[str, Any]:
    """What the directory holds; a resumed run must describe it identically."""
    checkpoint = loaded.checkpoint
    return {
        "format": FORMAT,
        "checkpoint": checkpoint if checkpoint in BASELINES else str(Path(checkpoint).resolve()),
        "checkpoint_step": loaded.metadata.get("step"),
        "domain": str(config.domain.name),
        "split": settings.split,
        "layout": "slides" if files and files[0].slide_id is not None else "shards",
        "pooling": pooling,
        "shard_size": settings.shard_size,
        "encoder": loaded.encoder_config,
        "data": as_dict(loaded.config.data),
        "seed": int(config.run.seed),
    }


def _claim(out: Path, description: dict[str, Any]) -> None:
    """Refuse a directory holding another run's features; mark it as being written."""
    existing = out / EMBED_FILE
    if existing.exists():
        previous = json.loads(existing.read_text())
        differs = [key for key, value in description.items() if previous.get(key) != value]
        if differs:
            raise ConfigError(
                f"embed.out={out} holds features of another embedding (its {EMBED_FILE} differs"
                f" in {', '.join(differs)}): choose another embed.out, or delete it to start over"
            )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(existing, json.dumps({**description, "complete": False}, indent=2) + "\n")


def _write_files(
    loaded: LoadedEncoder,
    refs: Sequence[Any],
    files: list[FeatureFile],
    config: DictConfig,
    batch_size: int,
    file_metadata: dict[str, str],
) -> None:
    batches = [
        (number, list(file.positions[start : start + batch_size]))
        for number, file in enumerate(files)
        for start in range(0, len(file.positions), batch_size)
    ]
    loader = DataLoader(
        _PositionedDataset(DomainDataset(loaded.domain, refs)),
        batch_sampler=[positions for _, positions in batches],
        num_workers=int(config.trainer.num_workers),
        collate_fn=collate,
    )
    device = pick_device(str(config.trainer.device), 0)
    encoder = loaded.encoder.to(device)
    pooling = file_metadata["pooling"]
    filling = _Filling()
    started = time.perf_counter()
    for index, ((number, _), (batch, skipped)) in enumerate(zip(batches, loader, strict=True)):
        filling.skipped += skipped
        if batch is not None:
            images = loaded.domain.encoder_input(batch.data.to(device))
            valid = None if batch.valid is None else batch.valid.to(device)
            filling.features.append(encoder.features(images, pooling, valid).float().cpu())
            filling.labels.append(batch.labels)
            filling.meta += batch.meta
        if index + 1 == len(batches) or batches[index + 1][0] != number:
            _write_file(files[number], filling, refs, file_metadata, started)
            filling = _Filling()
            started = time.perf_counter()


def _write_file(
    file: FeatureFile,
    filling: _Filling,
    refs: Sequence[Any],
    metadata: dict[str, str],
    started: float,
) -> None:
    """Write one file; ``started``: when its first batch was asked for (``perf_counter``)."""
    name = file.slide_id or file.path.name
    if not filling.features:  # not written: a later run tries it again
        print(f"embed: {name}: no readable sample, not written", file=sys.stderr, flush=True)
        return
    features = torch.cat(filling.features)
    metadata = {**metadata, "skipped": json.dumps(filling.skipped), "count": str(len(features))}
    if file.slide_id is not None:
        coords = torch.tensor([[m[key] for key in TILE_COORDS] for m in filling.meta])
        slide = {
            key: str(value)
            for key, value in filling.meta[0].items()
            if key not in (*TILE_COORDS, POSITION)
        }
        metadata = {**slide, **metadata, "slide": file.slide_id}
        tensors = {"features": features, "coords": coords.long()}
    else:
        positions = [m[POSITION] for m in filling.meta]
        metadata["sample_ids"] = json.dumps([str(refs[p]) for p in positions])
        metadata["sample_meta"] = json.dumps(
            [{k: v for k, v in m.items() if k != POSITION} for m in filling.meta]
        )
        tensors = {"features": features, "positions": torch.tensor(positions, dtype=torch.long)}
        labels = torch.cat(filling.labels)
        if (labels >= 0).any():
            tensors["labels"] = labels
    atomic_save_tensors(tensors, file.path, metadata)
    seconds = time.perf_counter() - started
    skipped = f", {len(filling.skipped)} bad sample(s) skipped" if filling.skipped else ""
    print(
        f"embed: {name}: {len(features)} sample(s){skipped} in {seconds:.1f} s"
        f" ({len(features) / seconds:.1f} samples/s)",
        file=sys.stderr,
        flush=True,
    )


def _count(files: list[FeatureFile]) -> dict[str, Any]:
    """Totals over the files on disk, those of earlier runs included (read from headers)."""
    samples, skipped_count, skipped, missing = 0, 0, [], []
    for file in files:
        if not file.path.exists():
            missing.append(file.slide_id or file.path.name)
            continue
        metadata = read_metadata(file.path)
        samples += int(metadata["count"])
        messages = json.loads(metadata["skipped"])
        skipped_count += len(messages)
        skipped += messages[: SKIPPED_LISTED - len(skipped)]
    return {
        "files": len(files) - len(missing),
        "samples": samples,
        "skipped_count": skipped_count,
        "skipped": skipped,
        "without_readable_samples": missing,
    }
