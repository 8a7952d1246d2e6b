"""Frames/s of the robotics domain's loader on a LeRobot v3 dataset against a bare decord
decode of the same frames.

    python bench/robotics_loader.py --workers 0 1 2
    python bench/robotics_loader.py --render-size 256 --frame-size 224 --episodes 40
    python bench/robotics_loader.py --root /data/lerobot/pusht --frame-size 96 --workers 0 4

The loader is the engine's (``DomainDataset`` of the domain's references in the shuffled order
of ``ResumableBatchSampler``, through ``make_loader``): each sample is one camera frame, found
in an MP4 that many episodes share by its timestamp while indexing, decoded by decord at the
sample's size, centre-cropped and turned into a float tensor. The bare arm
(``bare_decord.py``) decodes the same frame numbers of the same files, in the same order,
through the same loader machinery, with a ``decord.VideoReader`` per file opened at that size
and kept open per worker, and nothing else, as a hand-written loader would. Without
``--root`` it writes ``--episodes`` episodes of the simulated reaching task rendered at
``--render-size`` pixels as a LeRobot v3.0 dataset (H.264 with a key frame every ``--gop``
frames, 2 as LeRobot records; 50 episodes to a file) under ``--workdir`` once. One JSON line
per worker count.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bare_decord import BareDecord, FramesToRead
from loader_timing import machine_record, print_against_bare

from fmcore.config import compose, config_sources
from fmcore.domains.robotics.reaching import FPS
from fmcore.domains.robotics.sample_data import EPISODES_PER_FILE, record
from fmcore.domains.robotics.writers import LEROBOT_GOP, write_lerobot
from fmcore.engine.data import DomainDataset
from fmcore.factory import build_domain
from fmcore.plugin_manager import registry


def write_dataset(folder: Path, episodes: int, render_size: int, gop: int | None) -> Path:
    """``episodes`` expert episodes of the reaching task as a LeRobot v3.0 dataset, once."""
    done = folder / "done"
    if not done.exists():
        recordings = record(episodes, size=render_size)
        write_lerobot(folder / "lerobot", recordings, FPS, "v3.0", EPISODES_PER_FILE, gop)
        done.touch()
    return folder / "lerobot"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="your LeRobot dataset; default: the sim's")
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "fmcore-bench"
    )
    parser.add_argument("--episodes", type=int, default=160)
    parser.add_argument("--render-size", type=int, default=64)
    parser.add_argument("--frame-size", type=int, default=64)
    parser.add_argument(
        "--gop", type=int, default=LEROBOT_GOP, help="key-frame interval; 0: libx264's (250)"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    root = args.root or write_dataset(
        args.workdir / f"lerobot-{args.episodes}-{args.render_size}-gop{args.gop}",
        args.episodes,
        args.render_size,
        args.gop or None,
    )
    words = [
        "domain=robotics",
        f"data.root={root}",
        f"data.frame_size={args.frame_size}",
        f"run.cache_dir={args.workdir / 'cache'}",
    ]
    domain = build_domain(compose(words, config_sources(registry())), registry())
    refs = list(domain.index("all"))
    files = str(args.root) if args.root else f"sim {args.render_size} px, GOP {args.gop or 250}"
    common = {
        **machine_record(),
        "dataset": f"{files}: {len(refs)} camera frames, LeRobot v3 H.264",
        "frame_size": args.frame_size,
        "batch": args.batch,
    }
    print_against_bare(
        DomainDataset(domain, refs),
        BareDecord(
            [
                FramesToRead(r.reads[0].path, r.reads[0].info.display_size, r.reads[0].indices)
                for r in refs
            ],
            args.frame_size,
        ),
        args.workers,
        (args.batch, args.batches, args.warmup),
        common,
        unit="frames",
    )


if __name__ == "__main__":
    main()
