"""The labelled sample (``data.sample=labelled``): synthetic slides of two classes, for
measuring whether an encoder learnt anything (``bench/learns.py``, ``fmcore eval``).

Tumour slides hold nests of large, pleomorphic nuclei; most normal slides (and some tumour
ones) hold lymphoid aggregates of small, round, tightly packed nuclei, drawn to carry about as
much haematoxylin per area, so the two are told apart by nuclear size and shape more than by
how purple a tile is. Every slide gets its own staining (haematoxylin and eosin amounts scaled
as one lab's protocol and scanner differ from another's), which a colour statistic confuses
with the class and a stain-invariant encoder does not. Patients hold two slides of one class;
``labels.csv`` puts half of them in train, a quarter in val and a quarter in test. Written as
the unlabelled sample is (pyramidal JPEG TIFFs OpenSlide reads), at 0.5 microns per pixel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmcore.domains.pathology.sample_slide import (
    Crowding,
    pyramid,
    synthetic_section,
    write_pyramidal_tiff,
)
from fmcore.labels import SAMPLE_SEED, sample_patients, write_sample_labels

LABELLED_PATIENTS = 40  # half of them with tumour
SLIDES_PER_PATIENT = 2
LABELLED_SIZE = 1024  # pixels per side at 0.5 mpp: 512 um (16 tiles of 224 px, 256 of 64)
LABELLED_MPP = 0.5

TUMOUR = Crowding(cover=0.5, area_per_nucleus=420.0, major=(8.0, 14.0), minor=(5.0, 10.0))
LYMPHOID = Crowding(
    cover=0.35, area_per_nucleus=75.0, major=(3.5, 4.5), minor=(3.0, 4.0), eosin=0.5
)
CLASSES = ("normal", "tumour")
AGGREGATE_ODDS = {"normal": 0.8, "tumour": 0.3}  # chance that a slide holds an aggregate
STAIN_RANGE = ((0.65, 1.5), (0.7, 1.3))  # haematoxylin and eosin scale per slide


def labelled_section(rng: np.random.Generator, label: str) -> np.ndarray:
    """One slide's picture in the slide's own staining: a tumour slide's nests, and on most
    normal slides and some tumour ones a lymphoid aggregate (``AGGREGATE_ODDS``)."""
    regions = [TUMOUR] if label == "tumour" else []
    if rng.uniform() < AGGREGATE_ODDS[label]:
        regions.append(LYMPHOID)
    stain = (float(rng.uniform(*STAIN_RANGE[0])), float(rng.uniform(*STAIN_RANGE[1])))
    return synthetic_section(rng, LABELLED_SIZE, crowding=regions, stain=stain)


def write_labelled_slides(directory: Path, patients: int = LABELLED_PATIENTS) -> list[Path]:
    """Write the labelled sample's slides and ``labels.csv`` (path,slide,label,split,patient:
    the layout ``data.labels`` and ``eval.labels`` both read) into ``directory``."""
    paths, rows = [], []
    for number, (patient, label, split) in enumerate(sample_patients(patients, CLASSES)):
        for slide in range(SLIDES_PER_PATIENT):
            rng = np.random.default_rng([SAMPLE_SEED, number, slide])
            name = f"{patient}_slide_{slide + 1}"
            path = directory / f"{name}.tif"
            write_pyramidal_tiff(path, pyramid(labelled_section(rng, label)), LABELLED_MPP)
            paths.append(path)
            rows.append((path.name, name, label, split, patient))
    write_sample_labels(directory, ("path", "slide", "label", "split", "patient"), rows)
    return paths
