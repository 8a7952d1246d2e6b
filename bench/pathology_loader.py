"""Tiles/s of the real pathology loader against a plain ``read_region`` loop on the same slide.

    python bench/pathology_loader.py --workers 0 1 2
    python bench/pathology_loader.py --slide /data/case.svs --mpp 0.5 --batches 50

The loader is the engine's: the pathology domain's tile references in a ``DomainDataset``,
batched by ``ResumableBatchSampler`` through ``make_loader`` (worker processes, prefetching),
each tile read through the worker's own OpenSlide handle, resized to the tile size and converted
to a float tensor. The plain loop reads the same regions in the same order with one handle and
does nothing else: it is what OpenSlide alone costs in one process.

Without ``--slide`` it writes (once, under ``--workdir``) a synthetic H&E slide shaped like an
Aperio scan: 0.25 mpp with levels at 4x and 16x only, so 0.5-mpp tiles are read as 448 px from
level 0 and averaged 2x2, the common case for 40x scans. Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from loader_timing import machine_record, time_loader

from fmcore.config import compose, config_sources
from fmcore.domains.pathology.sample_slide import synthetic_section, write_pyramidal_tiff
from fmcore.engine.data import DomainDataset, ResumableBatchSampler
from fmcore.factory import build_domain
from fmcore.plugin_manager import registry


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


def order(count: int, batch: int, batches: int, seed: int) -> list[int]:
    """The tile order the engine's sampler produces: the plain loop reads the same tiles."""
    sampler = iter(ResumableBatchSampler(count, batch, seed))
    return [i for _ in range(batches) for i in next(sampler)]


def plain_loop(refs, indices: list[int]) -> float:
    import openslide

    slide = openslide.OpenSlide(refs[0].path)
    started = time.perf_counter()
    for i in indices:
        ref = refs[i]
        slide.read_region((ref.x, ref.y), ref.level, (ref.width, ref.height))
    elapsed = time.perf_counter() - started
    slide.close()
    return len(indices) / elapsed


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
    parser.add_argument("--seed", type=int, default=0)
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
    indices = order(len(refs), args.batch, args.batches, args.seed)
    plain_loop(refs, indices[: args.batch])  # warm the file cache
    print(json.dumps({**common, "loader": "plain read_region loop", "workers": 0,
                      "tiles_per_s": round(plain_loop(refs, indices), 1)}))  # fmt: skip
    for workers in args.workers:
        timing = time_loader(
            DomainDataset(domain, refs), workers, args.batch, args.batches, args.warmup, args.seed
        )
        print(
            json.dumps(
                {
                    **common,
                    "loader": "fmcore DomainDataset + DataLoader",
                    "workers": workers,
                    "tiles_per_s": round(timing.samples_per_s, 1),
                    "first_batches_s": round(timing.first_batches_s, 2),
                    "skipped": timing.skipped,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
