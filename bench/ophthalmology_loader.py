"""Photographs/s of the ophthalmology domain's loader against a bare Pillow decode of the same
files with the same workers.

    python bench/ophthalmology_loader.py --workers 0 1 2
    python bench/ophthalmology_loader.py --format png dicom --workers 0 2
    python bench/ophthalmology_loader.py --root /data/fundus --side 224 --workers 0 4 8

The loader is the engine's (``DomainDataset`` of the domain's references, batched by
``ResumableBatchSampler`` through ``make_loader``): each worker decodes a photograph (JPEG in
libjpeg's draft mode, no smaller than ``--side``), finds its field of view, crops, pads and
resizes it, and returns the image with its valid mask. The bare arm decodes the same files in
the same order through the same loader machinery with ``PIL.Image.open(path).convert("RGB")``
and nothing else (full-size uint8), or for DICOM ``pydicom.dcmread(path).pixel_array``. Without
``--root`` it writes ``--photographs`` synthetic fundus photographs of ``--source-size`` (a
camera's frame; the embedded sample's eyes scaled up) in each ``--format`` (JPEG, PNG,
Ophthalmic Photography DICOM) under ``--workdir`` once. One JSON line per measurement.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loader_timing import machine_record, print_against_bare

from fmcore.config import compose, config_sources
from fmcore.domain import Sample
from fmcore.domains.ophthalmology.sample_data import fundus_photograph, write_dicom_photograph
from fmcore.engine.data import DomainDataset
from fmcore.factory import build_domain
from fmcore.plugin_manager import registry


class BareDecode(torch.utils.data.Dataset):
    """The same photographs through their decoder alone: Pillow's full decode to uint8 RGB, or
    pydicom's pixel array."""

    def __init__(self, refs: list[Any]) -> None:
        self.refs = refs

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> Sample:
        import pydicom
        from PIL import Image

        path = self.refs[index].path
        if path.endswith(".dcm"):
            pixels = pydicom.dcmread(path).pixel_array
        else:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
        return Sample(data=torch.from_numpy(pixels[:64, :64].copy()))  # batches need one size


SUFFIXES = {"jpeg": ".jpg", "png": ".png", "dicom": ".dcm"}


def write_photographs(folder: Path, count: int, size: tuple[int, int], kind: str) -> Path:
    """``count`` fundus photographs of ``size`` (H, W) as ``kind``, written once."""
    from PIL import Image

    done = folder / "done"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(count):
            rng = np.random.default_rng(number)
            eye = "RL"[number % 2]
            small = fundus_photograph(rng, eye, lesions=number % 3 == 0)
            large = Image.fromarray(small).resize(size[::-1], Image.Resampling.BICUBIC)
            path = folder / f"eye_{number:03d}{SUFFIXES[kind]}"
            if kind == "dicom":
                write_dicom_photograph(path, np.asarray(large), eye, path.stem)
            elif kind == "jpeg":
                large.save(path, quality=92)
            else:
                large.save(path)
        done.touch()
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="your photographs; default: synthetic JPEGs")
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "fmcore-bench"
    )
    parser.add_argument("--photographs", type=int, default=48)
    parser.add_argument("--format", nargs="+", choices=sorted(SUFFIXES), default=["jpeg"])
    parser.add_argument(
        "--source-size", type=int, nargs=2, default=[1536, 2048], metavar=("H", "W")
    )
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()

    source = f"{args.source_size[0]}x{args.source_size[1]}"
    for kind in args.format:
        root = args.root or write_photographs(
            args.workdir / f"fundus-{kind}-{args.photographs}-{source}",
            args.photographs,
            tuple(args.source_size),
            kind,
        )
        measure(args, root, f"{kind} {source}" if not args.root else str(args.root))


def measure(args: argparse.Namespace, root: Path, files: str) -> None:
    words = [
        "domain=ophthalmology",
        f"data.root={root}",
        f"data.side={args.side}",
        f"run.cache_dir={args.workdir / 'cache'}",
    ]
    domain = build_domain(compose(words, config_sources(registry())), registry())
    refs = list(domain.index("train"))
    common = {
        **machine_record(),
        "files": f"{len(refs)} {files}",
        "side": args.side,
        "batch": args.batch,
    }
    print_against_bare(
        DomainDataset(domain, refs),
        BareDecode(refs),
        args.workers,
        (args.batch, args.batches, args.warmup),
        common,
    )


if __name__ == "__main__":
    main()
