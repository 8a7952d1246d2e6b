"""The embedded fundus sample: synthetic colour fundus photographs in the formats clinics write.

Each photograph is a wide black frame with a round field of view: an orange-red retina darker
towards its rim, the optic disc on the nasal side (right of centre in a right eye, left in a
left eye), a darker macula, and four vessel arcades leaving the disc with branches. The plain
sample (``data.sample=plain``) holds a few of them as JPEG (one stored rotated with an EXIF
orientation), PNG, 16-bit TIFF and ophthalmic DICOM (colour and a red-free monochrome one, with
their laterality). The labelled sample (``data.sample=labelled``) holds both eyes of each
patient as JPEG: a ``retinopathy`` patient's eyes carry small bright exudates and dark
haemorrhages in balance (so mean brightness does not tell the classes apart), a ``healthy``
patient's none; every photograph has its own exposure, colour and vessel tree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmcore.dicom_writing import new_dicom
from fmcore.labels import SAMPLE_SEED, sample_patients, write_sample_labels

HEIGHT, WIDTH = 192, 240  # a camera frame: wider than the round field of view
RETINA = np.array([0.78, 0.36, 0.16])  # RGB of the fundus background
DISC = np.array([1.0, 0.86, 0.55])
VESSEL = np.array([0.52, 0.14, 0.08])
EXUDATE = np.array([1.0, 0.92, 0.45])
HAEMORRHAGE = np.array([0.35, 0.05, 0.03])
CLASSES = ("healthy", "retinopathy")
LABELLED_PATIENTS = 128
OPHTHALMIC_PHOTOGRAPHY_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"


def fundus_photograph(rng: np.random.Generator, eye: str, lesions: bool) -> np.ndarray:
    """One (HEIGHT, WIDTH, 3) uint8 photograph of ``eye`` (L or R)."""
    from PIL import Image, ImageDraw, ImageFilter

    rows, columns = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    cy, cx = HEIGHT / 2 + rng.uniform(-3, 3), WIDTH / 2 + rng.uniform(-3, 3)
    radius = HEIGHT * rng.uniform(0.44, 0.48)
    distance = np.hypot(rows - cy, columns - cx) / radius
    tint = RETINA * rng.uniform(0.85, 1.15, 3)
    image = tint * (1.0 - 0.45 * distance[..., None] ** 2)
    side = 1 if eye == "R" else -1
    disc = (cy + rng.uniform(-6, 6), cx + side * radius * rng.uniform(0.42, 0.5))
    macula = (cy + rng.uniform(-4, 4), cx - side * radius * rng.uniform(0.02, 0.1))
    image *= 1 - 0.35 * _blob(rows, columns, macula, radius * 0.22)[..., None]
    vessels = Image.new("L", (WIDTH, HEIGHT))
    draw = ImageDraw.Draw(vessels)
    for arcade in range(4):
        _draw_vessel(draw, rng, disc, arcade, side, radius, width=4, depth=2)
    vessel = np.asarray(vessels.filter(ImageFilter.GaussianBlur(0.8)), np.float32)[..., None] / 255
    image = image * (1 - vessel) + VESSEL * tint / RETINA * vessel
    disc_weight = _blob(rows, columns, disc, radius * 0.13)[..., None]
    image = image * (1 - disc_weight) + DISC * disc_weight
    if lesions:
        for colour, count in ((EXUDATE, rng.integers(8, 16)), (HAEMORRHAGE, rng.integers(8, 16))):
            for _ in range(count):
                angle, reach = rng.uniform(0, 2 * np.pi), radius * np.sqrt(rng.uniform(0.02, 0.6))
                centre = (macula[0] + reach * np.sin(angle), macula[1] + reach * np.cos(angle))
                spot = _blob(rows, columns, centre, rng.uniform(2.0, 4.0))[..., None]
                image = image * (1 - spot) + colour * spot
    image *= rng.uniform(0.75, 1.1)
    image += rng.normal(0, 0.015, image.shape)
    image[distance > 1] = rng.uniform(0, 0.02)
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def _blob(rows: np.ndarray, columns: np.ndarray, centre: tuple[float, float], size: float):
    """A soft disc (1 inside, fading over its rim) of radius ``size`` at ``centre``."""
    distance = np.hypot(rows - centre[0], columns - centre[1]) / size
    return np.clip(1.5 - distance, 0, 1) ** 2


def _draw_vessel(draw, rng, start, arcade: int, side: int, radius: float, width: int, depth: int):
    """A curved vessel from ``start``: arcades 0-1 sweep above and below the macula towards the
    temporal side, 2-3 go nasally; each branches ``depth`` more times, thinner."""
    vertical = -1 if arcade % 2 == 0 else 1
    heading = np.pi / 2 * vertical + (side * np.pi if arcade < 2 else 0) * 0.75
    heading += rng.uniform(-0.3, 0.3)
    y, x = start
    points = [(x, y)]
    bend = rng.uniform(0.015, 0.035) * -vertical * (side if arcade < 2 else -side)
    for _ in range(int(radius * rng.uniform(0.9, 1.4) / 4)):
        heading += bend
        y, x = y + 4 * np.sin(heading), x + 4 * np.cos(heading)
        points.append((x, y))
    draw.line(points, fill=255, width=width, joint="curve")
    if depth > 0:
        for _ in range(2):
            branch = points[rng.integers(len(points) // 4, len(points))]
            _draw_vessel(draw, rng, (branch[1], branch[0]), arcade, side, radius * 0.5,
                         max(1, width - 1), depth - 1)  # fmt: skip


def write_jpeg(path: Path, image: np.ndarray, orientation: int = 1) -> None:
    """``image`` as displayed; with an EXIF ``orientation`` other than 1, stored so that a
    viewer honouring the tag shows it upright (6: stored turned a quarter anticlockwise)."""
    from PIL import Image

    stored = np.rot90(image, 1) if orientation == 6 else image
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.ascontiguousarray(stored)).save(path, quality=92, exif=exif.tobytes())


def write_dicom_photograph(path: Path, image: np.ndarray, eye: str, name: str) -> None:
    """``image`` (H, W, 3) as Ophthalmic Photography 8 Bit: RGB, or (H, W) as a red-free
    MONOCHROME2 photograph, with its Image Laterality."""
    ds = new_dicom(OPHTHALMIC_PHOTOGRAPHY_8BIT, name, "OP")
    ds.ImageLaterality = eye
    ds.Rows, ds.Columns = image.shape[:2]
    colour = image.ndim == 3
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_sample_photographs(directory: Path) -> list[Path]:
    """A right and a left eye in every format the domain reads."""
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(SAMPLE_SEED)
    right, left = (fundus_photograph(rng, eye, lesions=False) for eye in "RL")
    exif_rotated, tiff16, dicom_colour, red_free = (
        fundus_photograph(rng, eye, lesions=True) for eye in "RLRL"
    )
    paths = [directory / name for name in (
        "patient_a_R.jpg", "patient_a_L.png", "patient_b_R_exif.jpg", "patient_b_L_16bit.tif",
        "patient_c_R.dcm", "patient_c_L_redfree.dcm",
    )]  # fmt: skip
    write_jpeg(paths[0], right)
    Image.fromarray(left).save(paths[1])
    write_jpeg(paths[2], exif_rotated, orientation=6)
    tifffile.imwrite(paths[3], tiff16.astype(np.uint16) * 257, photometric="rgb")
    write_dicom_photograph(paths[4], dicom_colour, "R", "patient_c")
    write_dicom_photograph(paths[5], red_free[..., 1], "L", "patient_c")
    return paths


def write_labelled_photographs(directory: Path, patients: int = LABELLED_PATIENTS) -> list[Path]:
    """Both eyes of ``patients`` patients as JPEG, and ``labels.csv`` (path,label,split,patient,
    eye: the layout ``data.labels`` reads; a patient's eyes share a split)."""
    paths, rows = [], []
    for number, (patient, label, split) in enumerate(sample_patients(patients, CLASSES)):
        rng = np.random.default_rng([SAMPLE_SEED, number])
        for eye in "RL":
            path = directory / f"{patient}_{eye}.jpg"
            write_jpeg(path, fundus_photograph(rng, eye, lesions=label == "retinopathy"))
            paths.append(path)
            rows.append((path.name, label, split, patient, eye))
    write_sample_labels(directory, ("path", "label", "split", "patient", "eye"), rows)
    return paths
