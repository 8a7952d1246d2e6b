"""The radiology domain: CT and MRI volumes (NIfTI files, DICOM series) or 2D radiographs
(DICOM, PNG), as ``data.mode`` says.

Each volume is decoded and preprocessed with MONAI once (RAS, ``data.spacing``, CT windows or MRI
percentiles, foreground crop) and cached; a sample is a fixed-size crop of it whose position is
drawn in ``index``, so ``load`` is deterministic per reference. Each radiograph is decoded,
scaled to [0, 1] (higher is brighter), fitted to ``data.size`` and cached whole. With
``data.labels``, only the labelled inputs of the requested split are used (:mod:`.splits`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from fmcore.crops import crop_or_pad
from fmcore.domain import Domain, Sample
from fmcore.domains.radiology.cache import cache_key, cached
from fmcore.domains.radiology.modes import read_mode, sample_size
from fmcore.domains.radiology.preprocess import Preprocessing, preprocess
from fmcore.domains.radiology.radiograph import XrayPreprocessing, preprocess_radiograph
from fmcore.domains.radiology.refs import RadiographRef, VolumeRef
from fmcore.errors import ConfigError
from fmcore.labels import LabelTable
from fmcore.splits import SPLITS, check_split, select

INPUT_KINDS = "NIfTI files, DICOM series folders or radiographs"  # what data.labels names


class Radiology(Domain):
    name = "radiology"
    requires = ("monai", "nibabel", "pydicom", "PIL")
    extra = "radiology"
    splits = SPLITS
    sample_kinds = ("plain", "labelled")
    float_samples = True  # windowed, resampled floats until the windowing moves to the device

    def __init__(self, data: DictConfig, cache_dir: Path) -> None:
        super().__init__(data, cache_dir)
        self.mode = read_mode(data)

    @classmethod
    def modality_for(cls, data: DictConfig) -> str:
        return read_mode(data).modality

    @property
    def sample_size(self) -> tuple[int, ...]:
        return sample_size(self.data, self.mode)

    @property
    def channels(self) -> int:
        return self.preprocessing.channels if self.mode.is_volume else 1

    @property
    def sample_name(self) -> str:
        name = super().sample_name
        if self.mode.name != "xray":
            return name
        if self.sample_kind == "labelled":
            raise ConfigError(
                "data.sample=labelled is a CT sample (pleural effusion against clear lungs):"
                " with data.mode=xray use data.sample=plain, or data.labels for your radiographs"
            )
        return f"{name}-xray"

    @cached_property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_config(self.data)

    @cached_property
    def xray_preprocessing(self) -> XrayPreprocessing:
        return XrayPreprocessing.from_config(self.data, self.sample_size)

    def find_samples(self, split: str) -> Sequence[VolumeRef | RadiographRef]:
        """The samples of ``split``: every input for ``train`` and ``all``; with ``data.labels``,
        the inputs it labels for ``split`` (see :mod:`.splits`)."""
        table = self.label_table()
        check_split(split, table, self.name)
        self.sample_size  # noqa: B018 -- a wrong data.size fails here, not in a worker
        if self.mode.name == "xray":
            return self._radiographs(split, table)
        return self._volume_crops(split, table)

    def _volume_crops(self, split: str, table: LabelTable | None) -> list[VolumeRef]:
        from fmcore.domains.radiology.inputs import find_volumes

        self.preprocessing  # noqa: B018 -- a wrong data.windows fails here, not in a worker
        volumes, problems = find_volumes(self.resolve_root())
        for path, reason in problems:
            self.report_bad_input(path, reason)
        rng = np.random.default_rng(int(self.data.get("seed", 0)))
        crops = int(self.data.get("crops_per_volume", 1))
        # Drawn for every volume found, so a volume's crops do not depend on labels or split.
        crops_of = {v.volume_id: [tuple(rng.random(3)) for _ in range(crops)] for v in volumes}
        return [
            VolumeRef(volume.kind, volume.paths, volume.volume_id, label, crop)
            for volume, label in select(
                volumes, split, table, lambda volume: volume.item, INPUT_KINDS
            )
            for crop in crops_of[volume.volume_id]
        ]

    def _radiographs(self, split: str, table: LabelTable | None) -> list[RadiographRef]:
        from fmcore.domains.radiology.radiograph_inputs import find_radiographs

        radiographs, problems = find_radiographs(self.resolve_root())
        for path, reason in problems:
            self.report_bad_input(path, reason)
        return [
            ref._replace(label=label)
            for ref, label in select(
                radiographs, split, table, lambda ref: Path(ref.path), INPUT_KINDS
            )
        ]

    def volume(self, ref: VolumeRef) -> np.ndarray:
        """The preprocessed (C, R, A, S) volume of ``ref``, decoded once, then read from cache."""
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

    def radiograph(self, ref: RadiographRef) -> np.ndarray:
        """The preprocessed (H, W) image of ``ref``, decoded once, then read from cache."""
        settings = self.xray_preprocessing
        key = cache_key([ref.path], settings.key())
        return cached(
            self.cache_dir / "radiology" / "radiographs",
            key,
            lambda: self._decode_radiograph(ref, settings),
        )

    @staticmethod
    def _decode_radiograph(ref: RadiographRef, settings: XrayPreprocessing) -> np.ndarray:
        from fmcore.domains.radiology.radiograph_dicom import read_dicom_radiograph
        from fmcore.domains.radiology.radiograph_png import read_png

        read = read_png if ref.kind == "png" else read_dicom_radiograph
        return preprocess_radiograph(read(ref.path), settings)

    def load(self, ref: VolumeRef | RadiographRef) -> Sample:
        if isinstance(ref, RadiographRef):
            image = torch.from_numpy(np.array(self.radiograph(ref)))
            return Sample(data=image[None].clamp_(0, 1), label=ref.label, meta={"file": ref.path})
        # (C, R, A, S) -> (C, D, H, W) = (C, S, A, R): axial slices stacked along D.
        chwd = np.asarray(self.volume(ref)).transpose(0, 3, 2, 1)
        data = crop_or_pad(chwd, self.sample_size, ref.crop)
        return Sample(
            data=torch.from_numpy(data).clamp_(0, 1),
            label=ref.label,
            meta={"volume": ref.volume_id},
        )

    def write_sample_data(self, directory: Path) -> None:
        if self.mode.name == "xray":
            from fmcore.domains.radiology.sample_radiographs import write_radiographs

            write_radiographs(directory)
        elif self.sample_kind == "labelled":
            from fmcore.domains.radiology.labelled_sample import write_labelled_volumes

            write_labelled_volumes(directory)
        else:
            from fmcore.domains.radiology.sample_data import write_sample

            write_sample(directory)
