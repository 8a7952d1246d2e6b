"""Slide embedding throughput: ``fmcore embed`` over a folder of slides against a bare loop.

    python bench/embed_slides.py --encoder vit_small --slides 2 --workers 0 1

The ``fmcore embed`` arm is the command's own function, timed from the call to its return: it
builds the (random, seeded) encoder and the pathology domain, reads the tile index from its cache,
loads every tissue tile through ``DomainDataset`` and the data loader, runs the encoder and writes
one feature file per slide. The bare arm is what the work costs without fmcore around it: the same
tiles of the same slides, read with one OpenSlide handle per slide (``read_region``, RGB, the
2x2 average to the tile size), normalised and run through the same encoder in batches of the
same size, features kept in memory; its encoder is built and its tile list read before its clock
starts. The arms run ``--repeats`` times each, taking turns to go first (medians), so a shared
machine's drift hits both; the bare features must match the files (the largest difference is
printed). With ``--workers N`` the command's loader has N worker processes; the bare loop is
always one process.

Without ``--root`` it writes (once, under ``--workdir``) ``--slides`` copies of the synthetic
Aperio-like slide of ``bench/pathology_loader.py`` (0.25 mpp, levels 1x/4x/16x: 0.5-mpp tiles are
448-px level-0 reads averaged 2x2). Prints one JSON line per worker count.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loader_timing import machine_record
from pathology_loader import aperio_like_slide
from safetensors.torch import load_file

from fmcore.config import compose, config_sources
from fmcore.distributed import pick_device
from fmcore.eval.embed import embed, with_embed_defaults
from fmcore.eval.feature_files import slide_files
from fmcore.eval.loading import LoadedEncoder, load_encoder
from fmcore.plugin_manager import Registry, registry

POOLING = "cls"


def synthetic_slides(workdir: Path, count: int, size: int) -> Path:
    """A folder of ``count`` copies of the synthetic slide (names differ, pixels do not)."""
    template = aperio_like_slide(workdir / f"aperio_like_{size}.tif", size)
    folder = workdir / f"slides_{count}x{size}"
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(1, count + 1):
        copy = folder / f"slide_{number}.tif"
        if not copy.exists():
            shutil.copyfile(template, copy)
    return folder


def embed_words(args: argparse.Namespace, root: Path, workers: int, out: Path) -> list[str]:
    return with_embed_defaults(
        [
            "domain=pathology",
            f"data.root={root}",
            f"data.tile_size={args.tile}",
            f"data.mpp={args.mpp}",
            f"run.cache_dir={args.workdir / 'cache'}",
            "checkpoint=random",
            f"encoder={args.encoder}",
            f"trainer.device={args.device}",
            f"trainer.num_workers={workers}",
            f"embed.batch_size={args.batch}",
            f"embed.features={POOLING}",
            f"embed.out={out}",
        ]
    )


def time_embed(plugins: Registry, words: list[str]) -> float:
    started = time.perf_counter()
    embed(compose(words, config_sources(plugins)), plugins, words)
    return time.perf_counter() - started


def bare_features(
    loaded: LoadedEncoder, slides: dict[str, list[Any]], batch: int, tile: int
) -> tuple[dict[str, torch.Tensor], float]:
    """Each slide's features from plain OpenSlide reads and the encoder; and the seconds taken."""
    import openslide

    device = pick_device(str(loaded.config.trainer.device), 0)
    encoder = loaded.encoder.to(device)
    mean = torch.tensor(list(loaded.config.data.mean), device=device).view(1, 3, 1, 1)
    std = torch.tensor(list(loaded.config.data.std), device=device).view(1, 3, 1, 1)
    features = {}
    started = time.perf_counter()
    for slide_id, tiles in slides.items():
        handle = openslide.OpenSlide(tiles[0].path)
        chunks = []
        for start in range(0, len(tiles), batch):
            pixels = []
            for ref in tiles[start : start + batch]:
                region = handle.read_region((ref.x, ref.y), ref.level, (ref.width, ref.height))
                pixels.append(np.asarray(region.convert("RGB").reduce(ref.width // tile)))
            images = torch.from_numpy(np.stack(pixels)).to(device).permute(0, 3, 1, 2)
            images = (images.float() / 255.0 - mean) / std
            chunks.append(encoder.features(images, POOLING).float().cpu())
        handle.close()
        features[slide_id] = torch.cat(chunks)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return features, time.perf_counter() - started


def compare(args: argparse.Namespace, root: Path, scratch: Path) -> None:
    """One JSON line per worker count: both arms' tiles/s and seconds per slide, their ratio."""
    plugins = registry()
    # The first run indexes the slides (tissue detection, cached) and warms the file cache.
    warm = scratch / "warm"
    time_embed(plugins, embed_words(args, root, 0, warm))
    words = embed_words(args, root, 0, warm)
    loaded = load_encoder(compose(words, config_sources(plugins)), plugins, words)
    table, positions = loaded.domain.index_groups("all")
    slides = {slide_id: [table[p] for p in where] for slide_id, where in positions.items()}
    tiles = sum(len(refs) for refs in slides.values())
    written = {slide_id: load_file(str(path)) for slide_id, path in slide_files(warm).items()}
    common = {
        **machine_record(),
        "device": str(pick_device(args.device, 0)),
        "threads": torch.get_num_threads(),
        "encoder": args.encoder,
        "slides": len(slides),
        "tiles": tiles,
        "read": f"{table[0].width}x{table[0].height} at level {table[0].level}",
        "batch": args.batch,
    }
    for workers in args.workers:
        seconds: dict[str, list[float]] = {"embed": [], "bare": []}
        difference = 0.0
        for repeat in range(args.repeats):
            arms = ["embed", "bare"] if repeat % 2 == 0 else ["bare", "embed"]
            for arm in arms:  # alternating which goes first
                if arm == "embed":
                    out = scratch / f"w{workers}-r{repeat}"
                    seconds[arm].append(time_embed(plugins, embed_words(args, root, workers, out)))
                    continue
                features, elapsed = bare_features(loaded, slides, args.batch, args.tile)
                seconds[arm].append(elapsed)
                for slide_id, bare in features.items():
                    gap = (bare - written[slide_id]["features"]).abs().max().item()
                    difference = max(difference, gap)
        median = {name: statistics.median(values) for name, values in seconds.items()}
        row = {
            **common,
            "workers": workers,
            **{f"{name}_tiles_per_s": round(tiles / s, 2) for name, s in median.items()},
            **{f"{name}_s_per_slide": round(s / len(slides), 2) for name, s in median.items()},
            "ratio": round(median["bare"] / median["embed"], 3),
            "runs_s": {name: [round(s, 1) for s in values] for name, values in seconds.items()},
            "max_feature_difference": difference,
        }
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None, help="slides; default: synthetic")
    parser.add_argument("--slides", type=int, default=2, help="synthetic slides")
    parser.add_argument("--size", type=int, default=8192, help="synthetic slide side (px)")
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "fmcore-bench"
    )
    parser.add_argument("--encoder", default="vit_small")
    parser.add_argument("--tile", type=int, default=224)
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=256, help="embed.batch_size (its default)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.root or synthetic_slides(args.workdir, args.slides, args.size)
    with tempfile.TemporaryDirectory(prefix="embed-bench-") as scratch:
        compare(args, root, Path(scratch))


if __name__ == "__main__":
    main()
