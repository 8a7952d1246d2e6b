"""Clouds/s of the points domain's loader against a bare open3d read with the same sampling, and
the cost of farthest point sampling per cloud at 10k / 100k / 1M points.

    python bench/points_loader.py --workers 0 1 2
    python bench/points_loader.py --format pcd --cloud-points 200000 --workers 0 2
    python bench/points_loader.py --root /data/scans --workers 0 4 8
    python bench/points_loader.py --fps-only --fps-sizes 10000 100000 1000000

The loader is the engine's (``DomainDataset`` of the domain's references, batched by
``ResumableBatchSampler`` through ``make_loader``): each worker reads a file with open3d's
tensor reader (features kept), drops non-finite points, voxel down-samples a cloud above
``data.max_candidates``, samples ``data.points`` farthest points and scales them into the unit
sphere. The bare arm reads the same files in the same order through the same loader machinery
with ``open3d.io.read_point_cloud`` and applies the same preparation (the domain's own, so both
arms sample identically). Without ``--root`` it writes ``--clouds`` scans of
``--cloud-points`` points (noisy shapes, binary PLY or PCD) under ``--workdir`` once.

The FPS rows time one cloud of each size: exact FPS on every point (fpsample), the domain's
preparation (voxel grid above ``--max-candidates``, then exact FPS), and the batched torch FPS
the points tokenizer runs on the device (on CUDA when there is one, on 10k points on a CPU).
One JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loader_timing import machine_record, print_against_bare

from fmcore.config import compose, config_sources
from fmcore.domain import Sample
from fmcore.domains.points.preprocess import Preparation, farthest_points
from fmcore.domains.points.readers import Cloud, open3d
from fmcore.domains.points.sample_data import CLASSES, posed_shape
from fmcore.engine.data import DomainDataset
from fmcore.factory import build_domain
from fmcore.modalities.points import farthest_point_sampling
from fmcore.plugin_manager import registry

TORCH_CPU_LIMIT = 10_000  # torch's FPS on a CPU is one Python step per pick: small clouds only


class BareRead(torch.utils.data.Dataset):
    """The same files through ``open3d.io.read_point_cloud`` and the domain's preparation."""

    def __init__(self, refs: list[Any], preparation: Preparation) -> None:
        self.refs = refs
        self.preparation = preparation

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> Sample:
        cloud = open3d().io.read_point_cloud(self.refs[index].path)
        xyz = np.asarray(cloud.points, dtype=np.float32)
        return Sample(data=torch.from_numpy(self.preparation(Cloud(xyz, {}))))


def scan(points: int, seed: int) -> np.ndarray:
    """``points`` noisy points on a posed shape, as a scanner would give them."""
    rng = np.random.default_rng(seed)
    shape = posed_shape(CLASSES[seed % len(CLASSES)], rng)
    open3d().utility.random.seed(seed)
    sampled = np.asarray(shape.sample_points_uniformly(points).points)
    return (sampled + rng.normal(scale=0.005, size=sampled.shape)).astype(np.float32)


def write_scans(folder: Path, count: int, points: int, suffix: str) -> Path:
    """``count`` scans of ``points`` points as binary ``suffix`` files, written once."""
    o3d = open3d()
    done = folder / "done"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(count):
            cloud = o3d.t.geometry.PointCloud(o3d.core.Tensor(scan(points, number)))
            o3d.t.io.write_point_cloud(str(folder / f"scan_{number:03d}{suffix}"), cloud)
        done.touch()
    return folder


def timed(function: Any, repeats: int) -> float:
    """Median seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def measure_fps(args: argparse.Namespace) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preparation = Preparation(args.points, (), args.max_candidates)
    for size in args.fps_sizes:
        print(json.dumps(fps_row(scan(size, seed=size), args.points, preparation, device)))


def fps_row(
    xyz: np.ndarray, points: int, preparation: Preparation, device: torch.device
) -> dict[str, Any]:
    row = {
        **machine_record(),
        "fps_points": len(xyz),
        "samples": points,
        "exact_fps_s": round(timed(lambda: farthest_points(xyz, points), 3), 4),
        "domain_preparation_s": round(timed(lambda: preparation(Cloud(xyz, {})), 3), 4),
    }
    if device.type == "cuda" or len(xyz) <= TORCH_CPU_LIMIT:
        batch = torch.from_numpy(xyz).to(device).unsqueeze(0)

        def torch_fps() -> None:
            farthest_point_sampling(batch, points)
            if device.type == "cuda":
                torch.cuda.synchronize()

        row[f"torch_fps_{device.type}_s"] = round(timed(torch_fps, 3), 4)
    return row


def measure_loader(args: argparse.Namespace, root: Path, files: str) -> None:
    words = [
        "domain=points",
        f"data.root={root}",
        f"data.points={args.points}",
        f"data.max_candidates={args.max_candidates}",
        f"run.cache_dir={args.workdir / 'cache'}",
    ]
    domain = build_domain(compose(words, config_sources(registry())), registry())
    refs = list(domain.index("train"))
    common = {**machine_record(), "files": f"{len(refs)} {files}", "batch": args.batch}
    print_against_bare(
        DomainDataset(domain, refs),
        BareRead(refs, domain.preparation),
        args.workers,
        (args.batch, args.batches, args.warmup),
        common,
        unit="clouds",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="your clouds; default: synthetic scans")
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "fmcore-bench"
    )
    parser.add_argument("--clouds", type=int, default=48)
    parser.add_argument("--cloud-points", type=int, default=100_000)
    parser.add_argument("--format", choices=("ply", "pcd"), default="ply")
    parser.add_argument("--points", type=int, default=1024)
    parser.add_argument("--max-candidates", type=int, default=32768)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--fps-sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--fps-only", action="store_true")
    args = parser.parse_args()

    measure_fps(args)
    if args.fps_only:
        return
    files = f"{args.format} of {args.cloud_points} points"
    root = args.root or write_scans(
        args.workdir / f"scans-{args.format}-{args.clouds}-{args.cloud_points}",
        args.clouds,
        args.cloud_points,
        f".{args.format}",
    )
    measure_loader(args, root, files if not args.root else str(args.root))


if __name__ == "__main__":
    main()
