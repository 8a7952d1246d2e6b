"""The ophthalmology domain: colour fundus photographs and OCT volumes under ``data.root``.

``index`` finds the inputs of ``data.mode``, checks each one's header and leaves out the unusable
ones as bad inputs with their reason.

- ``fundus`` (:mod:`.photographs`, :mod:`.field_of_view`): JPEG, PNG, TIFF and single-frame
  DICOM photographs. ``load`` decodes one, finds its round field of view, crops the photograph to
  it and returns a square (3, S, S) image in [0, 1] with the FOV as the sample's valid-pixel
  mask: MAE then neither shows, budgets nor grades the black surround. With
  ``data.mirror_left_eyes`` left eyes are mirrored so every eye has a right eye's orientation.
- ``oct`` (:mod:`.oct_files`, :mod:`.oct_preprocess`): DICOM Ophthalmic Tomography, TIFF stacks,
  folders of B-scan PNGs, NumPy arrays and Heidelberg .vol files, as (1, B-scans, axial,
  lateral) volumes (``data.oct_unit=volume``) or (1, axial, lateral) B-scans (``bscan``),
  resampled to ``data.oct_spacing`` and cropped axially to the retina band.

Each input's eye (DICOM laterality, the .vol header, or the ``eye`` column of ``data.labels``)
and patient (the labels' ``patient`` column, else the input itself) go into the sample's meta.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import TypeVar

import torch
from omegaconf import DictConfig
from torch import Tensor

from fmcore.domain import Domain, Sample
from fmcore.domains.ophthalmology.field_of_view import FovSettings, NoFieldOfView, fundus_sample
from fmcore.domains.ophthalmology.modes import Mode, read_mode, sample_size
from fmcore.domains.ophthalmology.oct_files import check_oct, oct_inputs, read_oct
from fmcore.domains.ophthalmology.oct_preprocess import OctSettings, oct_sample
from fmcore.domains.ophthalmology.photographs import (
    EYE_NAMES,
    UnusableInput,
    check_photograph,
    read_photograph,
    reader_for,
)
from fmcore.domains.ophthalmology.refs import EyeRef
from fmcore.errors import BadSample, ConfigError
from fmcore.file_checks import files_under
from fmcore.labels import LabelTable
from fmcore.splits import SPLITS, check_split, select

INPUT_KINDS = {  # what data.labels names, per mode
    "fundus": "photographs (JPEG, PNG, TIFF or DICOM files)",
    "oct": "OCT volumes (DICOM, TIFF, NumPy or .vol files, or folders of B-scan PNGs)",
}
Checked = TypeVar("Checked")


class Ophthalmology(Domain):
    name = "ophthalmology"
    modality = "image2d"
    requires = ("PIL", "tifffile", "pydicom", "skimage", "eyepy")
    extra = "ophthalmology"
    splits = SPLITS
    sample_kinds = ("plain", "labelled")
    partition_keys = ("patient", "eye", "label")

    def __init__(self, data: DictConfig, cache_dir: Path) -> None:
        super().__init__(data, cache_dir)
        self.mode: Mode = read_mode(data)
        # OCT: percentile-scaled floats until that scaling moves to the device.
        self.float_samples = self.mode.is_oct
        self.sample_size  # noqa: B018 -- a wrong data.size fails here, not in a worker
        self.oct if self.mode.is_oct else self.fov  # noqa: B018 -- bad settings fail here
        self.mirror_left_eyes = bool(data.get("mirror_left_eyes", False))

    # Each mode reads only its own keys, so a run saved before the other mode existed loads.
    @cached_property
    def fov(self) -> FovSettings:
        return FovSettings.from_config(self.data)

    @cached_property
    def oct(self) -> OctSettings:
        return OctSettings.from_config(self.data)

    @classmethod
    def modality_for(cls, data: DictConfig) -> str:
        return read_mode(data).modality

    @classmethod
    def recipe_keys(cls, data: DictConfig) -> tuple[str, ...]:
        return (cls.name, f"{cls.name}-{read_mode(data).name}")

    @property
    def sample_size(self) -> tuple[int, ...]:
        return sample_size(self.data, self.mode)

    @property
    def channels(self) -> int:
        return self.mode.channels

    @property
    def sample_name(self) -> str:
        base = super().sample_name
        return f"{base}-oct" if self.mode.is_oct else base

    def find_samples(self, split: str) -> Sequence[EyeRef]:
        table = self.label_table()
        check_split(split, table, self.name)
        root = self.resolve_root()
        found = self._find_oct(root, table) if self.mode.is_oct else self._find_photos(root, table)
        kinds = INPUT_KINDS[self.mode.name]
        selected = select(found, split, table, lambda item: Path(item[0].path), kinds)
        if self.mode.unit != "bscan":
            return [replace(ref, label=label) for (ref, _), label in selected]
        return [
            replace(ref, label=label, bscan=i)
            for (ref, bscans), label in selected
            for i in range(bscans)
        ]

    def _find_photos(self, root: Path, table: LabelTable | None) -> list[tuple[EyeRef, int]]:
        """Each usable photograph's reference, and its one image."""
        found = []
        for path in files_under(root):
            reader = reader_for(path)
            if reader is None:
                continue
            eye = self._checked(path, lambda p, r=reader: check_photograph(p, r))
            if eye is not None:
                found.append((EyeRef(str(path), reader, *self._who(path, root, eye, table)), 1))
        return found

    def _find_oct(self, root: Path, table: LabelTable | None) -> list[tuple[EyeRef, int]]:
        """Each usable OCT input's reference, and its B-scan count from the header."""
        found = []
        for path, reader in oct_inputs(files_under(root)):
            header = self._checked(path, lambda p, r=reader: check_oct(p, r))
            if header is not None:
                who = self._who(path, root, header.eye, table)
                found.append((EyeRef(str(path), reader, *who), header.bscans))
        return found

    def _checked(self, path: Path, check: Callable[[Path], Checked]) -> Checked | None:
        """``check(path)``, or None with the input reported as bad, with its reason."""
        try:
            return check(path)
        except UnusableInput as error:
            self.report_bad_input(path, str(error))
        except Exception as error:  # an unreadable header
            self.report_bad_input(path, f"cannot read: {type(error).__name__}: {error}")
        return None

    def _who(
        self, path: Path, root: Path, eye: str, table: LabelTable | None
    ) -> tuple[str, str, str]:
        """(id, eye, patient) of an input: the labels' eye and patient win over the file's."""
        image_id = path.name if root == path else path.relative_to(root).as_posix()
        entry = table.lookup(path) if table is not None else None
        patient = (entry.patient if entry else None) or image_id
        listed = (entry.columns.get("eye", "") if entry else "").strip().upper()
        if listed and listed not in EYE_NAMES:
            raise ConfigError(
                f"data.labels={table.source}: eye '{listed}' of {path} is not L or R"
                " (nor OS/OD, left/right)"
            )
        return image_id, EYE_NAMES.get(listed, eye), patient

    def load(self, ref: EyeRef) -> Sample:
        if self.mode.is_oct:
            return self._load_oct(ref)
        photograph = read_photograph(ref, draft_side=self.sample_size[0])
        try:
            image, valid = fundus_sample(photograph.rgb, self.sample_size[0], self.fov)
        except NoFieldOfView as error:
            raise BadSample(ref.path, str(error)) from error
        eye = ref.eye or photograph.eye
        if self.mirror_left_eyes and eye == "L":
            image, valid = image.flip(-1), valid.flip(-1)
        return Sample(data=image, label=ref.label, meta=self._meta(ref, eye), valid=valid)

    def _load_oct(self, ref: EyeRef) -> Sample:
        try:
            volume = read_oct(ref.path, ref.reader, ref.bscan)
        except Exception as error:  # corrupt pixel data found only when decoding
            raise BadSample(str(ref), f"cannot decode: {type(error).__name__}: {error}") from error
        data = torch.from_numpy(oct_sample(volume, self.sample_size, self.oct))
        eye = ref.eye or volume.eye
        if self.mirror_left_eyes and eye == "L":
            data = data.flip(-1)
        meta = self._meta(ref, eye) | {"bscan": -1 if ref.bscan is None else ref.bscan}
        return Sample(data=data, label=ref.label, meta=meta)

    @staticmethod
    def _meta(ref: EyeRef, eye: str) -> dict[str, str | int]:
        return {"image": ref.image_id, "patient": ref.patient, "eye": eye}

    def normalize(self, views: Tensor) -> Tensor:
        if not self.mode.is_oct:
            return super().normalize(views)
        return (views - float(self.data.oct_mean)) / float(self.data.oct_std)

    def partition_key(self, ref: EyeRef, by: str) -> str | int:
        return {"patient": ref.patient, "eye": f"{ref.patient}/{ref.eye}", "label": ref.label}[by]

    def write_sample_data(self, directory: Path) -> None:
        from fmcore.domains.ophthalmology import oct_sample_data, sample_data

        if self.mode.is_oct and self.sample_kind == "labelled":
            oct_sample_data.write_labelled_volumes(directory)
        elif self.mode.is_oct:
            oct_sample_data.write_sample_volumes(directory)
        elif self.sample_kind == "labelled":
            sample_data.write_labelled_photographs(directory)
        else:
            sample_data.write_sample_photographs(directory)
