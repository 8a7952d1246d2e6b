"""DINOv2 as a method: EMA teacher, masks, schedules, frozen prototypes, groups, and learning."""

from __future__ import annotations

import pytest
import torch

from fmcore.config import compose, config_sources
from fmcore.errors import ConfigError
from fmcore.factory import build_parts
from fmcore.method import Batch, Scope, StepContext
from fmcore.plugin_manager import registry

TINY = [
    "domain=digits",
    "method=dinov2_small",
    "encoder.depth=2",
    "encoder.embed_dim=32",
    "encoder.vit.num_heads=2",
    "method.dino.prototypes=64",
    "method.ibot.prototypes=64",
    "method.dino.hidden_dim=32",
    "method.dino.bottleneck_dim=16",
]


def parts(*extra: str):
    config = compose([*TINY, *extra], config_sources(registry()))
    torch.manual_seed(0)
    return build_parts(config, registry())


def context(built, step: int = 0, max_steps: int = 100, momentum: float = 0.9) -> StepContext:
    return StepContext(
        step, max_steps, 1e-3, 0.04, momentum, built.views, torch.Generator().manual_seed(step)
    )


def test_teacher_is_the_ema_of_the_student() -> None:
    built = parts()
    method = built.method
    teacher_before = [p.clone() for p in method.teacher["encoder"].parameters()]
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(torch.randn_like(p))
    student = [p.clone() for p in method.encoder.parameters()]
    method.after_optimizer_step(context(built, momentum=0.9))
    for before, s, after in zip(
        teacher_before, student, method.teacher["encoder"].parameters(), strict=True
    ):
        torch.testing.assert_close(after, 0.9 * before + 0.1 * s)
    assert not any(p.requires_grad for p in method.teacher.parameters())


def test_masks_follow_the_sample_probability_and_ratio_range() -> None:
    method = parts().method
    tokens = method.encoder.tokenizer(torch.rand(64, 1, 16, 16))  # 4 x 4 token grid
    masks = method._masks(64, tokens, torch.Generator().manual_seed(0))
    per_crop = masks.sum(dim=1)
    assert int((per_crop > 0).sum()) <= 32  # mask_sample_probability 0.5
    assert int((per_crop == 0).sum()) >= 32
    ratios = per_crop[per_crop > 0].float() / 16
    assert float(ratios.max()) <= 0.5 and float(ratios.min()) >= 1 / 16


def test_teacher_temperature_warms_up_linearly() -> None:
    # dinov2_small's cold teacher: 0.01 warming to 0.02 (the reference: 0.04 to 0.07)
    method = parts("method.teacher_temp_warmup=0.5").method
    assert method.teacher_temperature(0.0) == pytest.approx(0.01)
    assert method.teacher_temperature(0.25) == pytest.approx(0.015)
    assert method.teacher_temperature(0.9) == pytest.approx(0.02)


def test_prototypes_are_frozen_only_early_in_training() -> None:
    built = parts("method.freeze_last_layer=0.1")
    method = built.method
    batch_data = torch.stack([built.domain.load(i).data for i in range(8)])
    out = method(Batch(batch_data, torch.zeros(8, dtype=torch.long)), context(built, step=5))
    out.loss.backward()
    assert method.dino_head.prototypes.grad is not None
    method.before_optimizer_step(context(built, step=5))
    assert method.dino_head.prototypes.grad is None
    out = method(Batch(batch_data, torch.zeros(8, dtype=torch.long)), context(built, step=50))
    out.loss.backward()
    method.before_optimizer_step(context(built, step=50))
    assert method.dino_head.prototypes.grad is not None


def test_layerwise_lr_decay_and_scopes() -> None:
    method = parts("method.layer_decay=0.5", "method.patch_embed_lr=0.2").method
    scale_of = {}
    for group in method.parameter_groups():
        for p in group["params"]:
            scale_of[id(p)] = (group["lr_scale"], group["weight_decay_scale"])
    named = dict(method.named_parameters())
    depth = 2
    assert scale_of[id(named["encoder.trunk.blocks.1.attn.qkv.weight"])] == (0.5, 1.0)
    assert scale_of[id(named["encoder.trunk.blocks.0.attn.qkv.weight"])] == (0.25, 1.0)
    assert scale_of[id(named["encoder.trunk.blocks.0.norm1.weight"])] == (0.25, 0.0)
    assert scale_of[id(named["encoder.tokenizer.proj.weight"])] == pytest.approx(
        (0.5 ** (depth + 1) * 0.2, 1.0)
    )
    assert scale_of[id(named["dino_head.prototypes"])] == (1.0, 1.0)
    assert not any(name.startswith("teacher.") for name in named if id(named[name]) in scale_of)

    scopes = method.scopes()
    assert scopes["encoder.trunk.blocks.0.attn.qkv.weight"] == Scope.SHARED
    assert scopes["teacher.encoder.trunk.norm.weight"] == Scope.SHARED
    assert scopes["encoder.tokenizer.proj.weight"] == Scope.DOMAIN
    assert scopes["dino_head.prototypes"] == Scope.DOMAIN


@pytest.mark.parametrize("distilled", ["cls", "mean"])
def test_the_dino_head_distils_the_token_method_features_names(distilled: str) -> None:
    """What the teacher's DINO head receives is its encoder's class token, or the mean of its
    patch tokens, as ``method.features`` says (captured with forward hooks)."""
    built = parts(f"method.features={distilled}")
    teacher = built.method.teacher
    seen: dict[str, list] = {"out": [], "in": []}  # hooks return None: nothing is replaced
    teacher["encoder"].register_forward_hook(lambda m, args, out: seen["out"].append(out))
    teacher["dino_head"].register_forward_pre_hook(lambda m, args: seen["in"].append(args[0]))
    batch = Batch(data=torch.rand(8, 1, 16, 16), labels=torch.zeros(8, dtype=torch.long))
    built.method(batch, context(built))
    out = seen["out"][0]
    expected = out.cls if distilled == "cls" else out.patches.sum(dim=1) / out.patches.shape[1]
    torch.testing.assert_close(seen["in"][0], expected)  # the first call is DINO's, then iBOT


def test_the_dino_head_takes_one_token_kind() -> None:
    with pytest.raises(ConfigError, match=r"method\.features must be cls or mean for DINOv2"):
        parts("method.features=cls+mean")
