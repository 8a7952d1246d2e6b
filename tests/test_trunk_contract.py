"""The trunk contract, checked for every registered trunk (a new trunk meets it too), and the
places that used to assume the ViT: DINOv2's layer-wise decay and teacher, the encoder's
config keys."""

from __future__ import annotations

import pytest
import torch

from fmcore.backbones.trunk import Trunk, TrunkOutput
from fmcore.config import compose, config_sources
from fmcore.errors import ConfigError
from fmcore.factory import build_encoder, build_parts
from fmcore.modalities.base import Tokens
from fmcore.plugin_manager import registry

TRUNKS = sorted(registry().trunks)
WIDTH, DEPTH, REGISTERS = 48, 3, 2


def small_trunk(name: str, *words: str) -> Trunk:
    config = compose(
        [
            f"encoder.trunk={name}",
            f"encoder.embed_dim={WIDTH}",
            f"encoder.depth={DEPTH}",
            f"encoder.num_registers={REGISTERS}",
            *words,
        ],
        config_sources(registry()),
    )
    return registry().trunk(name)(config.encoder)


def some_tokens(batch: int = 2, count: int = 7) -> Tokens:
    generator = torch.Generator().manual_seed(0)
    return Tokens(
        x=torch.randn(batch, count, WIDTH, generator=generator),
        pos=torch.randn(1, count, WIDTH, generator=generator),
    )


def test_the_vit_is_registered() -> None:
    assert "vit" in TRUNKS


@pytest.mark.parametrize("name", TRUNKS)
def test_trunk_outputs_every_token_in_its_place(name: str) -> None:
    trunk = small_trunk(name)
    assert isinstance(trunk, Trunk)
    assert (trunk.embed_dim, trunk.depth, len(trunk.blocks)) == (WIDTH, DEPTH, DEPTH)
    assert trunk.num_prefix_tokens >= REGISTERS  # Mamba-R: registers, no class token
    out = trunk(some_tokens())
    assert isinstance(out, TrunkOutput)
    assert out.cls.shape == (2, WIDTH)
    assert out.registers.shape == (2, REGISTERS, WIDTH)
    assert out.patches.shape == (2, 7, WIDTH)
    assert out.intermediates == []


@pytest.mark.parametrize("name", TRUNKS)
def test_trunk_returns_the_blocks_asked_for(name: str) -> None:
    trunk = small_trunk(name).eval()
    out = trunk(some_tokens(), return_blocks=[0, -1])
    length = trunk.num_prefix_tokens + 7
    assert [tuple(t.shape) for t in out.intermediates] == [(2, length, WIDTH)] * 2
    assert not torch.allclose(out.intermediates[0], out.intermediates[1])
    with pytest.raises(IndexError):
        trunk(some_tokens(), return_blocks=[DEPTH])


@pytest.mark.parametrize("name", TRUNKS)
def test_every_parameter_has_a_layer_and_every_block_its_own(name: str) -> None:
    trunk = small_trunk(name)
    layers = {name: trunk.layer_id(name) for name, _ in trunk.named_parameters()}
    assert set(layers.values()) <= set(range(DEPTH + 2))
    for index in range(DEPTH):
        in_block = {
            layers[n] for n, _ in trunk.blocks[index].named_parameters(prefix=f"blocks.{index}")
        }
        assert in_block == {index + 1}
    assert 0 in layers.values()  # the prefix tokens


@pytest.mark.parametrize("name", TRUNKS)
def test_every_parameter_gets_a_gradient(name: str) -> None:
    trunk = small_trunk(name)
    out = trunk(some_tokens())
    (out.cls.sum() + out.registers.sum() + out.patches.pow(2).sum()).backward()
    missing = [n for n, p in trunk.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


@pytest.mark.parametrize("name", TRUNKS)
def test_stochastic_depth_can_be_switched_off_in_training_mode(name: str) -> None:
    trunk = small_trunk(name, "encoder.drop_path=0.5", "encoder.drop_path_uniform=true").train()
    tokens = some_tokens(batch=16)
    torch.manual_seed(0)
    first = trunk(tokens).patches
    assert not torch.allclose(first, trunk(tokens).patches)  # branches are dropped at random
    trunk.disable_stochastic_depth()
    torch.testing.assert_close(trunk(tokens).patches, trunk.eval()(tokens).patches)


@pytest.mark.parametrize("name", TRUNKS)
def test_flops_grow_with_the_token_count(name: str) -> None:
    trunk = small_trunk(name)
    assert 0 < trunk.forward_flops(16) < trunk.forward_flops(64)


def test_vit_flops_count_the_matmuls_of_a_hand_sum() -> None:
    trunk = small_trunk("vit")
    n, d, hidden = 10 + 1 + REGISTERS, WIDTH, 4 * WIDTH
    qkv, scores_and_mix, proj, mlp = 3 * n * d * d, 2 * n * n * d, n * d * d, 2 * n * d * hidden
    assert trunk.forward_flops(10) == 2 * DEPTH * (qkv + scores_and_mix + proj + mlp)


def test_a_vit_key_outside_its_section_or_of_the_wrong_type_fails_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"encoder\.vit\.num_heads"):
        small_trunk("vit", "encoder.vit.num_heads=many")
    with pytest.raises(ConfigError, match=r"encoder\.vit.*bogus"):
        small_trunk("vit", "+encoder.vit.bogus=1")
    with pytest.raises(ConfigError, match=r"encoder\.depth"):
        small_trunk("vit", "encoder.depth=0")


def test_a_trunk_factory_must_return_a_trunk() -> None:
    reg = registry()
    config = compose(["domain=digits", "encoder.trunk=broken"], config_sources(reg))
    broken = type(reg)(
        **{**reg.__dict__, "trunks": {**reg.trunks, "broken": lambda e: torch.nn.Linear(2, 2)}}
    )
    domain = reg.domain("digits")(config.data, None)
    with pytest.raises(ConfigError, match=r"encoder\.trunk=broken.*Linear"):
        build_encoder(config, broken, domain)


@pytest.mark.parametrize("name", TRUNKS)
def test_dinov2_decays_by_the_trunks_layers_and_its_teacher_never_drops_paths(name: str) -> None:
    words = [
        "domain=digits",
        "method=dinov2",
        f"encoder.trunk={name}",
        "encoder.depth=3",
        "encoder.embed_dim=32",
        "encoder.vit.num_heads=2",
        "encoder.drop_path=0.4",
        "method.layer_decay=0.5",
        "method.patch_embed_lr=1.0",
        "method.dino.prototypes=64",
        "method.dino.hidden_dim=32",
        "method.dino.bottleneck_dim=16",
        "method.ibot.prototypes=64",
    ]
    method = build_parts(compose(words, config_sources(registry())), registry()).method
    scale_of = {id(p): g["lr_scale"] for g in method.parameter_groups() for p in g["params"]}
    trunk_parameters = {
        name.removeprefix("encoder.trunk."): parameter
        for name, parameter in method.named_parameters()
        if name.startswith("encoder.trunk.")
    }

    def scales(where) -> list[float]:
        return sorted({round(scale_of[id(p)], 9) for n, p in trunk_parameters.items() if where(n)})

    # layer l of a depth-3 trunk: 0.5 ** (4 - l); prefix tokens are bare trunk parameters
    assert scales(lambda n: "." not in n) == [0.5**4]
    tokenizer = dict(method.named_parameters())["encoder.tokenizer.proj.weight"]
    assert scale_of[id(tokenizer)] == pytest.approx(0.5**4)
    assert scales(lambda n: n.startswith("blocks.0.")) == [0.5**3]
    assert scales(lambda n: n.startswith("blocks.2.")) == [0.5]
    assert scales(lambda n: n.startswith("norm.")) == [1.0]
    rates = [m.rate for m in method.teacher.modules() if hasattr(m, "rate")]
    student = [m.rate for m in method.encoder.modules() if hasattr(m, "rate")]
    assert rates and all(rate == 0.0 for rate in rates)
    assert max(student) == pytest.approx(0.4)
