"""Which inputs a split holds, and their labels.

Without ``data.labels`` every input is unlabelled (-1) and in ``train`` (and ``all``). With it
(:mod:`fmcore.labels`: a CSV ``path,label[,split][,patient]`` or a folder per class), only the
inputs it labels are used, each with its label and split: a NIfTI file, a DICOM series' folder
or a radiograph is looked up as one item, so a series' slices never straddle two splits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from fmcore.errors import ConfigError
from fmcore.labels import LabelTable

SPLITS = ("train", "val", "test", "all")
UNLABELLED_SPLITS = ("train", "all")  # what data.root alone holds

Input = TypeVar("Input")


def check_split(split: str, table: LabelTable | None) -> None:
    """A :class:`ConfigError` for a split only ``data.labels`` defines, when it is unset."""
    if table is None and split not in UNLABELLED_SPLITS:
        raise ConfigError(
            f"split '{split}' of radiology needs data.labels (a CSV path,label[,split][,patient]"
            " or a folder per class); without it there is only 'train' (and 'all')"
        )


def select(
    inputs: Sequence[Input],
    split: str,
    table: LabelTable | None,
    item: Callable[[Input], Path],
) -> list[tuple[Input, int]]:
    """The inputs of ``split`` with their labels; ``item`` names what ``table`` labels."""
    if table is None:
        return [(found, -1) for found in inputs]
    labelled = [
        (found, label) for found in inputs if (label := table.lookup(item(found))) is not None
    ]
    if inputs and not labelled:
        raise ConfigError(
            f"data.labels={table.source} labels none of the {len(inputs)} inputs found under"
            " data.root: its paths must name the NIfTI files, DICOM series folders or"
            " radiographs, or folders above them"
        )
    return [(found, label.label) for found, label in labelled if split in ("all", label.split)]
