"""The part every DICOM file the embedded samples write shares: file meta, UIDs, patient.

Domains write their samples as real DICOM (CT series, radiographs, cine loops, fundus
photographs) through pydicom; this gives each file its SOP class, an explicit-VR little-endian
file meta block and UIDs derived from a name, so a sample is written identically every time.
pydicom is imported here only when a sample is written (a domain extra installs it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


def new_dicom(sop_class: str, name: str, modality: str, instance: str = "instance") -> Dataset:
    """A dataset of ``sop_class`` for the synthetic patient ``name`` (its study and series UIDs
    derived from the name, its instance UID from the name and ``instance``), ready for the
    image's own attributes and ``save_as(path, enforce_file_format=True)``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[name, instance])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[name, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[name, "series"])
    ds.Modality = modality
    ds.PatientName, ds.PatientID = "Phantom^Synthetic", name
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    return ds
