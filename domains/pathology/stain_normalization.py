"""Per-slide stain normalisation (``data.stain.normalize``): every slide's haematoxylin and
eosin brought to one reference strength before any encoder sees a tile.

Labs and scanners stain the same tissue two-fold lighter or darker, and an encoder that sees
the raw colour clusters tiles by slide before it clusters them by tissue. Macenko et al. (2009)
normalise a slide by its stain amounts' robust maxima: the 99th percentile of each stain's
concentration over the slide's tissue pixels, scaled to a reference slide's. Here the stain
vectors are the fixed Ruifrok-Johnston ones (:mod:`.stain`), as in Tellez et al.'s jitter,
and the maxima are measured on a fixed spread of the slide's own tissue tiles at the tile
resolution, so every tile of a slide is scaled by the same two factors, whichever is read first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from fmcore.domains.pathology.stain import hed_to_rgb, rgb_to_hed

#: Tiles per slide whose pixels estimate the slide's stain maxima.
ESTIMATE_TILES = 16
#: A pixel is stained (not glass) when its optical density is at least this in every channel
#: (Macenko's beta).
MIN_DENSITY = 0.15
PERCENTILE = 99.0


def estimate_tiles(count: int, wanted: int = ESTIMATE_TILES) -> np.ndarray:
    """Positions of the tiles (of a slide's ``count``) the maxima are measured on: evenly
    spread over the slide's tile grid order, the same on every run."""
    return np.unique(np.linspace(0, count - 1, min(count, wanted)).round().astype(np.int64))


def stain_maxima(tiles: Sequence[Tensor]) -> tuple[float, float] | None:
    """The 99th percentiles of haematoxylin and eosin over the stained pixels of ``tiles``
    (each (3, H, W) RGB in [0, 1]); None when no pixel is stained."""
    rgb = torch.stack(list(tiles)).double()
    density = -torch.log(rgb.clamp(min=1e-6))
    stained = (density >= MIN_DENSITY).all(dim=1)  # (B, H, W)
    if not stained.any():
        return None
    hed = rgb_to_hed(rgb.float())
    # NumPy: torch.quantile refuses more than 2^24 values (16 tiles of 1024 px).
    maxima = [float(np.percentile(hed[:, stain][stained].numpy(), PERCENTILE)) for stain in (0, 1)]
    return maxima[0], maxima[1]


def normalization_scale(
    maxima: tuple[float, float] | None, reference: tuple[float, float]
) -> tuple[float, float]:
    """The factors that bring a slide's stain maxima to ``reference`` (1 where unmeasured)."""
    if maxima is None:
        return 1.0, 1.0
    return tuple(  # type: ignore[return-value]
        ref / found if found > 0 else 1.0 for ref, found in zip(reference, maxima, strict=True)
    )


def normalize_stains(rgb: Tensor, scale: tuple[float, float]) -> Tensor:
    """``rgb`` (3, H, W) in [0, 1] with its haematoxylin and eosin amounts times ``scale``;
    the residual (DAB) channel is left as it is."""
    factors = torch.tensor([scale[0], scale[1], 1.0], dtype=torch.float32)
    hed = rgb_to_hed(rgb[None].float())
    return hed_to_rgb(hed * factors.view(1, 3, 1, 1))[0]
