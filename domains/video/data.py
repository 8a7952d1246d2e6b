"""The video domain: clips of video files and DICOM cine loops under ``data.root``.

``index`` finds the files, probes them once (frame count, frame rate, size, rotation, reader:
:mod:`.probe`, cached by path, size and modification time), leaves out the unusable ones as bad
inputs with their reason, and draws ``data.clips_per_video`` clips per video with ``data.seed``
(:mod:`.sampling`), so ``load`` of a reference always decodes the same frames. ``load`` decodes
them at the clip's size (:mod:`.readers`) into a (3, T, H, W) uint8 tensor. With
``data.labels``, only the videos it labels are used, split as it says.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from fmcore.domain import Domain, Sample
from fmcore.domains.video.files import find_videos
from fmcore.domains.video.refs import ClipRef
from fmcore.domains.video.sampling import ClipSampling
from fmcore.errors import ConfigError
from fmcore.splits import SPLITS, check_split, select
from fmcore.video_files.probe import VideoInfo, probe_all
from fmcore.video_files.readers import ClipReader

INPUT_KINDS = "video files or DICOM cine files"  # what data.labels names


class ReaderFallback(UserWarning):
    """A file decord cannot read (or should not: a rotated one) is read with PyAV."""


class Video(Domain):
    name = "video"
    modality = "video"
    requires = ("decord", "av", "pydicom", "PIL")
    extra = "video"
    splits = SPLITS
    sample_kinds = ("plain", "labelled")
    partition_keys = ("video", "label")

    def __init__(self, data: DictConfig, cache_dir: Path) -> None:
        super().__init__(data, cache_dir)
        size = self.sample_size
        if len(size) != 3 or min(size) < 1:
            raise ConfigError(f"data.size={list(size)}: a clip is [frames, height, width]")
        self.reader = ClipReader(size[1:], threads=int(data.get("decode_threads") or 1))

    @cached_property
    def sampling(self) -> ClipSampling:
        return ClipSampling.from_config(self.data, frames=self.sample_size[0])

    def find_samples(self, split: str) -> Sequence[ClipRef]:
        table = self.label_table()
        check_split(split, table, self.name)
        sampling = self.sampling
        root = self.resolve_root()
        paths = find_videos(root)
        infos = probe_all(
            paths,
            self.cache_dir / "video" / "index.json",
            workers=int(self.data.get("index_workers") or 4),
        )
        rng = np.random.default_rng(int(self.data.get("seed") or 0))
        # Drawn for every file found, so a video's clips do not depend on labels or split.
        positions = {path: sampling.positions(rng) for path in paths}
        usable: list[tuple[Path, VideoInfo]] = []
        for path, info in zip(paths, infos, strict=True):
            if isinstance(info, str):
                self.report_bad_input(path, info)
            elif sampling.short_videos == "skip" and not sampling.fits(info):
                self.report_bad_input(path, f"{info.frames} frames: shorter than a clip")
            else:
                if info.note:
                    warnings.warn(f"{path}: {info.note}", ReaderFallback, stacklevel=2)
                usable.append((path, info))
        return [
            ClipRef(
                str(path),
                _video_id(path, root),
                info,
                sampling.indices(info, position),
                label,
            )
            for (path, info), label in select(usable, split, table, lambda v: v[0], INPUT_KINDS)
            for position in positions[path]
        ]

    def load(self, ref: ClipRef) -> Sample:
        frames = self.reader.read(ref.path, ref.info, ref.indices)  # (T, H, W, 3) uint8
        # Channels first by a NumPy copy: the collate stacks contiguous samples many times
        # faster than channel-last views.
        clip = torch.from_numpy(np.ascontiguousarray(frames.transpose(3, 0, 1, 2)))
        return Sample(
            data=clip,
            label=ref.label,
            meta={"video": ref.video_id, "start": ref.indices[0]},
        )

    def partition_key(self, ref: ClipRef, by: str) -> str | int:
        return ref.video_id if by == "video" else ref.label

    def write_sample_data(self, directory: Path) -> None:
        from fmcore.domains.video.sample_data import write_labelled_videos, write_sample_videos

        if self.sample_kind == "labelled":
            write_labelled_videos(directory)
        else:
            write_sample_videos(directory)


def _video_id(path: Path, root: Path) -> str:
    return path.name if root.is_file() else path.relative_to(root).as_posix()
