"""What ``data.mode`` (and for OCT ``data.oct_unit``) selects: the layout and the sample size."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from fmcore.errors import ConfigError


@dataclass(frozen=True)
class Mode:
    name: str  # fundus, oct
    unit: str  # photograph, volume, bscan
    modality: str
    channels: int
    axes: str  # what data.size lists, for messages

    @property
    def is_oct(self) -> bool:
        return self.name == "oct"


MODES = {
    ("fundus", "photograph"): Mode("fundus", "photograph", "image2d", 3, "(side, side)"),
    ("oct", "volume"): Mode("oct", "volume", "volume3d", 1, "(B-scans, axial, lateral)"),
    ("oct", "bscan"): Mode("oct", "bscan", "image2d", 1, "(axial, lateral)"),
}
OCT_UNITS = ("volume", "bscan")


def read_mode(data: DictConfig) -> Mode:
    name = str(data.get("mode") or "fundus")
    if name == "fundus":
        return MODES[("fundus", "photograph")]
    if name != "oct":
        raise ConfigError(f"data.mode={name}: domain=ophthalmology reads fundus and oct")
    unit = str(data.get("oct_unit") or "volume")
    if unit not in OCT_UNITS:
        raise ConfigError(f"data.oct_unit={unit}: valid: {', '.join(OCT_UNITS)}")
    return MODES[("oct", unit)]


def sample_size(data: DictConfig, mode: Mode) -> tuple[int, ...]:
    """``data.size``, else ``[data.side, data.side]`` for photographs and ``data.oct_size``'s
    last two (a B-scan) or all three (a volume) for OCT; checked against the mode."""
    if data.get("size") is not None:
        size = tuple(int(s) for s in data.size)
    elif mode.is_oct:
        size = tuple(int(s) for s in data.oct_size)
        size = size if mode.unit == "volume" else size[1:]
    else:
        size = (int(data.side), int(data.side))
    rank = 3 if mode.unit == "volume" else 2
    if len(size) != rank or min(size) < 1:
        raise ConfigError(f"data.size={list(size)}: data.mode={mode.name} takes {mode.axes}")
    if mode.name == "fundus" and size[0] != size[1]:
        raise ConfigError(f"data.size={list(size)}: a fundus sample is square, [side, side]")
    return size
