"""Files that appear under their name only when complete: text, bytes, tensors and PNG pictures.

Every writer puts its data under a temporary ``.partial-`` name in the same folder, flushes it
to disk and renames it into place, so a crash at any moment leaves either the previous file or
the new one, never half of one. Plugins write their own outputs with these functions.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

PARTIAL_PREFIX = ".partial-"  # a file or folder still being written; readers skip these


def partial_path(path: Path) -> Path:
    """The temporary name ``path`` is written under before the rename."""
    return path.with_name(f"{PARTIAL_PREFIX}{path.name}")


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _publish(temporary: Path, path: Path) -> None:
    fsync_path(temporary)  # before the rename: a crash must not leave an empty final file
    os.replace(temporary, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = partial_path(path)
    temporary.write_bytes(data)
    _publish(temporary, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_tensors(
    tensors: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """Write a safetensors file in place (for files inside a folder that is itself renamed).

    safetensors refuses tensors that share storage; such views are copied, the rest not.
    """
    seen: set[int] = set()
    prepared: dict[str, Tensor] = {}
    for key, tensor in tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen and tensor.numel():
            tensor = tensor.clone()
        seen.add(pointer)
        prepared[key] = tensor
    save_file(prepared, str(path), metadata=metadata)


def atomic_save_tensors(
    tensors: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = partial_path(path)
    save_tensors(tensors, temporary, metadata)
    _publish(temporary, path)


def read_metadata(path: Path) -> dict[str, str]:
    """A safetensors file's string metadata, without reading its tensors."""
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def write_png(path: Path, image: Tensor | np.ndarray) -> None:
    """Write a uint8 picture, (H, W) grey or (H, W, 3) RGB, as a PNG file (with Pillow)."""
    from PIL import Image  # matplotlib's own dependency: always installed beside fmcore

    pixels = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError(
            f"write_png wants uint8 (H, W) or (H, W, 3), got {pixels.dtype} {pixels.shape}"
        )
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
