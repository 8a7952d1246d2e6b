"""Tiles/s of the real pathology loader against bare ``read_region`` calls, both through the
engine's loader with the same workers, and the bytes of one collated batch.

    python bench/pathology_loader.py --workers 0 1 2
    python bench/pathology_loader.py --slide /data/case.svs --mpp 0.5 --batches 50

The loader is the engine's: the pathology domain's tile references in a ``DomainDataset``,
batched by ``ResumableBatchSampler`` through ``make_loader`` (worker processes, prefetching),
each tile read through the worker's own OpenSlide handle, made opaque RGB, resized to the tile
size and handed over as uint8 (the transport rule). The bare arm reads the same regions in the
same order through the same loader and workers, each worker with its own handle, and does
nothing else (it hands over one byte per tile): what OpenSlide alone costs.

Without ``--slide`` it writes (once, under ``--workdir``) a synthetic H&E slide shaped like an
Aperio scan: 0.25 mpp with levels at 4x and 16x only, so 0.5-mpp tiles are read as 448 px from
level 0 and averaged 2x2, the common case for 40x scans. Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loader_timing import machine_record, print_against_bare

from fmcore.config import compose, config_sources
from fmcore.domain import Sample
from fmcore.domains.pathology.refs import TileRef
from fmcore.domains.pathology.sample_slide import synthetic_section, write_pyramidal_tiff
from fmcore.engine.data import DomainDataset, collate
from fmcore.factory import build_domain
from fmcore.plugin_manager import registry


class BareReadRegion(torch.utils.data.Dataset):
    """``read_region`` of each tile's region through the process's own handle, and nothing
    else: one byte per tile goes to the collate."""

    def __init__(self, refs: list[TileRef]) -> None:
        self.refs = refs
        self.slides: dict[str, Any] = {}
        self.owner = os.getpid()

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> Sample:
        import openslide

        if self.owner != os.getpid():  # a forked worker opens its own handles
            self.slides, self.owner = {}, os.getpid()
        ref = self.refs[index]
        if ref.path not in self.slides:
            self.slides[ref.path] = openslide.OpenSlide(ref.path)
        self.slides[ref.path].read_region((ref.x, ref.y), ref.level, (ref.width, ref.height))
        return Sample(data=torch.zeros(1, dtype=torch.uint8))


def aperio_like_slide(path: Path, size: int) -> Path:
    """A JPEG pyramidal TIFF, ``size`` px square at 0.25 mpp, levels 1x, 4x, 16x."""
    if path.exists():
        return path
    from PIL import Image

    half = synthetic_section(np.random.default_rng(0), size // 2)
    level0 = np.asarray(Image.fromarray(half).resize((size, size), Image.Resampling.BILINEAR))
    levels = [level0]
    for factor in (4, 16):
        levels.append(np.asarray(Image.fromarray(level0).reduce(factor)))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.tif")
    write_pyramidal_tiff(partial, levels, mpp=0.25)
    partial.replace(path)
    return path


def build(slide: Path, cache: Path, tile: int, mpp: float):  # -> (domain, refs)
    words = [
        "domain=pathology",
        f"data.root={slide}",
        f"data.tile_size={tile}",
        f"data.mpp={mpp}",
        f"run.cache_dir={cache}",
    ]
    domain = build_domain(compose(words, config_sources(registry())), registry())
    return domain, domain.index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slide", type=Path, default=None, help="a slide; default: synthetic")
    parser.add_argument("--size", type=int, default=8192, help="synthetic slide side (px)")
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "fmcore-bench"
    )
    parser.add_argument("--tile", type=int, default=224)
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="alternations, best rate kept")
    args = parser.parse_args()

    synthetic = args.workdir / f"aperio_like_{args.size}.tif"
    slide = args.slide or aperio_like_slide(synthetic, args.size)
    domain, refs = build(slide, args.workdir / "cache", args.tile, args.mpp)
    ref = refs[0]
    common = {
        **machine_record(),
        "slide": slide.name,
        "tiles_in_slide": len(refs),
        "tile": args.tile,
        "mpp": args.mpp,
        "read": f"{ref.width}x{ref.height} at level {ref.level}",
        "batch": args.batch,
    }
    dataset = DomainDataset(domain, refs)
    batch, _ = collate([dataset[i] for i in range(min(args.batch, len(refs)))])
    print(json.dumps({**common, "batch_dtype": str(batch.data.dtype).removeprefix("torch."),
                      "batch_bytes": batch.data.nbytes,
                      "float32_batch_bytes": batch.data.numel() * 4}))  # fmt: skip
    print_against_bare(
        dataset,
        BareReadRegion(list(refs)),
        args.workers,
        (args.batch, args.batches, args.warmup),
        common,
        unit="tiles",
        rounds=args.rounds,
    )


if __name__ == "__main__":
    main()
