"""Shared helpers: run the real ``fmcore`` command in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from fmcore.backbones.vit import VisionTransformer, ViTConfig
from fmcore.config import core_config_dir, for_modality
from fmcore.encoder import Encoder
from fmcore.method import Method
from fmcore.modalities.base import Modality, TokenizerSettings
from fmcore.modalities.image2d import Image2D

# A tiny ViT for runs that exercise a domain's data path rather than learning.
TINY_ENCODER = ["encoder.depth=2", "encoder.embed_dim=64", "encoder.vit.num_heads=2"]


def clean_run_summary(run: Path) -> dict:
    """A finished run's summary, after checking that it skipped no input and no sample."""
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped_inputs"] == [] and summary["skipped_samples"] == 0
    return summary


# A small, fast configuration of the real digits + SimCLR path (CPU, a few seconds).
SMALL_RUN = [
    "domain=digits",
    "method=simclr",
    "encoder.depth=2",
    "encoder.embed_dim=64",
    "encoder.vit.num_heads=2",
    "method.hidden_dim=64",
    "method.projection_dim=32",
    "trainer.batch_size=16",
    "trainer.num_workers=0",
    "trainer.device=cpu",
    "trainer.warmup_steps=2",
]


def fmcore(
    *args: str, cwd: Path, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "fmcore", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"fmcore {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


def ed25519_key(directory: Path, name: str) -> tuple[Path, str]:
    """An Ed25519 key pair as ``ssh-keygen -t ed25519 -N ""`` writes it (the key a consortium
    signs federation apps with): (private key file, public key line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = directory / name
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public.decode()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread, and far faster when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_encoder(
    modality: Modality, sample_size: Sequence[int], channels: int, options: dict
) -> Encoder:
    """A modality's tokenizer on a 2-block ViT of width 32, seeded."""
    torch.manual_seed(0)
    settings = TokenizerSettings(32, tuple(sample_size), channels, options)
    trunk = VisionTransformer(ViTConfig(embed_dim=32, depth=2, num_heads=2))
    return Encoder(modality.build_tokenizer(settings), trunk)


def shipped_method_config(preset: str, modality: str, settings: Mapping[str, object]) -> DictConfig:
    """configs/method/<preset>.yaml's method section as composed for ``modality`` (its
    ``by_modality`` recipe applied), with ``settings`` (dotted keys) replacing what it says."""
    raw = OmegaConf.load(core_config_dir() / "method" / f"{preset}.yaml").method
    config = for_modality(raw, modality, "method")
    for key, value in settings.items():
        OmegaConf.update(config, key, value, merge=False)
    return config


def tiny_method(
    method_class: type[Method],
    preset: str,
    settings: Mapping[str, object],
    modality: Modality | None = None,
    sample_size: Sequence[int] = (16, 16),
    channels: int = 3,
    options: dict | None = None,
    **overrides: object,
) -> Method:
    """A shipped method preset with small ``settings`` and then ``overrides``, on a
    :func:`tiny_encoder` of ``modality`` (16 x 16 RGB images in 4 x 4 patches by default), in
    eval mode."""
    modality = modality or Image2D()
    config = shipped_method_config(preset, modality.name, {**settings, **overrides})
    encoder = tiny_encoder(modality, sample_size, channels, options or {"patch_size": 4})
    return method_class(config, encoder, modality).eval()


def normalised_patches_by_hand(image: Tensor, patch: int) -> Tensor:
    """Per-patch normalised pixels (N, p * p * C) of one (C, H, W) image, patch by patch in
    raster order, each patch's pixels row by row with the channels innermost (MAE's target,
    computed one patch at a time)."""
    rows = []
    for top in range(0, image.shape[1], patch):
        for left in range(0, image.shape[2], patch):
            pixels = image[:, top : top + patch, left : left + patch].permute(1, 2, 0).flatten()
            rows.append((pixels - pixels.mean()) / (pixels.var() + 1e-6).sqrt())
    return torch.stack(rows)


def antialiased_bicubic_half(n: int) -> np.ndarray:
    """(n/2, n) matrix of 2x downsampling by the antialiased (PIL-style) bicubic filter timm
    resamples positional tables with: the cubic kernel with a = -0.5 stretched by the scale 2
    (support 4 input pixels each side), taps cut at the border, weights renormalised to sum 1.
    Output i is centred at input coordinate 2i + 1."""

    def cubic(x: float) -> float:
        a, x = -0.5, abs(x)
        if x < 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a if x < 2 else 0.0

    matrix = np.zeros((n // 2, n))
    for i in range(n // 2):
        centre = 2 * i + 1
        for j in range(n):
            matrix[i, j] = cubic((j + 0.5 - centre) / 2)
        matrix[i] /= matrix[i].sum()
    return matrix
