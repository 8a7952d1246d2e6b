"""The radiology domain: CT and MRI volumes from NIfTI files and DICOM series.

Each volume is decoded and preprocessed with MONAI once (RAS, ``data.spacing``, CT window or MRI
percentiles, foreground crop) and cached; a sample is a fixed-size crop of it whose position is
drawn in ``index``, so ``load`` is deterministic per reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from fmcore.domain import Domain, Sample
from fmcore.domains.radiology.cache import cache_key, cached
from fmcore.domains.radiology.crop import crop_or_pad
from fmcore.domains.radiology.preprocess import Preprocessing, preprocess
from fmcore.domains.radiology.refs import VolumeRef
from fmcore.errors import ConfigError

SPLITS = ("train", "all")


class Radiology(Domain):
    name = "radiology"
    modality = "volume3d"
    requires = ("monai", "nibabel", "pydicom")
    extra = "radiology"

    @cached_property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_config(self.data)

    def index(self, split: str = "train") -> Sequence[VolumeRef]:
        from fmcore.domains.radiology.inputs import find_volumes

        if split not in SPLITS:
            raise ConfigError(f"unknown split '{split}' for radiology; valid: {', '.join(SPLITS)}")
        self.preprocessing  # noqa: B018 -- a wrong data.mode fails here, not in a worker
        if len(self.sample_size) != 3:
            raise ConfigError(f"data.size must be (D, H, W) for radiology, got {self.sample_size}")
        volumes, problems = find_volumes(self.resolve_root())
        for path, reason in problems:
            self.report_bad_input(path, reason)
        rng = np.random.default_rng(int(self.data.get("seed", 0)))
        crops = int(self.data.get("crops_per_volume", 1))
        return [
            VolumeRef(volume.kind, volume.paths, volume.volume_id, -1, tuple(rng.random(3)))
            for volume in volumes
            for _ in range(crops)
        ]

    def volume(self, ref: VolumeRef) -> np.ndarray:
        """The preprocessed (R, A, S) volume of ``ref``, decoded once and then read from cache."""
        settings = self.preprocessing
        key = cache_key(ref.paths, settings.key())
        return cached(
            self.cache_dir / "radiology" / "volumes", key, lambda: self._decode(ref, settings)
        )

    @staticmethod
    def _decode(ref: VolumeRef, settings: Preprocessing) -> np.ndarray:
        from fmcore.domains.radiology.dicom import read_series
        from fmcore.domains.radiology.nifti import read_nifti

        volume, affine = read_nifti(ref.paths[0]) if ref.kind == "nifti" else read_series(ref.paths)
        return preprocess(volume, affine, settings)

    def load(self, ref: VolumeRef) -> Sample:
        ras = self.volume(ref)
        # (R, A, S) -> (D, H, W) = (S, A, R): axial slices stacked along D.
        dhw = np.asarray(ras).transpose(2, 1, 0)
        data = crop_or_pad(dhw, self.sample_size, ref.crop)
        return Sample(
            data=torch.from_numpy(data)[None].clamp_(0, 1),
            label=ref.label,
            meta={"volume": ref.volume_id},
        )

    def write_sample_data(self, directory: Path) -> None:
        from fmcore.domains.radiology.sample_data import write_sample

        write_sample(directory)
