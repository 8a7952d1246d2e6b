"""I-JEPA's wiring against independent computations: block masks on every layout, what the
student sees, the loss against the teacher's layer-normed targets, the EMA update, gradients
and the config errors."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
from conftest import tiny_method

from fmcore.errors import ConfigError
from fmcore.method import Batch, StepContext
from fmcore.modalities.base import Modality, Tokens
from fmcore.modalities.image2d import Image2D
from fmcore.modalities.points import Points
from fmcore.modalities.video import Video
from fmcore.modalities.volume3d import Volume3D
from fmcore.plugins.ijepa.masks import MaskConfig, sample_block_masks
from fmcore.plugins.ijepa.method import IJEPA
from fmcore.view_maker import ViewMaker

pytestmark = pytest.mark.usefixtures("one_thread")


SMALL = {
    "predictor": {"embed_dim": 24, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0},
    "masks.min_context": 2,
}
build_ijepa = partial(tiny_method, IJEPA, "ijepa", SMALL)


def grid_tokens(grid: tuple[int, ...], batch: int = 8) -> Tokens:
    n = math.prod(grid)
    return Tokens(x=torch.zeros(batch, n, 4), pos=torch.zeros(1, n, 4), grid=grid)


def is_box(flat: np.ndarray, grid: tuple[int, ...]) -> bool:
    """True when the tokens ``flat`` fill their bounding box on ``grid``."""
    coords = np.stack(np.unravel_index(flat, grid), axis=1)
    sides = coords.max(axis=0) - coords.min(axis=0) + 1
    return int(np.prod(sides)) == len(flat)


def test_targets_are_equal_boxes_of_the_asked_share_and_the_context_avoids_them() -> None:
    grid = (14, 14)
    masks = sample_block_masks(Image2D(), grid_tokens(grid), MaskConfig(), np.random.default_rng(0))
    assert len(masks.targets) == 4
    sizes = {t.shape[1] for t in masks.targets}
    assert len(sizes) == 1  # one size per batch
    (size,) = sizes
    assert 0.1 * 196 <= size <= 0.25 * 196  # 15-20% of the tokens, up to rounding of the sides
    for sample in range(8):
        context = set(masks.context[sample].tolist())
        assert len(context) >= 10  # min_context
        for target in masks.targets:
            block = target[sample].numpy()
            assert is_box(block, grid)
            assert context.isdisjoint(block.tolist())
    assert masks.context.shape[0] == 8  # one equal-length row per sample
    assert bool((masks.context.diff(dim=1) > 0).all())  # ascending, no repeats


def test_video_targets_are_tubes_over_every_temporal_token() -> None:
    grid = (4, 8, 8)
    masks = sample_block_masks(Video(), grid_tokens(grid), MaskConfig(), np.random.default_rng(1))
    for target in masks.targets:
        for sample in target.numpy():
            steps, rows, cols = np.unravel_index(sample, grid)
            assert set(steps.tolist()) == {0, 1, 2, 3}
            spatial = {(r, c) for r, c in zip(rows.tolist(), cols.tolist(), strict=True)}
            assert len(sample) == 4 * len(spatial)  # the same spatial block in every step


def test_point_groups_get_random_token_sets_of_the_asked_share() -> None:
    tokens = Tokens(x=torch.zeros(2, 64, 4), pos=torch.zeros(1, 64, 4), grid=None)
    masks = sample_block_masks(Points(), tokens, MaskConfig(), np.random.default_rng(2))
    size = masks.targets[0].shape[1]
    assert 0.15 * 64 - 1 <= size <= 0.2 * 64 + 1
    for sample in range(2):
        context = set(masks.context[sample].tolist())
        assert all(context.isdisjoint(t[sample].tolist()) for t in masks.targets)


def test_the_student_sees_only_the_context() -> None:
    """With the masks fixed, replacing every non-context token's pixels leaves the prediction
    unchanged; the teacher's targets (of the whole view) change."""
    method = build_ijepa()
    view = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    masks = sample_block_masks(
        method.modality, method.encoder.tokenizer(view), method.masks, np.random.default_rng(3)
    )
    hidden = torch.ones(2, 16, dtype=torch.bool)
    hidden[torch.arange(2).unsqueeze(1), masks.context] = False
    pixel_hidden = hidden.view(2, 1, 4, 1, 4, 1).expand(2, 3, 4, 4, 4, 4).reshape(2, 3, 16, 16)
    changed = torch.where(pixel_hidden, torch.rand_like(view), view)
    with torch.no_grad():
        pred = method.predict(method.encoder.tokenizer(view), masks)
        pred_changed = method.predict(method.encoder.tokenizer(changed), masks)
        targets = method.target_representations(view, masks)
        targets_changed = method.target_representations(changed, masks)
    assert torch.allclose(pred, pred_changed, atol=1e-6)
    assert not torch.allclose(targets, targets_changed, atol=1e-3)


def test_targets_are_the_teachers_layer_normed_tokens_at_each_block() -> None:
    method = build_ijepa()
    view = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    masks = sample_block_masks(
        method.modality, method.encoder.tokenizer(view), method.masks, np.random.default_rng(4)
    )
    with torch.no_grad():
        targets = method.target_representations(view, masks)
        patches = method.teacher(view).patches
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, unbiased=False, keepdim=True)
    normed = (patches - mean) / torch.sqrt(var + 1e-5)
    blocks = len(masks.targets)
    for k, index in enumerate(masks.targets):
        for sample in range(2):
            expected = normed[sample, index[sample]]
            assert torch.allclose(targets[k * 2 + sample], expected, atol=1e-5)
    assert targets.shape[0] == blocks * 2


def test_the_teacher_follows_the_student_by_ema_and_is_exported() -> None:
    method = build_ijepa()
    student = method.encoder.trunk.blocks[0].mlp.fc1.weight
    teacher = method.teacher.trunk.blocks[0].mlp.fc1.weight
    with torch.no_grad():
        student.add_(1.0)
    before = teacher.detach().clone()
    expected = 0.9 * before + 0.1 * student.detach()
    views = ViewMaker(method.modality, (16, 16), (4, 4))
    method.after_optimizer_step(StepContext(0, 1, 1e-3, 0.05, 0.9, views, torch.Generator()))
    assert torch.allclose(teacher, expected, atol=1e-6)
    assert method.export_encoder() is method.teacher
    assert not any(p.requires_grad for p in method.teacher.parameters())


@pytest.mark.parametrize(
    ("modality", "size", "channels", "options"),
    [
        (Image2D(), (16, 16), 3, {"patch_size": 4}),
        (Volume3D(), (16, 16, 16), 1, {"patch_size": 4}),
        (Video(), (4, 32, 32), 3, {"patch_size": 8, "tubelet": 2}),
        (Points(), (256,), 3, {"num_groups": 32, "group_size": 8}),
    ],
)
def test_every_modality_trains_every_student_parameter(
    modality: Modality, size: tuple[int, ...], channels: int, options: dict
) -> None:
    method = build_ijepa(modality, size, channels, options).train()
    shape = (4, size[0], channels) if modality.name == "points" else (4, channels, *size)
    batch = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    views = ViewMaker(modality, size, method.encoder.tokenizer.size_multiple)
    ctx = StepContext(0, 10, 1e-3, 0.05, 0.99, views, torch.Generator().manual_seed(0))
    out = method(Batch(batch, torch.full((4,), -1)), ctx)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    missing = [name for name, p in method.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert 0 < out.metrics["context_fraction"] < 1


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"method\.masks\.num_targets"):
        build_ijepa(**{"masks.num_targets": 0})
    with pytest.raises(ConfigError, match=r"method\.masks\.target_scale"):
        build_ijepa(**{"masks.target_scale": [0.3, 0.2]})
    with pytest.raises(ConfigError, match=r"method\.predictor\.widht"):
        build_ijepa(**{"predictor.widht": 8})
    with pytest.raises(ConfigError, match="cover all 16 tokens"):
        method = build_ijepa(**{"masks.target_scale": [1.0, 1.0]})
        tokens = method.encoder.tokenizer(torch.rand(1, 3, 16, 16))
        sample_block_masks(method.modality, tokens, method.masks, np.random.default_rng(0))
