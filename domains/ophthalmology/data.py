"""The ophthalmology domain: colour fundus photographs under ``data.root``.

``index`` finds the photographs (JPEG, PNG, TIFF, single-frame DICOM), checks each one's header
(:mod:`.photographs`) and leaves out the unusable ones as bad inputs with their reason. ``load``
decodes one, finds its circular field of view, crops the photograph to it and returns a square
(3, S, S) image in [0, 1] with the FOV as the sample's valid-pixel mask (:mod:`.field_of_view`):
MAE then neither shows, budgets nor grades the black surround. Each photograph's eye (DICOM
laterality, or the ``eye`` column of ``data.labels``) is kept in the sample's meta; with
``data.mirror_left_eyes`` left eyes are mirrored so every eye has a right eye's orientation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from omegaconf import DictConfig

from fmcore.domain import Domain, Sample
from fmcore.domains.ophthalmology.field_of_view import FovSettings, NoFieldOfView, fundus_sample
from fmcore.domains.ophthalmology.photographs import (
    EYE_NAMES,
    NotAPhotograph,
    PhotoRef,
    check_photograph,
    read_photograph,
    reader_for,
)
from fmcore.errors import BadSample, ConfigError
from fmcore.file_checks import files_under
from fmcore.labels import LabelTable
from fmcore.splits import SPLITS, check_split, select

MODES = ("fundus",)
INPUT_KINDS = "photographs (JPEG, PNG, TIFF or DICOM files)"  # what data.labels names


class Ophthalmology(Domain):
    name = "ophthalmology"
    modality = "image2d"
    requires = ("PIL", "tifffile", "pydicom", "skimage")
    extra = "ophthalmology"
    splits = SPLITS
    sample_kinds = ("plain", "labelled")
    partition_keys = ("patient", "eye", "label")

    def __init__(self, data: DictConfig, cache_dir: Path) -> None:
        super().__init__(data, cache_dir)
        mode = str(data.get("mode") or "fundus")
        if mode not in MODES:
            raise ConfigError(
                f"data.mode={mode}: the ophthalmology domain reads {', '.join(MODES)}"
            )
        size = self.sample_size
        if len(size) != 2 or size[0] != size[1] or size[0] < 1:
            raise ConfigError(f"data.size={list(size)}: a fundus sample is square, [side, side]")
        self.side = int(size[0])
        self.fov = FovSettings.from_config(data)
        self.mirror_left_eyes = bool(data.get("mirror_left_eyes", False))

    def find_samples(self, split: str) -> Sequence[PhotoRef]:
        table = self.label_table()
        check_split(split, table, self.name)
        root = self.resolve_root()
        found: list[PhotoRef] = []
        for path in files_under(root):
            reader = reader_for(path)
            if reader is None:
                continue
            try:
                eye = check_photograph(path, reader)
            except NotAPhotograph as error:
                self.report_bad_input(path, str(error))
                continue
            except Exception as error:  # an unreadable header
                self.report_bad_input(path, f"cannot read: {type(error).__name__}: {error}")
                continue
            found.append(self._ref(path, root, reader, eye, table))
        selected = select(found, split, table, lambda ref: Path(ref.path), INPUT_KINDS)
        return [_with_label(ref, label) for ref, label in selected]

    def _ref(
        self, path: Path, root: Path, reader: str, eye: str, table: LabelTable | None
    ) -> PhotoRef:
        image_id = path.name if root.is_file() else path.relative_to(root).as_posix()
        entry = table.lookup(path) if table is not None else None
        patient = (entry.patient if entry else None) or image_id
        listed = (entry.columns.get("eye", "") if entry else "").strip().upper()
        if listed and listed not in EYE_NAMES:
            raise ConfigError(
                f"data.labels={table.source}: eye '{listed}' of {path} is not L or R"
                " (nor OS/OD, left/right)"
            )
        return PhotoRef(str(path), reader, image_id, EYE_NAMES.get(listed, eye), patient)

    def load(self, ref: PhotoRef) -> Sample:
        photograph = read_photograph(ref, draft_side=self.side)
        try:
            image, valid = fundus_sample(photograph.rgb, self.side, self.fov)
        except NoFieldOfView as error:
            raise BadSample(ref.path, str(error)) from error
        eye = ref.eye or photograph.eye
        if self.mirror_left_eyes and eye == "L":
            image, valid = image.flip(-1), valid.flip(-1)
        return Sample(
            data=image,
            label=ref.label,
            meta={"image": ref.image_id, "patient": ref.patient, "eye": eye},
            valid=valid,
        )

    def partition_key(self, ref: PhotoRef, by: str) -> str | int:
        return {"patient": ref.patient, "eye": f"{ref.patient}/{ref.eye}", "label": ref.label}[by]

    def write_sample_data(self, directory: Path) -> None:
        from fmcore.domains.ophthalmology.sample_data import (
            write_labelled_photographs,
            write_sample_photographs,
        )

        if self.sample_kind == "labelled":
            write_labelled_photographs(directory)
        else:
            write_sample_photographs(directory)


def _with_label(ref: PhotoRef, label: int) -> PhotoRef:
    return replace(ref, label=label)
