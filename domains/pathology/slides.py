"""Whole-slide images through OpenSlide: opening, physical resolution, pyramid level choice.

Every OpenSlide import is inside a function, so ``fmcore plugins`` works without the
``pathology`` extra. Slides are opened with ``openslide.OpenSlide``, never ``open_slide``: the
latter silently falls back to a one-level ``ImageSlide`` for a truncated slide or a plain image,
and a broken slide must be reported, not half-read.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from openslide import OpenSlide
    from PIL import Image

#: Extensions OpenSlide reads (openslide.org/formats). DICOM WSI is a folder of .dcm files of
#: which OpenSlide opens any one, so the domain keeps one file per folder (see ``find_inputs``).
SLIDE_EXTENSIONS = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".dcm",
)
#: Pixels are read in pieces of at most this many per side when a whole level is downsampled
#: (tissue masks), so a slide without a usable pyramid never needs one giant buffer.
READ_CHUNK = 4096
#: A level whose downsample exceeds the wanted one by less than this fraction still counts as
#: matching it: scanners store 4.000016 for 4, and upsampling by 1.000004 is invisible.
DOWNSAMPLE_TOLERANCE = 1e-3


class SlideError(Exception):
    """A slide that cannot be used as a whole; the message says why (the domain reports it)."""


@dataclass(frozen=True)
class SlideInfo:
    """What tiling needs to know about one slide, read once while indexing."""

    dimensions: tuple[int, int]  # level 0 (width, height)
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: tuple[float, float]  # microns per level-0 pixel (x, y)
    background: tuple[int, int, int]  # RGB shown where the slide has no data
    vendor: str


def open_slide(path: str | Path) -> OpenSlide:
    """Open a slide with OpenSlide proper; any failure becomes a :class:`SlideError`."""
    import openslide

    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError as error:
        size = _file_size(path)
        raise SlideError(
            f"not a slide OpenSlide can read, or a truncated/corrupt one ({size}): {error}"
        ) from error
    except openslide.OpenSlideError as error:
        raise SlideError(f"cannot open slide: {error}") from error
    except OSError as error:
        raise SlideError(f"cannot open slide: {type(error).__name__}: {error}") from error


def _file_size(path: str | Path) -> str:
    try:
        return f"{os.path.getsize(path):,} bytes"
    except OSError:
        return "missing"


def slide_mpp(properties: Any, override: float | None) -> tuple[float, float]:
    """Microns per level-0 pixel (x, y): ``override`` if given, else the slide's metadata.

    OpenSlide normalises vendor fields (Aperio ``MPP``, TIFF resolution in centimetres, ...)
    into ``openslide.mpp-x/y``. A slide without them cannot be tiled at a physical resolution,
    and guessing (say 0.25) would silently train on the wrong magnification.
    """
    if override is not None:
        value = float(override)
        if not value > 0:
            raise SlideError(f"data.slide_mpp must be positive, not {override}")
        return value, value
    try:
        mpp_x = float(properties["openslide.mpp-x"])
        mpp_y = float(properties.get("openslide.mpp-y", mpp_x))
    except (KeyError, ValueError) as error:
        raise SlideError(
            "the slide's metadata has no resolution (openslide.mpp-x): set data.slide_mpp to"
            " its microns per pixel at full resolution (e.g. data.slide_mpp=0.25 for 40x)"
        ) from error
    if not (mpp_x > 0 and mpp_y > 0):
        raise SlideError(f"the slide's metadata gives an invalid resolution ({mpp_x}, {mpp_y})")
    return mpp_x, mpp_y


def _background(properties: Any) -> tuple[int, int, int]:
    text = str(properties.get("openslide.background-color", "FFFFFF"))
    try:
        return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
    except ValueError:
        return 255, 255, 255


def describe(slide: OpenSlide, mpp_override: float | None) -> SlideInfo:
    """The :class:`SlideInfo` of an open slide (raises :class:`SlideError` without mpp)."""
    properties = slide.properties
    return SlideInfo(
        dimensions=tuple(slide.dimensions),
        level_dimensions=tuple(tuple(d) for d in slide.level_dimensions),
        level_downsamples=tuple(float(d) for d in slide.level_downsamples),
        mpp=slide_mpp(properties, mpp_override),
        background=_background(properties),
        vendor=str(properties.get("openslide.vendor", "unknown")),
    )


def best_level(downsamples: tuple[float, ...], wanted: float) -> int:
    """The coarsest level whose downsample does not exceed ``wanted``: it holds every detail
    the output needs while reading the fewest pixels. Level 0 if all are coarser (upsampling)."""
    best = 0
    for level, downsample in enumerate(downsamples):
        if downsample <= wanted * (1 + DOWNSAMPLE_TOLERANCE) and downsample >= downsamples[best]:
            best = level
    return best


def read_rgb(
    slide: OpenSlide,
    location: tuple[int, int],
    level: int,
    size: tuple[int, int],
    background: tuple[int, int, int],
) -> Image.Image:
    """``slide.read_region(location, level, size)`` as an opaque RGB image over ``background``.

    openslide-python's ``read_region`` turns OpenSlide's premultiplied ARGB into straight RGBA
    (a pass over the region) that then needs an RGB conversion (another): two of the three
    passes that made the tile loader 0.74x a bare ``read_region``. Called through its low-level
    binding of ``openslide_read_region`` (which raises ``OpenSlideError`` as ``read_region``
    does), the premultiplied pixels go straight into Pillow's RGB, one C pass, and the loader
    costs what ``read_region`` does (bench/pathology_loader.py).
    """
    from openslide import lowlevel
    from PIL import Image

    width, height = size
    low_level = getattr(lowlevel, "_read_region", None)
    handle = getattr(slide, "_osr", None)
    if low_level is None or handle is None or width <= 0 or height <= 0:
        # another openslide-python than the one this was written against (private names), or
        # a size the public method refuses itself: its own, slower path
        rgba = slide.read_region(location, level, size)
        opaque = Image.new("RGB", rgba.size, background)
        opaque.paste(rgba, mask=rgba.getchannel("A"))
        return opaque
    pixels = (ctypes.c_uint32 * (width * height))()
    low_level(handle, pixels, location[0], location[1], level, width, height)
    return premultiplied_over(np.frombuffer(pixels, np.uint8).reshape(height, width, 4), background)


def premultiplied_over(bgra: np.ndarray, background: tuple[int, int, int]) -> Image.Image:
    """OpenSlide's premultiplied ARGB pixels, (h, w, 4) bytes (B, G, R, A: native-endian
    uint32 on the little-endian machines OpenSlide ships for), as RGB over ``background``.

    Areas outside the scanned region are transparent (alpha 0). An opaque region, the common
    case, is unpacked by Pillow in one pass; otherwise each pixel is its premultiplied colour
    plus the background's share (255 - alpha) / 255, vectorised.
    """
    from PIL import Image

    height, width = bgra.shape[:2]
    alpha = bgra[..., 3]
    if alpha.min() == 255:
        return Image.frombuffer("RGB", (width, height), bgra, "raw", "BGRX", 0, 1)
    uncovered = 255 - alpha.astype(np.uint16)[..., None]
    backdrop = (np.asarray(background, np.uint16) * uncovered + 127) // 255
    rgb = np.minimum(bgra[..., 2::-1].astype(np.uint16) + backdrop, 255)
    return Image.fromarray(rgb.astype(np.uint8))


def read_downsampled(slide: OpenSlide, info: SlideInfo, downsample: float) -> np.ndarray:
    """The whole slide at ``downsample`` (level-0 pixels per output pixel) as (h, w, 3) uint8.

    Reads the best pyramid level in chunks and shrinks each with an area filter, so a thumbnail
    of a slide with few levels costs chunk-sized buffers, not a full-resolution one.
    """
    from PIL import Image

    level = best_level(info.level_downsamples, downsample)
    level_w, level_h = info.level_dimensions[level]
    scale = info.level_downsamples[level] / downsample  # output pixels per level pixel
    out_w = max(1, round(info.dimensions[0] / downsample))
    out_h = max(1, round(info.dimensions[1] / downsample))
    # Background where a level is a pixel short of the rounded output size.
    out = np.full((out_h, out_w, 3), info.background, np.uint8)
    level_scale = info.level_downsamples[level]
    for top in range(0, level_h, READ_CHUNK):
        for left in range(0, level_w, READ_CHUNK):
            width = min(READ_CHUNK, level_w - left)
            height = min(READ_CHUNK, level_h - top)
            # Output rectangle of this chunk; its edges are rounded, so neighbours tile exactly.
            x0, x1 = round(left * scale), min(out_w, round((left + width) * scale))
            y0, y1 = round(top * scale), min(out_h, round((top + height) * scale))
            if x1 <= x0 or y1 <= y0:
                continue
            corner = (round(left * level_scale), round(top * level_scale))
            rgb = read_rgb(slide, corner, level, (width, height), info.background)
            if rgb.size != (x1 - x0, y1 - y0):
                rgb = rgb.resize((x1 - x0, y1 - y0), Image.Resampling.BOX)
            out[y0:y1, x0:x1] = np.asarray(rgb)
    return out


class SlideHandles:
    """Open slides of this process, reused across tiles, at most ``capacity`` at once.

    Keyed by (path, pid): a data-loader worker forked from a process holding handles must not
    use them (they share file offsets and decoder state with the parent), so each process opens
    its own. All handles of a process share one tile cache instead of OpenSlide's default of a
    cache per slide, which with many open slides would multiply memory per worker.
    After any ``OpenSlideError`` a handle is dead (every later call raises): :meth:`drop` it.
    """

    def __init__(self, capacity: int = 32, cache_bytes: int = 64 * 2**20) -> None:
        self.capacity = capacity
        self.cache_bytes = cache_bytes
        self._open: OrderedDict[tuple[str, int], OpenSlide] = OrderedDict()
        self._backgrounds: dict[str, tuple[int, int, int]] = {}
        self._cache: tuple[int, Any] | None = None  # (pid, OpenSlideCache)

    def get(self, path: str) -> OpenSlide:
        """This process's open handle of ``path`` (opened now if needed; :class:`SlideError`)."""
        key = (path, os.getpid())
        slide = self._open.get(key)
        if slide is not None:
            self._open.move_to_end(key)
            return slide
        slide = open_slide(path)
        slide.set_cache(self._shared_cache())
        self._open[key] = slide
        self._backgrounds[path] = _background(slide.properties)
        self._evict()
        return slide

    def background(self, path: str) -> tuple[int, int, int]:
        """The background colour of a slide opened with :meth:`get` (read once per slide)."""
        return self._backgrounds.get(path, (255, 255, 255))

    def drop(self, path: str) -> None:
        """Forget (and close) this process's handle of ``path``; the next ``get`` reopens it."""
        slide = self._open.pop((path, os.getpid()), None)
        if slide is not None:
            _close_quietly(slide)

    def _shared_cache(self) -> Any:
        import openslide

        pid = os.getpid()
        if self._cache is None or self._cache[0] != pid:
            self._cache = (pid, openslide.OpenSlideCache(self.cache_bytes))
        return self._cache[1]

    def _evict(self) -> None:
        pid = os.getpid()
        # Handles inherited from a parent process are dropped without closing: they are the
        # parent's to close.
        for key in [k for k in self._open if k[1] != pid]:
            del self._open[key]
        while len(self._open) > self.capacity:
            _, oldest = self._open.popitem(last=False)
            _close_quietly(oldest)

    def __len__(self) -> int:
        return sum(1 for _, pid in self._open if pid == os.getpid())

    def __getstate__(self) -> dict[str, Any]:  # pickled into workers: handles stay behind
        return {"capacity": self.capacity, "cache_bytes": self.cache_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["capacity"], state["cache_bytes"])


def _close_quietly(slide: OpenSlide) -> None:
    # A dead handle may fail to close; it is unusable either way.
    with contextlib.suppress(Exception):
        slide.close()
