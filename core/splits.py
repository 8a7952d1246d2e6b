"""Which inputs a split holds, and their labels, for domains whose inputs are files.

Without ``data.labels`` every input is unlabelled (-1) and in ``train`` (and ``all``). With it
(:mod:`fmcore.labels`: a CSV ``path,label[,split][,patient]`` or a folder per class), only the
inputs it labels are used, each with its label and split. Each input is looked up as one item
(a NIfTI file, a DICOM series' folder, a radiograph, a video), so the samples cut from one
input never straddle two splits.
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


def check_split(split: str, table: LabelTable | None, domain: str) -> None:
    """A :class:`ConfigError` for a split only ``data.labels`` defines, when it is unset."""
    if table is None and split not in UNLABELLED_SPLITS:
        raise ConfigError(
            f"split '{split}' of {domain} needs data.labels (a CSV path,label[,split][,patient]"
            " or a folder per class); without it there is only 'train' (and 'all')"
        )


def select(
    inputs: Sequence[Input],
    split: str,
    table: LabelTable | None,
    item: Callable[[Input], Path],
    kinds: str,
) -> list[tuple[Input, int]]:
    """The inputs of ``split`` with their labels; ``item`` names what ``table`` labels, and
    ``kinds`` what its paths must name, for the message when it labels none of them."""
    if table is None:
        return [(found, -1) for found in inputs]
    labelled = [
        (found, label) for found in inputs if (label := table.lookup(item(found))) is not None
    ]
    if inputs and not labelled:
        raise ConfigError(
            f"data.labels={table.source} labels none of the {len(inputs)} inputs found under"
            f" data.root: its paths must name the {kinds}, or folders above them"
        )
    return [(found, label.label) for found, label in labelled if split in ("all", label.split)]
