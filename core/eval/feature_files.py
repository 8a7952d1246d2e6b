"""The files ``fmcore embed`` writes, and how downstream code (ABMIL) reads them.

Layout of ``embed.out``::

    embed.json                         the run: checkpoint, encoder, domain, counts, skipped
    slides/<slide_id>.safetensors      slide domains: features (n_tiles, D) float32,
                                       coords (n_tiles, 2) int64 level-0 (x, y) per tile
    shard-00000.safetensors            other domains: features (n, D) float32, positions (n,)
                                       int64 in the split's index, labels (n,) int64 if labelled

Every file's string metadata holds the checkpoint and pooling, and ``skipped`` (a JSON list of
the bad samples it left out); a slide file also its path, mpp and tile size; a shard its sample
ids and each sample's metadata (``sample_meta``, a JSON list: a video clip's video and start
frame, a crop's volume). Files are written under a temporary name, fsynced and renamed, so a
file under its final name is always complete: a re-run skips it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file
from torch import Tensor

from fmcore.errors import ConfigError
from fmcore.io import PARTIAL_PREFIX

EMBED_FILE = "embed.json"
SLIDES_DIR = "slides"
SUFFIX = ".safetensors"


def shard_path(out: Path, number: int) -> Path:
    return out / f"shard-{number:05d}{SUFFIX}"


def slide_path(out: Path, slide_id: str) -> Path:
    """``out/slides/<slide_id>.safetensors``; an id with folders (``site_a/case_1``) nests."""
    parts = Path(slide_id).parts
    if not parts or Path(slide_id).is_absolute() or ".." in parts:
        raise ConfigError(
            f"slide id '{slide_id}' cannot name a feature file: use a relative name without '..'"
        )
    return out / SLIDES_DIR / f"{slide_id}{SUFFIX}"


@dataclass
class SlideFeatures:
    """One slide's tile features (n_tiles, D) float32 and level-0 coordinates (n_tiles, 2)."""

    features: Tensor
    coords: Tensor


def slide_files(out: Path) -> dict[str, Path]:
    """``{slide id: feature file}`` of an embed directory (nested ids included)."""
    directory = out / SLIDES_DIR
    if not directory.is_dir():
        raise ConfigError(
            f"{out} has no {SLIDES_DIR}/ folder: point it at the embed.out directory of"
            " 'fmcore embed' run on a slide domain (domain=pathology)"
        )
    return {
        path.relative_to(directory).as_posix().removesuffix(SUFFIX): path
        for path in sorted(directory.rglob(f"*{SUFFIX}"))
        if not path.name.startswith(PARTIAL_PREFIX)
    }


def read_slide(path: Path) -> SlideFeatures:
    tensors = load_file(str(path))
    return SlideFeatures(tensors["features"], tensors["coords"])
