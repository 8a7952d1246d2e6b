"""Attention masks: the sequence masks built for the trunk against hand-written ones, and the
trunk's masked attention against an explicit softmax."""

from __future__ import annotations

import math

import pytest
import torch

from fmcore.backbones.attention import AttentionMask
from fmcore.backbones.vit import Attention, VisionTransformer, ViTConfig
from fmcore.modalities.base import Tokens

CPU = torch.device("cpu")


def test_prefix_causal_mask_matches_a_hand_built_one() -> None:
    # one class token, four patch tokens, AIM's prefix of two patches
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],  # the class token comes first: it sees itself only
            [1, 1, 1, 0, 0],  # the prefix sees the whole prefix
            [1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0],  # after the prefix: causal
            [1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    built = AttentionMask.prefix_causal(2).for_sdpa(1, 4, CPU)
    assert built.shape == (1, 1, 5, 5)
    assert torch.equal(built[0, 0], expected)


def test_a_prefix_per_sample_gives_each_sample_its_own_rows() -> None:
    built = AttentionMask.prefix_causal(torch.tensor([0, 3])).for_sdpa(0, 3, CPU)
    assert torch.equal(built[0, 0], torch.ones(3, 3, dtype=torch.bool).tril())
    assert torch.equal(built[1, 0], torch.ones(3, 3, dtype=torch.bool))


def test_per_sample_prefixes_with_a_class_token_and_causal_padding_match_hand_built_masks() -> None:
    prefixes = AttentionMask.prefix_causal(torch.tensor([1, 3])).for_sdpa(1, 3, CPU)
    first = [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]  # a prefix of 1 is causal
    second = [[1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]  # the whole sequence
    assert torch.equal(prefixes[:, 0], torch.tensor([first, second], dtype=torch.bool))
    valid = torch.tensor([[True, False, True]])
    padded = AttentionMask(causal=True, valid=valid).for_sdpa(1, 3, CPU)
    expected = [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 1]]  # token 1 is padding
    assert torch.equal(padded[0, 0], torch.tensor(expected, dtype=torch.bool))


def test_block_causal_mask_lets_a_cluster_see_itself_and_earlier_clusters_only() -> None:
    # tokens 0 and 2 form the cluster predicted second, tokens 1 and 3 the first
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 1, 1, 1],
            [1, 0, 1, 0, 1],
            [1, 1, 1, 1, 1],
            [1, 0, 1, 0, 1],
        ],
        dtype=torch.bool,
    )
    built = AttentionMask.block_causal(torch.tensor([1, 0, 1, 0])).for_sdpa(1, 4, CPU)
    assert torch.equal(built[0, 0], expected)


def test_padding_mask_hides_padded_tokens_from_every_token_prefix_included() -> None:
    valid = torch.tensor([[True, True, False, True]])
    row = torch.tensor([1, 1, 1, 0, 1], dtype=torch.bool)
    built = AttentionMask.padding(valid).for_sdpa(1, 4, CPU)
    assert torch.equal(built[0, 0], row.expand(5, 5))


def test_an_additive_mask_keeps_its_values_under_the_structure() -> None:
    bias = torch.tensor([[0.0, -1.0], [2.0, float("-inf")]])
    built = AttentionMask(causal=True, allowed=bias).for_sdpa(1, 2, CPU)[0, 0]
    inf = float("-inf")
    expected = torch.tensor([[0.0, inf, inf], [0.0, 0.0, inf], [0.0, 2.0, inf]])
    assert torch.equal(built, expected)


def explicit_attention(
    attention: Attention, x: torch.Tensor, allowed: torch.Tensor
) -> torch.Tensor:
    """Multi-head attention written out: scores, -inf where ``allowed`` is False (or added when
    it is a float), softmax, values. ``allowed`` is (L, L) or (B, L, L)."""
    batch, length, dim = x.shape
    heads = attention.num_heads
    q, k, v = attention.qkv(x).split(dim, dim=-1)
    out = torch.zeros(batch, length, dim)
    head_dim = dim // heads
    for b in range(batch):
        rule = allowed if allowed.dim() == 2 else allowed[b % allowed.shape[0]]
        for h in range(heads):
            cols = slice(h * head_dim, (h + 1) * head_dim)
            scores = q[b, :, cols] @ k[b, :, cols].T / math.sqrt(head_dim)
            if rule.dtype == torch.bool:
                scores = scores.masked_fill(~rule, float("-inf"))
            else:
                scores = scores + rule
            out[b, :, cols] = scores.softmax(dim=-1) @ v[b, :, cols]
    return attention.proj(out)


@pytest.mark.parametrize(
    "mask",
    [
        AttentionMask(causal=True),
        AttentionMask.prefix_causal(torch.tensor([2, 4])),
        AttentionMask.block_causal(torch.tensor([2, 0, 1, 0, 2, 1])),
        AttentionMask.padding(torch.tensor([[1, 1, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1]]).bool()),
        AttentionMask(allowed=torch.randn(6, 6, generator=torch.Generator().manual_seed(3))),
    ],
    ids=["causal", "prefix", "clusters", "padding", "additive"],
)
def test_masked_sdpa_equals_an_explicit_softmax(mask: AttentionMask) -> None:
    torch.manual_seed(0)
    attention = Attention(dim=16, num_heads=2, qkv_bias=True)
    x = torch.randn(2, 2 + 6, 16)  # two prefix tokens, six patch tokens
    sequence_mask = mask.for_sdpa(2, 6, CPU)[:, 0]
    expected = explicit_attention(attention, x, sequence_mask)
    torch.testing.assert_close(attention(x, mask.for_sdpa(2, 6, CPU)), expected)


def test_the_plain_causal_fast_path_equals_the_same_mask_as_a_tensor() -> None:
    torch.manual_seed(0)
    trunk = VisionTransformer(ViTConfig(embed_dim=16, depth=2, num_heads=2, num_registers=2))
    tokens = Tokens(x=torch.randn(3, 5, 16), pos=torch.randn(1, 5, 16))
    fast = trunk(tokens, AttentionMask(causal=True))
    as_tensor = trunk(tokens, AttentionMask(allowed=torch.ones(5, 5, dtype=torch.bool).tril()))
    torch.testing.assert_close(fast.patches, as_tensor.patches)
    torch.testing.assert_close(fast.cls, as_tensor.cls)


def test_prefix_causal_trunk_never_lets_a_token_see_a_later_one_after_the_prefix() -> None:
    torch.manual_seed(0)
    trunk = VisionTransformer(ViTConfig(embed_dim=16, depth=2, num_heads=2)).eval()
    base = Tokens(x=torch.randn(1, 6, 16), pos=torch.zeros(1, 6, 16))
    mask = AttentionMask.prefix_causal(3)
    reference = trunk(base, mask).patches
    for changed_token in range(6):
        x = base.x.clone()
        x[:, changed_token] += torch.randn(16)  # not a constant: LayerNorm would remove it
        out = trunk(Tokens(x=x, pos=base.pos), mask).patches
        moved = (out - reference).abs().amax(dim=-1)[0] > 1e-6
        # a prefix token reaches the whole prefix and everything after it; a later token only
        # itself and what follows
        first_reached = 0 if changed_token < 3 else changed_token
        assert moved.tolist() == [i >= first_reached for i in range(6)], changed_token
