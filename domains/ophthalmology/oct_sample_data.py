"""The embedded OCT sample: synthetic macular volumes written in every format the domain reads.

Each volume is a 3 x 3 mm macular cube, 1 mm deep (24 B-scans of 256 axial x 192 lateral
pixels): dark vitreous above the inner limiting membrane, then the retinal layers with their
typical reflectivity (bright nerve fibre layer, grey plexiform layers, dark nuclear layers, a
bright photoreceptor band and the brightest RPE), a choroid fading with depth, a foveal pit
thinning the inner layers at the centre, a tilt and curvature per volume, and multiplicative
speckle. ``write_sample_volumes`` writes one volume per format: DICOM Ophthalmic Tomography
(pixel spacing in the shared functional groups, laterality), a 16-bit TIFF stack, a folder of
B-scan PNGs, a NumPy array and a Heidelberg .vol (eyepy's own file layout);
``write_labelled_volumes`` writes the labelled sample: one small DICOM volume per patient, half
of them with drusen (dome-shaped lifts of the RPE over deposits).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmcore.dicom_writing import new_dicom
from fmcore.labels import SAMPLE_SEED, sample_patients, write_sample_labels

BSCANS, AXIAL, LATERAL = 24, 256, 192
SPACING_MM = (0.125, 0.0039, 0.0156)  # between B-scans, axial, lateral
# layer thickness (axial pixels) and reflectivity, from the inner limiting membrane down:
# RNFL, GCL+IPL, INL, OPL, ONL, photoreceptors (IS/OS), RPE
LAYERS = ((12, 0.75), (20, 0.45), (10, 0.22), (8, 0.45), (22, 0.18), (6, 0.8), (8, 1.0))
INNER_LAYERS = 4  # the fovea thins the first four
OUTER_LAYERS = 5  # drusen lift the layers from the photoreceptors down
DRUSEN = 0.55  # reflectivity of the deposits under the lifted RPE
VITREOUS = 0.03
CLASSES = ("normal", "drusen")
LABELLED_PATIENTS = 128
OPHTHALMIC_TOMOGRAPHY = "1.2.840.10008.5.1.4.1.1.77.1.5.4"
VOL_LAYERS = 19  # segmentation lines per B-scan header, as recent Spectralis exports (and
# eyepy's layer names) have them; left empty here


def macular_volume(
    rng: np.random.Generator,
    shape: tuple[int, int, int] = (BSCANS, AXIAL, LATERAL),
    drusen: int = 0,
) -> np.ndarray:
    """(B-scans, axial, lateral) float32 reflectivity in [0, 1] of a 3 x 3 mm cube 1 mm deep
    (axial sizes scale with ``shape``'s axial pixels), with ``drusen`` dome-shaped elevations
    of the RPE and photoreceptors over deposits between RPE and Bruch's membrane."""
    bscans, axial, lateral = shape
    scale = axial / AXIAL  # pixels per pixel of the native 256-pixel A-scan
    b = np.linspace(-1, 1, bscans)[:, None]
    x = np.linspace(-1, 1, lateral)[None, :]
    ilm = scale * (
        AXIAL * 0.3
        + rng.uniform(-20, 20) * x
        + rng.uniform(-10, 10) * b
        + rng.uniform(10, 30) * (x**2 + b**2)
    )  # (B, X): depth of the retina's top
    pit = 1 - 0.85 * np.exp(-((x - rng.uniform(-0.1, 0.1)) ** 2 + b**2) / 0.08)
    elevation = np.zeros_like(ilm)
    for _ in range(drusen):
        centre = rng.uniform(-0.7, 0.7, 2)
        width = rng.uniform(0.08, 0.16)
        height = scale * rng.uniform(10, 22)
        dome = 1 - ((x - centre[0]) ** 2 + (b - centre[1]) ** 2) / width**2
        elevation = np.maximum(elevation, height * np.sqrt(np.clip(dome, 0, None)))
    depth = np.arange(axial)[None, :, None] - ilm[:, None, :]  # (B, Z, X) below the ILM
    volume = np.full(depth.shape, VITREOUS, np.float32)
    top = np.zeros_like(ilm)
    for number, (thickness, reflectivity) in enumerate(LAYERS):
        bottom = top + scale * thickness * (pit if number < INNER_LAYERS else 1.0)
        raised = elevation if number >= OUTER_LAYERS else 0.0
        upper = top - raised if number >= OUTER_LAYERS else top
        lower = bottom - raised if number + 1 >= OUTER_LAYERS else bottom
        inside = (depth >= upper[:, None, :]) & (depth < lower[:, None, :])
        volume[inside] = reflectivity
        top = bottom
    deposit = (depth >= (top - elevation)[:, None, :]) & (depth < top[:, None, :])
    volume[deposit] = DRUSEN
    below = depth - top[:, None, :]
    choroid = 0.45 * np.exp(-np.clip(below, 0, None) / (40.0 * scale))
    volume = np.where(below >= 0, choroid, volume)
    speckle = rng.exponential(1.0, volume.shape)
    return np.clip(volume * speckle * 0.8, 0, 1).astype(np.float32)


def write_dicom_oct(
    path: Path,
    volume: np.ndarray,
    eye: str,
    name: str,
    spacing: tuple[float, float, float] = SPACING_MM,
) -> None:
    """``volume`` (B-scans, rows, columns) uint8 as Ophthalmic Tomography Image Storage: one
    frame per B-scan, ``spacing`` (between B-scans, rows, columns, mm) in the shared
    functional groups' Pixel Measures."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = new_dicom(OPHTHALMIC_TOMOGRAPHY, name, "OPT")
    ds.ImageLaterality = eye
    ds.NumberOfFrames = volume.shape[0]
    ds.Rows, ds.Columns = volume.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    measures = Dataset()
    measures.PixelSpacing = [spacing[1], spacing[2]]
    measures.SliceThickness = spacing[0]
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PixelData = np.ascontiguousarray(volume, dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_heyex_vol(path: Path, volume: np.ndarray, eye: str) -> None:
    """``volume`` (B-scans, axial, lateral) uint8 as a Heidelberg Spectralis .vol, built with
    eyepy's own description of the format (its writer's date field is encoded as a float in
    eyepy 0.21, so the exam time is written as a plain 64-bit integer here)."""
    import construct
    from eyepy.core.utils import to_vol_intensity
    from eyepy.io.he.vol_reader import vol_format

    layout = construct.Struct(
        *[
            (item.name / construct.Int64ul) if item.name == "exam_time" else item
            for item in vol_format.subcons
        ]
    )
    count, axial, lateral = volume.shape
    between, axial_mm, lateral_mm = SPACING_MM
    date = "2026-01-01T00:00:00"
    bscans = [
        {
            "bscan_hdr_size": 256 + VOL_LAYERS * 4 * lateral,
            "start_x": 0.0,
            "start_y": number * between,
            "end_x": lateral * lateral_mm,
            "end_y": number * between,
            "num_seg": VOL_LAYERS,
            "quality": 30.0,
            "shift": 0,
            "iv_transformation": [0.0] * 6,
            "layer_segmentations": np.zeros((VOL_LAYERS, lateral), np.float32),
            "data": to_vol_intensity(volume[number]),
        }
        for number in range(count)
    ]
    header = {
        "size_x": lateral, "size_y": axial, "n_bscans": count,
        "scale_x": lateral_mm, "scale_y": axial_mm, "distance": between,
        "size_x_slo": lateral, "size_y_slo": lateral,
        "scale_x_slo": lateral_mm, "scale_y_slo": lateral_mm,
        "field_size_slo": 15, "scan_focus": 0.0, "scan_position": {"R": "OD", "L": "OS"}[eye],
        "exam_time": 0, "scan_pattern": 3, "id": "1", "reference_id": "1", "pid": 1,
        "patient_id": path.stem, "dob": date, "vid": 1, "visit_id": "1", "visit_date": date,
        "grid_type": 0, "grid_offset": 0, "grid_type1": 0, "grid_offset1": 0,
        "prog_id": "fmcore", "localizer": np.zeros((lateral, lateral), np.uint8),
        "bscans": bscans,
    }  # fmt: skip
    path.write_bytes(layout.build(header))


def write_sample_volumes(directory: Path) -> list[Path]:
    """One volume in each format the OCT mode reads, right and left eyes alternating."""
    import tifffile
    from PIL import Image

    rng = np.random.default_rng([SAMPLE_SEED, 7])
    volumes = [np.round(macular_volume(rng) * 255).astype(np.uint8) for _ in range(5)]
    dicom, tiff, pngs, array, vol = (
        directory / name
        for name in ("oct_R.dcm", "oct_L_stack.tif", "oct_R_bscans", "oct_L.npy", "oct_R.vol")
    )
    write_dicom_oct(dicom, volumes[0], "R", "oct_patient_a")
    tifffile.imwrite(tiff, volumes[1].astype(np.uint16) * 257)
    pngs.mkdir()
    for number, bscan in enumerate(volumes[2]):
        Image.fromarray(bscan).save(pngs / f"bscan_{number}.png")
    np.save(array, volumes[3].astype(np.float32) / 255)
    write_heyex_vol(vol, volumes[4], "R")
    return [dicom, tiff, pngs, array, vol]


def write_labelled_volumes(directory: Path, patients: int = LABELLED_PATIENTS) -> list[Path]:
    """One eye of each of ``patients`` patients as DICOM OCT at the domain's default spacing
    (16 x 64 x 64: no resampling), half with 3-8 drusen, and ``labels.csv`` (path, label,
    split, patient, eye)."""
    paths, rows = [], []
    shape = (16, 64, 64)
    spacing = (0.1875, 0.0156, 0.0469)
    for number, (patient, label, split) in enumerate(sample_patients(patients, CLASSES)):
        rng = np.random.default_rng([SAMPLE_SEED, 11, number])
        drusen = int(rng.integers(3, 9)) if label == "drusen" else 0
        volume = np.round(macular_volume(rng, shape, drusen) * 255).astype(np.uint8)
        eye = "RL"[number % 2]
        path = directory / f"{patient}_{eye}.dcm"
        write_dicom_oct(path, volume, eye, patient, spacing)
        paths.append(path)
        rows.append((path.name, label, split, patient, eye))
    write_sample_labels(directory, ("path", "label", "split", "patient", "eye"), rows)
    return paths
