"""The labelled sample (``data.sample=labelled``): synthetic slides of two classes, for
measuring whether an encoder learnt anything (``bench/learns.py``, ``fmcore eval``).

Tumour slides hold nests of large, pleomorphic nuclei; normal slides hold lymphoid aggregates
of small, round, tightly packed ones, drawn to carry about as much haematoxylin per area, so
the two are told apart by nuclear size and shape, not by how purple a tile is. Every slide gets
its own staining (haematoxylin and eosin amounts scaled as one lab's protocol and scanner differ
from another's), which a colour statistic confuses with the class and a stain-invariant
encoder does not. Patients hold two slides of one class; ``labels.csv`` puts half of them in
train, a quarter in val and a quarter in test. Written as the unlabelled sample is
(pyramidal JPEG TIFFs OpenSlide reads), at 0.5 microns per pixel, with ``labels.csv``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from fmcore.domain import SAMPLE_LABELS
from fmcore.domains.pathology.sample_slide import (
    Crowding,
    pyramid,
    synthetic_section,
    write_pyramidal_tiff,
)
from fmcore.labels import sample_patients

LABELLED_PATIENTS = 40  # half of them with tumour
SLIDES_PER_PATIENT = 2
LABELLED_SIZE = 1024  # pixels per side at 0.5 mpp: 512 um, 256 tiles of 64 px
LABELLED_MPP = 0.5
LABELLED_SEED = 20261204

TUMOUR = Crowding(cover=0.5, area_per_nucleus=420.0, major=(8.0, 14.0), minor=(5.0, 10.0))
LYMPHOID = Crowding(
    cover=0.35, area_per_nucleus=75.0, major=(3.5, 4.5), minor=(3.0, 4.0), eosin=0.5
)
CLASSES = ("normal", "tumour")
STAIN_RANGE = ((0.65, 1.5), (0.7, 1.3))  # haematoxylin and eosin scale per slide


def labelled_section(rng: np.random.Generator, label: str) -> np.ndarray:
    """One slide's picture: a tumour slide's nests (and now and then an aggregate) or a normal
    slide's aggregates, in the slide's own staining."""
    tumour = label == "tumour"
    regions = [TUMOUR] if tumour else []
    if rng.uniform() < (0.3 if tumour else 0.8):
        regions.append(LYMPHOID)
    stain = (float(rng.uniform(*STAIN_RANGE[0])), float(rng.uniform(*STAIN_RANGE[1])))
    return synthetic_section(rng, LABELLED_SIZE, crowding=regions, stain=stain)


def write_labelled_slides(directory: Path, patients: int = LABELLED_PATIENTS) -> list[Path]:
    """Write the labelled sample's slides and ``labels.csv`` (path,slide,label,split,patient:
    the layout ``data.labels`` and ``eval.labels`` both read) into ``directory``."""
    paths, rows = [], []
    for number, (patient, label, split) in enumerate(sample_patients(patients, CLASSES)):
        for slide in range(SLIDES_PER_PATIENT):
            rng = np.random.default_rng([LABELLED_SEED, number, slide])
            name = f"{patient}_slide_{slide + 1}"
            path = directory / f"{name}.tif"
            write_pyramidal_tiff(path, pyramid(labelled_section(rng, label)), LABELLED_MPP)
            paths.append(path)
            rows.append((path.name, name, label, split, patient))
    with open(directory / SAMPLE_LABELS, "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "slide", "label", "split", "patient"), *rows])
    return paths
