"""The labelled CT sample (``data.sample=labelled``): chest phantoms with and without pleural
effusion, for measuring whether an encoder learnt anything (``bench/learns.py``, ``fmcore
eval``).

Each patient is one phantom of ``sample_data.py`` (body, lungs, spine, with its own shape)
written as NIfTI. An ``effusion`` patient has fluid (0-25 HU) layered in the dependent,
posterior part of one lung or both, filling 20-50% of it up to a flat level; a ``clear``
patient's lungs are all air. Scanners differ in noise (a low-dose scan is grainier), so every
volume gets its own noise level. ``labels.csv`` puts half the patients in train, a quarter in
val and a quarter in test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmcore.domains.radiology.sample_data import AIR, LUNG, SIZE, phantom, ras_affine, write_nifti
from fmcore.labels import SAMPLE_SEED, sample_patients, write_sample_labels

LABELLED_PATIENTS = 80
CLASSES = ("clear", "effusion")
FILLED = (0.2, 0.5)  # share of an effusion lung's voxels (posterior first) under fluid
FLUID_HU = (0.0, 25.0)
NOISE_HU = (10.0, 60.0)  # scanner noise (std) per volume, on top of the phantom's own


def add_effusion(volume: np.ndarray, rng: np.random.Generator) -> None:
    """Fill the posterior part of one lung or both (R, A, S axes: low A is posterior) with
    fluid up to a flat level."""
    lung = np.abs(volume - LUNG) < 100
    left = np.arange(volume.shape[0])[:, None, None] < volume.shape[0] // 2  # low R is left
    anterior = np.arange(volume.shape[1])[None, :, None]
    both, first = rng.uniform() < 0.5, rng.uniform() < 0.5
    for side, filled in ((left, both or first), (~left, both or not first)):
        in_lung = lung & side
        if filled and in_lung.any():
            level = np.quantile(np.nonzero(in_lung)[1], rng.uniform(*FILLED))
            volume[in_lung & (anterior < level)] = rng.uniform(*FLUID_HU)


def labelled_volume(rng: np.random.Generator, label: str) -> np.ndarray:
    """One patient's (R, A, S) volume in HU."""
    volume = phantom(rng, SIZE)
    if label == "effusion":
        add_effusion(volume, rng)
    volume += rng.normal(0, rng.uniform(*NOISE_HU), volume.shape).astype(np.float32)
    return np.clip(np.round(volume), AIR, 3000).astype(np.float32)


def write_labelled_volumes(directory: Path, patients: int = LABELLED_PATIENTS) -> list[Path]:
    """Write the labelled sample's volumes (NIfTI) and ``labels.csv`` (path,label,split,
    patient: the layout ``data.labels`` reads) into ``directory``."""
    affine = ras_affine()
    paths, rows = [], []
    for number, (patient, label, split) in enumerate(sample_patients(patients, CLASSES)):
        path = directory / f"{patient}.nii.gz"
        volume = labelled_volume(np.random.default_rng([SAMPLE_SEED, number]), label)
        write_nifti(path, volume, affine)
        paths.append(path)
        rows.append((path.name, label, split, patient))
    write_sample_labels(directory, ("path", "label", "split", "patient"), rows)
    return paths
