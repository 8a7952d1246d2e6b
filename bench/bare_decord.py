"""The bare arm of the video and robotics loader benches: the same frames of the same files
through decord alone, one ``VideoReader`` per file and worker opened at the size that covers the
sample's (as the domains decode), and nothing else (uint8 frames, no crop, no float)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from fmcore.domain import Sample
from fmcore.video_files.probe import import_decord
from fmcore.video_files.readers import FORKED_AWAY, cover_size


class FramesToRead(NamedTuple):
    path: str
    display_size: tuple[int, int]  # (height, width) of the file's frames
    indices: tuple[int, ...]


class BareDecord(torch.utils.data.Dataset):
    def __init__(self, reads: Sequence[FramesToRead], size: int) -> None:
        self.reads = list(reads)
        self.size = size
        self.readers: dict[str, Any] = {}
        self.owner = os.getpid()

    def __len__(self) -> int:
        return len(self.reads)

    def __getitem__(self, index: int) -> Sample:
        read = self.reads[index]
        if self.owner != os.getpid():
            # a forked worker must neither use its parent's readers nor destroy them (either
            # hangs: their decoding threads did not survive the fork), as ClipReader does
            FORKED_AWAY.append(self.readers)
            self.readers, self.owner = {}, os.getpid()
        if read.path not in self.readers:
            height, width = cover_size(read.display_size, (self.size, self.size))
            self.readers[read.path] = import_decord().VideoReader(
                read.path, width=width, height=height, num_threads=1
            )
        frames = self.readers[read.path].get_batch(list(read.indices)).asnumpy()
        return Sample(data=torch.from_numpy(frames))
