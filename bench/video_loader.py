"""Clips/s of the video domain's loader against bare decord ``get_batch`` on the same clips,
with the same workers, and against what training consumes.

    python bench/video_loader.py --workers 0 1 2
    python bench/video_loader.py --root /data/echo --frames 16 --size 224 --workers 0 4 8

The loader is the engine's (``DomainDataset`` of the domain's clip references, batched by
``ResumableBatchSampler`` through ``make_loader``): each worker opens its own decord readers and
decodes each clip's frames resized on decode, centre-cropped and turned into a float tensor.
The bare arm decodes the same frames of the same files in the same order through the same loader
machinery with ``decord.VideoReader(width=, height=).get_batch`` and nothing else (uint8). The
training arm runs ``fmcore train domain=video method=mae`` on the same files and reports its
samples/s (data included). Without ``--root`` it writes H.264 MP4 files (``--videos`` of
``--source-frames`` frames at ``--source-size``) under ``--workdir`` once. One JSON line per
measurement.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from bare_decord import BareDecord, FramesToRead
from loader_timing import machine_record, time_loader

from fmcore.config import compose, config_sources
from fmcore.domains.video.sample_data import moving_shapes
from fmcore.engine.data import DomainDataset
from fmcore.factory import build_domain
from fmcore.plugin_manager import registry
from fmcore.video_files.writers import write_video


def write_videos(folder: Path, count: int, frames: int, size: tuple[int, int]) -> Path:
    """``count`` H.264 MP4 files of moving shapes, written once."""
    done = folder / "done"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(count):
            rng = np.random.default_rng(number)
            clip = moving_shapes(rng, ("horizontal", "vertical")[number % 2], (frames, *size))
            write_video(folder / f"video_{number:03d}.mp4", clip, 30.0)
        done.touch()
    return folder


def training_rate(words: list[str], steps: int, run: Path) -> float:
    """Median samples/s of ``fmcore train`` over its logged steps after the first."""
    command = [sys.executable, "-m", "fmcore", "train", *words, f"trainer.max_steps={steps}"]
    done = subprocess.run(
        [*command, f"run.dir={run}", "trainer.log_every=1", "trainer.progress=none"],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr}")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    rates = [json.loads(line)["samples_per_s"] for line in lines if "samples_per_s" in line]
    return float(np.median(rates[1:] or rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="your video files; default: synthetic MP4s")
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "fmcore-bench"
    )
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--source-frames", type=int, default=150)
    parser.add_argument("--source-size", type=int, nargs=2, default=[360, 640], metavar=("H", "W"))
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--sampling-rate", type=int, default=4)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=6, help="0: no training arm")
    parser.add_argument("--encoder", default="vit_tiny")
    args = parser.parse_args()

    source = f"{args.source_size[0]}x{args.source_size[1]}"
    root = args.root or write_videos(
        args.workdir / f"videos-{args.videos}x{args.source_frames}-{source}",
        args.videos,
        args.source_frames,
        tuple(args.source_size),
    )
    words = [
        "domain=video",
        f"data.root={root}",
        f"data.frames={args.frames}",
        f"data.frame_size={args.size}",
        f"data.sampling_rate={args.sampling_rate}",
        f"run.cache_dir={args.workdir / 'cache'}",
    ]
    domain = build_domain(compose(words, config_sources(registry())), registry())
    refs = list(domain.index("train"))
    common = {
        **machine_record(),
        "files": f"{len({r.path for r in refs})} x {refs[0].info.frames} frames {source}",
        "clip": f"{args.frames} x {args.size}^2 every {args.sampling_rate} frames",
        "batch": args.batch,
    }
    timing_args = (args.batch, args.batches, args.warmup, 0)
    for workers in args.workers:
        for arm, dataset in (
            (
                "bare decord get_batch",
                BareDecord(
                    [FramesToRead(r.path, r.info.display_size, r.indices) for r in refs], args.size
                ),
            ),
            ("fmcore video loader", DomainDataset(domain, refs)),
        ):
            timing = time_loader(dataset, workers, *timing_args)
            row = {"arm": arm, "workers": workers, "clips_per_s": round(timing.samples_per_s, 1)}
            print(json.dumps({**common, **row, "skipped": timing.skipped}), flush=True)
    if args.train_steps:
        train_words = [
            *words,
            "method=mae",
            f"encoder={args.encoder}",
            f"trainer.batch_size={args.batch}",
        ]
        run = Path(tempfile.mkdtemp(prefix="train-run-", dir=args.workdir)) / "run"
        rate = training_rate(train_words, args.train_steps, run)
        row = {
            "arm": f"fmcore train method=mae encoder={args.encoder}",
            "clips_per_s": round(rate, 2),
        }
        print(json.dumps({**common, **row}), flush=True)


if __name__ == "__main__":
    main()
