"""What ``data.mode`` selects: the decoded layout (a modality) and the default sample size."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from fmcore.errors import ConfigError


@dataclass(frozen=True)
class Mode:
    name: str
    modality: str
    default_size: tuple[int, ...]
    axes: str  # what data.size lists, for messages

    @property
    def is_volume(self) -> bool:
        return self.modality == "volume3d"


MODES = {
    "ct": Mode("ct", "volume3d", (32, 32, 32), "(D, H, W)"),
    "mri": Mode("mri", "volume3d", (32, 32, 32), "(D, H, W)"),
    "xray": Mode("xray", "image2d", (64, 64), "(H, W)"),
}


def read_mode(data: DictConfig) -> Mode:
    name = str(data.get("mode", "ct"))
    if name not in MODES:
        raise ConfigError(
            f"data.mode={name} is not supported by domain=radiology; valid: {', '.join(MODES)}"
        )
    return MODES[name]


def sample_size(data: DictConfig, mode: Mode) -> tuple[int, ...]:
    """``data.size``, or the mode's default when it is unset; its length must fit the mode."""
    if data.get("size") is None:
        return mode.default_size
    size = tuple(int(s) for s in data.size)
    if len(size) != len(mode.default_size):
        raise ConfigError(
            f"data.size must be {mode.axes} for data.mode={mode.name}, got {list(size)}"
        )
    return size
