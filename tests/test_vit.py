"""The ViT trunk: sizes, registers, causal attention, stochastic depth, masking and selection."""

from __future__ import annotations

import pytest
import torch

from fmcore.backbones.attention import AttentionMask
from fmcore.backbones.plugin import build_vit
from fmcore.backbones.vit import VisionTransformer, ViTConfig
from fmcore.config import ConfigSources, compose, core_config_dir
from fmcore.encoder import Encoder
from fmcore.modalities.base import Tokens
from fmcore.modalities.grid import GridTokenizer
from fmcore.plugin_manager import registry


def tokens(batch: int, count: int, dim: int, seed: int = 0) -> Tokens:
    generator = torch.Generator().manual_seed(seed)
    return Tokens(
        x=torch.randn(batch, count, dim, generator=generator),
        pos=torch.randn(1, count, dim, generator=generator),
    )


@pytest.mark.parametrize(
    ("size", "width", "depth"),
    [("vit_tiny", 192, 12), ("vit_small", 384, 12), ("vit_base", 768, 12)],
)
def test_size_configs_have_the_standard_block_parameter_count(size: str, width: int, depth: int):
    config = compose(
        [f"encoder={size}"], ConfigSources((core_config_dir(),), registry().modality_of)
    )
    trunk = build_vit(config.encoder)
    in_blocks = sum(p.numel() for p in trunk.blocks.parameters())
    # per block: qkv 3d^2+3d, proj d^2+d, fc1 4d^2+4d, fc2 4d^2+d, two LayerNorms 4d
    assert in_blocks == depth * (12 * width**2 + 13 * width)


def test_vit_giant_is_dinov2_vit_g14() -> None:
    """Parameters at 518 px without the classifier, counted by hand for timm's
    vit_giant_patch14_dinov2 (listed as 1136.48M): patch projection 1536 x 3 x 14 x 14 + 1536,
    class token 1536, pos_embed (1 + 37 x 37) x 1536, per block two LayerNorms 4 x 1536, qkv
    3 x 1536^2 + 3 x 1536, proj 1536^2 + 1536, two LayerScales 2 x 1536, SwiGLU fc1 (2 x 4096)
    x 1536 + 8192 and fc2 1536 x 4096 + 1536 (DINOv2's hidden width 4096), final norm 2 x 1536."""
    config = compose(
        ["encoder=vit_giant", "encoder.vit.layerscale=1e-5"],
        ConfigSources((core_config_dir(),), registry().modality_of),
    )
    with torch.device("meta"):
        trunk = build_vit(config.encoder)
        tokenizer = GridTokenizer(1536, 3, (14, 14), (518, 518))
    assert trunk.blocks[0].mlp.fc2.in_features == 4096
    d, hidden = 1536, 4096
    block = 4 * d + 3 * d * d + 3 * d + d * d + d + 2 * d + 2 * hidden * d + 2 * hidden
    block += d * hidden + d
    by_hand = d * 3 * 14 * 14 + d + d + (1 + 37 * 37) * d + 40 * block + 2 * d
    counted = [*trunk.parameters(), *tokenizer.parameters()]  # cls_pos: pos_embed's class row
    assert sum(p.numel() for p in counted) == by_hand == 1_136_479_232


def test_registers_are_returned_apart_from_cls_and_patches() -> None:
    trunk = VisionTransformer(ViTConfig(embed_dim=32, depth=2, num_heads=4, num_registers=3))
    out = trunk(tokens(2, 10, 32))
    assert out.cls.shape == (2, 32)
    assert out.registers.shape == (2, 3, 32)
    assert out.patches.shape == (2, 10, 32)


def test_a_causal_mask_makes_outputs_independent_of_later_tokens() -> None:
    trunk = VisionTransformer(ViTConfig(embed_dim=32, depth=2, num_heads=4)).eval()
    base = tokens(1, 8, 32)
    changed = Tokens(x=base.x.clone(), pos=base.pos)
    changed.x[:, 5:] += torch.randn(1, 3, 32, generator=torch.Generator().manual_seed(1))
    causal = AttentionMask(causal=True)
    a, b = trunk(base, causal).patches, trunk(changed, causal).patches
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])
    # the same trunk without a mask attends both ways: causality is per call, not per model
    a, b = trunk(base).patches, trunk(changed).patches
    assert not torch.allclose(a[:, :5], b[:, :5])


def test_stochastic_depth_drops_whole_residual_branches_only_in_training() -> None:
    config = ViTConfig(embed_dim=16, depth=4, num_heads=2, drop_path=0.5)
    trunk = VisionTransformer(config)
    rates = [block.drop_path1.rate for block in trunk.blocks]
    assert rates == pytest.approx([0.0, 0.5 / 3, 1.0 / 3, 0.5])  # linear from 0 to the last block
    x = torch.ones(1000, 1, 16)
    dropped = trunk.blocks[3].drop_path1.train()(x)
    survivors = dropped[:, 0, 0]
    assert set(survivors.unique().tolist()) <= {0.0, 2.0}  # kept branches are rescaled by 1/0.5
    assert 350 < int((survivors == 0).sum()) < 650
    assert torch.equal(trunk.blocks[3].drop_path1.eval()(x), x)


def test_layerscale_scales_each_branch_by_gamma() -> None:
    trunk = VisionTransformer(ViTConfig(embed_dim=16, depth=1, num_heads=2, layerscale=0.0))
    block = trunk.blocks[0]
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(block(x), x)  # gamma = 0 turns every block into the identity
    assert block.ls1.gamma.shape == (16,)


def test_encoder_mask_replaces_tokens_and_keep_selects_them() -> None:
    encoder = Encoder(
        GridTokenizer(embed_dim=32, channels=1, patch=(4, 4), sample_size=(16, 16)),
        VisionTransformer(ViTConfig(embed_dim=32, depth=1, num_heads=4)),
    ).eval()
    torch.nn.init.normal_(encoder.mask_token)
    image = torch.rand(2, 1, 16, 16)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :4] = True
    masked = encoder(image, mask=mask)
    torch.testing.assert_close(masked.tokens.x[:, :4], encoder.mask_token.expand(2, 4, 32))
    assert masked.patches.shape == (2, 16, 32)

    keep = torch.tensor([[1, 5, 9], [0, 2, 3]])
    kept = encoder(image, keep=keep)
    assert kept.patches.shape == (2, 3, 32)
    full_tokens = encoder.tokenizer(image)
    torch.testing.assert_close(kept.tokens.x[1], full_tokens.x[1, [0, 2, 3]])
    # the trunk saw only the kept tokens: its output equals running it on them directly
    direct = encoder.trunk(full_tokens.select(keep))
    torch.testing.assert_close(kept.patches, direct.patches)
