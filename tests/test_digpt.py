"""D-iGPT's wiring: the cosine loss by hand, the targets (a teacher's features of the next
cluster's counterpart and of the token itself), a teacher read from an encoder file through the
factory (frozen, its width, kept on the site), the EMA teacher otherwise, the optional pixel
loss, and a method without a teacher refusing one."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import SMALL_RUN
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file

from fmcore.config import compose, config_sources
from fmcore.errors import ConfigError, MissingPath
from fmcore.factory import build_encoder, build_parts
from fmcore.method import Batch, Scope, StepContext
from fmcore.plugin_manager import registry
from fmcore.plugins.autoregressive.digpt import DiGPT, cosine_loss
from fmcore.run_files import encoder_metadata, write_encoder

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = [w for w in SMALL_RUN if not w.startswith("method")]
DIGPT = ["method=digpt_small", "method.head.width=32", "method.head.depth=1"]


def compose_run(tmp_path: Path, *words: str) -> DictConfig:
    return compose(
        [*SMALL, *words, f"run.dir={tmp_path / 'run'}", f"run.cache_dir={tmp_path}"],
        config_sources(registry()),
    )


def write_teacher(tmp_path: Path, width: int) -> Path:
    """An encoder file of a 1-block ViT of ``width`` for digits, as training writes one."""
    config = compose_run(tmp_path, "method=mae", "encoder.depth=1", f"encoder.embed_dim={width}")
    parts = build_parts(config, registry())
    encoder = build_encoder(config, registry(), parts.domain)
    path = tmp_path / "teacher" / "encoder.safetensors"
    path.parent.mkdir()
    metadata = encoder_metadata(
        step=0,
        modality="image2d",
        domain="digits",
        encoder_yaml=OmegaConf.to_yaml(config.encoder),
        data_yaml=OmegaConf.to_yaml(config.data),
        features="mean",
    )
    write_encoder(encoder.state_dict(), path, metadata)
    return path


def test_cosine_loss_is_two_minus_twice_the_cosine_over_scored_tokens() -> None:
    pred = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 3.0]]])
    target = torch.tensor([[[2.0, 0.0], [1.0, 0.0], [0.0, -1.0]]])
    scored = torch.tensor([[True, True, False]])
    expected = ((2 - 2 * 1.0) + (2 - 2 * (1 / math.sqrt(2)))) / 2
    loss, mean_cosine = cosine_loss(pred, target, scored)
    assert float(loss) == pytest.approx(expected)
    assert mean_cosine == pytest.approx((1.0 + 1 / math.sqrt(2)) / 2)


def test_a_teacher_file_is_read_frozen_at_its_own_width_and_stays_on_the_site(
    tmp_path: Path,
) -> None:
    path = write_teacher(tmp_path, width=48)
    config = compose_run(tmp_path, *DIGPT, f"method.teacher={path.parent}")
    method = build_parts(config, registry()).method
    assert isinstance(method, DiGPT) and method.teacher_from_file
    weights = load_file(str(path))
    key = "trunk.blocks.0.attn.qkv.weight"
    assert torch.equal(method.teacher.state_dict()[key], weights[key])
    assert method.next_head.proj_out.out_features == 48  # the teacher's width, not the student's
    assert not any(p.requires_grad for p in method.teacher.parameters())
    scopes = method.scopes()
    assert scopes["teacher.trunk.blocks.0.attn.qkv.weight"] == Scope.LOCAL
    assert scopes["encoder.trunk.blocks.0.attn.qkv.weight"] == Scope.SHARED


def test_the_file_teacher_is_not_moved_and_the_ema_teacher_is(tmp_path: Path) -> None:
    path = write_teacher(tmp_path, width=48)
    for words, moves in (([f"method.teacher={path}"], False), ([], True)):
        parts = build_parts(compose_run(tmp_path, *DIGPT, *words), registry())
        method = parts.method
        with torch.no_grad():
            for p in method.encoder.parameters():
                p.add_(1.0)
        before = [p.clone() for p in method.teacher.parameters()]
        ctx = StepContext(0, 1, 1e-3, 0.05, 0.9, parts.views, torch.Generator())
        method.after_optimizer_step(ctx)
        changed = any(
            not torch.equal(a, b) for a, b in zip(before, method.teacher.parameters(), strict=True)
        )
        assert changed == moves
        # against its own EMA a visible token's feature is the student's own: no such branch
        assert (method.visible_head is None) == moves


def test_targets_are_the_teachers_features_at_the_next_cluster_and_at_the_token(
    tmp_path: Path,
) -> None:
    """The loss equals, by hand, the next-cluster and visible-token cosine distances to the file
    teacher's layer-normed patch tokens of the whole view (raster order: cluster c predicts
    cluster c + 1; the visible branch needs a teacher from disk)."""
    path = write_teacher(tmp_path, width=48)
    words = [*DIGPT, "method.order=raster", "method.pixel_weight=0", f"method.teacher={path}"]
    method = build_parts(compose_run(tmp_path, *words), registry()).method.eval()
    view = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    tokens = method.encoder.tokenizer(view)
    layout = method.layout(tokens)  # 2 x 2 clusters of a 4 x 4 grid
    ranks = torch.arange(4).expand(2, 4)
    with torch.no_grad():
        clusters = method.cluster_pass(tokens, layout, ranks)
        raw = method.teacher(view).patches
        features = clusters.encoded.patches
        position = method.target_position
        next_pred = method.next_head(
            features + position(tokens.pos.expand(2, -1, -1)[:, clusters.following[0]])
        )
        visible_pred = method.visible_head(features + position(tokens.pos))
    mean, var = raw.mean(dim=-1, keepdim=True), raw.var(dim=-1, unbiased=False, keepdim=True)
    teacher = (raw - mean) / torch.sqrt(var + 1e-5)
    next_distance = visible_distance = 0.0
    for sample in range(2):
        for cluster in range(3):  # the last cluster is not scored
            for place in range(4):
                token = int(layout[cluster, place])
                target = int(layout[cluster + 1, place])
                cos_next = torch.cosine_similarity(
                    next_pred[sample, token], teacher[sample, target], dim=0
                )
                cos_visible = torch.cosine_similarity(
                    visible_pred[sample, token], teacher[sample, token], dim=0
                )
                next_distance += float(2 - 2 * cos_next) / 24
                visible_distance += float(2 - 2 * cos_visible) / 24

    def unchanged(data: torch.Tensor, spec: object, generator: object) -> list[torch.Tensor]:
        return [view]  # forward's view: the same pixels

    ctx = StepContext(0, 1, 1e-3, 0.05, 0.9, unchanged, torch.Generator())  # type: ignore[arg-type]
    with torch.no_grad():
        out = method(Batch(view, torch.full((2,), -1)), ctx)
    assert float(out.loss) == pytest.approx(next_distance + visible_distance, rel=1e-5)


@pytest.mark.parametrize("pixel_weight", [0.0, 0.5])
def test_every_trainable_parameter_gets_a_gradient(tmp_path: Path, pixel_weight: float) -> None:
    words = [*DIGPT, f"method.pixel_weight={pixel_weight}"]
    parts = build_parts(compose_run(tmp_path, *words), registry())
    method = parts.method.train()
    data = torch.stack(
        [parts.domain.load(ref).data for ref in parts.domain.find_samples("train")[:8]]
    )
    ctx = StepContext(0, 10, 1e-3, 0.05, 0.9, parts.views, torch.Generator().manual_seed(0))
    out = method(Batch(data, torch.full((8,), -1)), ctx)
    out.loss.backward()
    missing = [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert (method.head is not None) == (pixel_weight > 0)
    assert -1 <= out.metrics["next_cosine"] <= 1


def test_a_method_without_a_teacher_refuses_one_and_a_missing_file_is_named(
    tmp_path: Path,
) -> None:
    path = write_teacher(tmp_path, width=48)
    with pytest.raises(ConfigError, match="method=mae takes no teacher file"):
        build_parts(compose_run(tmp_path, "method=mae", f"+method.teacher={path}"), registry())
    with pytest.raises(MissingPath, match=r"method\.teacher="):
        build_parts(
            compose_run(tmp_path, *DIGPT, f"method.teacher={tmp_path / 'none'}"), registry()
        )
