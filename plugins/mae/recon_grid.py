"""The picture people judge MAE by: input / masked input / reconstruction, one row per sample.

``reconstruction_grid`` is pure (tensors in, an RGB image out); ``draw_reconstructions`` runs
the live method of a run on a few validation samples, and the plugin's ``fmcore_checkpoint_saved``
hook writes that picture as a PNG beside the checkpoints, so the method itself never touches the
file system. Grid modalities only: 2D images as they are, volumes
and video by their middle slice / frame; point clouds have no picture.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from fmcore.domain import Domain
from fmcore.errors import BadSample, FmcoreError
from fmcore.modalities.grid import GridTokenizer, patchify
from fmcore.plugins.mae.method import MAE
from fmcore.transport import stack_samples

PICTURE_DIR = "reconstructions"
SAMPLES = 8
MIN_PANEL_PIXELS = 96  # small samples (16x16 digits) are enlarged to at least this height
MASKED_GREY = 0.5
GUTTER = 2  # white pixels between panels
NORM_EPS = 1e-6  # the eps of fmcore.modalities.grid.normalized_patches


def unpatchify(patches: Tensor, patch: Sequence[int], grid: Sequence[int]) -> Tensor:
    """Inverse of :func:`fmcore.modalities.grid.patchify`: (B, N, C * prod(patch)) -> (B, C, *S).

    Patches are in raster order with channel-last values, as ``patchify`` writes them.
    """
    batch, _, size = patches.shape
    nd = len(patch)
    channels = size // math.prod(patch)
    x = patches.reshape(batch, *grid, *patch, channels)  # (B, g0, g1, ..., p0, p1, ..., C)
    order = [0, 1 + 2 * nd]
    for axis in range(nd):
        order += [1 + axis, 1 + nd + axis]
    x = x.permute(order)  # (B, C, g0, p0, g1, p1, ...)
    return x.reshape(batch, channels, *(g * p for g, p in zip(grid, patch, strict=True)))


def target_to_pixels(pred: Tensor, view: Tensor, patch: Sequence[int]) -> Tensor:
    """Predicted normalised patches (B, N, P) back to pixel values, as patches (B, N, P).

    The target normalises each patch by its own mean and variance, so the prediction is scaled
    back with the true patch's statistics, as MAE's own visualisation does.
    """
    patches = patchify(view, patch)  # (B, N, P)
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=True)
    return pred * (var + NORM_EPS).sqrt() + mean


def reconstruction_panels(
    view: Tensor, pred: Tensor, mask: Tensor, patch: Sequence[int], normalized: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """Input, masked input and reconstruction (B, C, *S), each scaled to [0, 1] for display.

    The reconstruction shows the visible patches as they were and the prediction in the hidden
    ones. Each sample and channel is scaled by its input's range, so a domain's per-channel
    normalisation needs no undoing (it is affine per channel, and so is the scaling).
    ``normalized``: the prediction is of normalised patches (``method.normalize_target``).
    """
    patches = patchify(view, patch)  # (B, N, P)
    grid = [s // p for s, p in zip(view.shape[2:], patch, strict=True)]
    hidden = mask.unsqueeze(-1).expand_as(patches)  # (B, N, P)
    predicted = target_to_pixels(pred.float(), view, patch) if normalized else pred.float()
    filled = torch.where(hidden, predicted, patches)
    spatial = tuple(range(2, view.dim()))
    low = view.amin(dim=spatial, keepdim=True)  # (B, C, 1, ...)
    span = (view.amax(dim=spatial, keepdim=True) - low).clamp(min=1e-8)

    def scaled(x: Tensor) -> Tensor:
        return ((x - low) / span).clamp(0.0, 1.0)

    hidden_pixels = unpatchify(hidden.float(), patch, grid) > 0.5  # (B, C, *S)
    original = scaled(view)
    masked = torch.where(hidden_pixels, MASKED_GREY, original)
    reconstruction = scaled(unpatchify(filled, patch, grid))
    return original, masked, reconstruction


def _as_rgb_2d(x: Tensor) -> Tensor:
    """(B, C, *S) in [0, 1] -> (B, H, W, 3): the middle slice of 3D grids, channel 0 unless RGB."""
    while x.dim() > 4:
        x = x.select(2, x.shape[2] // 2)  # the middle slice of the first spatial axis
    if x.shape[1] != 3:
        x = x[:, :1].expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1)


def reconstruction_grid(
    view: Tensor, pred: Tensor, mask: Tensor, patch: Sequence[int], normalized: bool = True
) -> Tensor:
    """One row per sample of [input | masked | reconstruction]: a uint8 RGB image (H, W, 3)."""
    panels = reconstruction_panels(view, pred, mask, patch, normalized)
    panels = [_as_rgb_2d(p.detach().float().cpu()) for p in panels]
    batch, height, width, _ = panels[0].shape
    zoom = max(1, math.ceil(MIN_PANEL_PIXELS / height))
    height, width = height * zoom, width * zoom
    rows, columns = batch * height + (batch + 1) * GUTTER, 3 * width + 4 * GUTTER
    image = torch.ones(rows, columns, 3)  # white gutters
    for row in range(batch):
        top = GUTTER + row * (height + GUTTER)
        for column, panel in enumerate(panels):
            left = GUTTER + column * (width + GUTTER)
            pixels = panel[row].repeat_interleave(zoom, 0).repeat_interleave(zoom, 1)
            image[top : top + height, left : left + width] = pixels
    return (image * 255).round().to(torch.uint8)


# The samples each live domain's pictures show, read once: a run saves many checkpoints, and
# indexing and decoding a whole-slide or CT domain again for each picture would be wasted work.
_PICTURE_SAMPLES: weakref.WeakKeyDictionary[Domain, tuple[int, Tensor | None]] = (
    weakref.WeakKeyDictionary()
)


def _picture_samples(domain: Domain, count: int) -> Tensor | None:
    """``count`` usable samples spread evenly over the validation split (else the training one).

    Always the same samples, so pictures of successive checkpoints can be compared.
    """
    cached = _PICTURE_SAMPLES.get(domain)
    if cached is None or cached[0] != count:
        cached = (count, _read_picture_samples(domain, count))
        _PICTURE_SAMPLES[domain] = cached
    return cached[1]


def _read_picture_samples(domain: Domain, count: int) -> Tensor | None:
    for split in (s for s in ("val", "train") if s in domain.splits):
        try:
            refs = list(domain.index(split))
        except FmcoreError:  # a split the domain knows but this data lacks (unlabelled slides)
            continue
        stride = max(1, len(refs) // count)
        samples = []
        for ref in refs[::stride]:
            try:
                samples.append(domain.load(ref).data)
            except BadSample:
                continue
            if len(samples) == count:
                break
        if samples:
            return stack_samples(samples)  # 8- and 16-bit photographs widened as in training
    return None


def draw_reconstructions(
    method: MAE, domain: Domain, seed: int, samples: int = SAMPLES
) -> Tensor | None:
    """The picture of the live ``method`` on ``samples`` of ``domain`` (uint8 RGB, (H, W, 3)).

    None for a modality without a grid (point clouds) or a domain without usable samples. The
    masks are seeded by ``seed``, so pictures of successive checkpoints show the same samples and
    masks; the method's training mode and the global random state are left as they were.
    """
    tokenizer = method.encoder.tokenizer
    if not isinstance(tokenizer, GridTokenizer):
        return None
    data = _picture_samples(domain, samples)
    if data is None:
        return None
    device = next(method.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = method.training
    cuda = [device.index or 0] if device.type == "cuda" else []
    method.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=cuda):
            view = domain.encoder_input(data.to(device))  # (B, C, *S), as evaluation sees it
            out = method.reconstruct(view, generator, decode_all=True)
    finally:
        method.train(was_training)
    return reconstruction_grid(view, out.pred, out.mask, tokenizer.patch, method.normalize_target)


def picture_path(run_dir: Path, checkpoint: Path) -> Path:
    """``run_dir/reconstructions/step_<N>.png`` for the checkpoint folder ``step_<N>``."""
    return run_dir / PICTURE_DIR / f"{checkpoint.name}.png"
