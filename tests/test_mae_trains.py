"""MAE through the real engine: a training step on every modality, and `fmcore train` on digits
writing the reconstruction picture at its checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import fmcore
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import load_file
from test_every_modality_trains import CASES, make_domain

from fmcore.config import compose, config_sources
from fmcore.engine.trainer import train
from fmcore.factory import build_domain
from fmcore.modalities.masking import masked_count
from fmcore.plugin_manager import load_registry
from fmcore.plugins.mae.recon_grid import draw_reconstructions

SMALL_MAE = [
    "method=mae",
    "encoder.depth=2",
    "encoder.embed_dim=64",
    "encoder.vit.num_heads=2",
    "method.decoder.embed_dim=32",
    "method.decoder.depth=1",
    "method.decoder.num_heads=2",
    "trainer.num_workers=0",
    "trainer.device=cpu",
    "trainer.warmup_steps=2",
    "trainer.progress=none",
]
# the recipes' own decoders for video and points, made small the same way
SMALL_BY_MODALITY = [
    f"method.by_modality.{modality}.decoder.{key}={value}"
    for modality in ("video", "points")
    for key, value in (("embed_dim", 32), ("depth", 1), ("num_heads", 2))
]
# A command-line key beats the modality's recipe: points run at 0.5, not Point-MAE's 0.6.
OVERRIDES = {"points": ["method.mask_ratio=0.5"]}
# hidden fraction from each modality's recipe ratio (0.75, video 0.9 of 4x4 tubes) or override
EXPECTED_RATIO = {"image2d": 0.75, "volume3d": 0.75, "video": 0.9, "points": 0.5}
TOKENS = {"image2d": 16, "volume3d": 8, "video": 16, "points": 16}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("modality", sorted(CASES))
def test_mae_trains_on_every_modality(modality: str, tmp_path: Path) -> None:
    registry = load_registry()
    domain = make_domain(modality)
    registry.domains[domain.name] = domain
    run = tmp_path / "run"
    finer_video = ["encoder.tokenizer.patch_size=4"] if modality == "video" else []
    config = compose(
        [
            "domain=digits",
            *SMALL_MAE,
            *SMALL_BY_MODALITY,
            *CASES[modality],
            *finer_video,
            *OVERRIDES.get(modality, []),
            f"domain.name={domain.name}",
            "trainer.max_steps=2",
            "trainer.batch_size=8",
            "trainer.log_every=1",
            f"run.dir={run}",
            "data.views={}",
        ],
        config_sources(registry),
    )
    result = train(config, registry)

    assert result.steps == 2
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(line["loss"])) and line["loss"] > 0 for line in lines)
    ratio, tokens = EXPECTED_RATIO[modality], TOKENS[modality]
    assert lines[-1]["mask_ratio"] == pytest.approx(masked_count(tokens, ratio) / tokens)
    saved = OmegaConf.load(run / "config.yaml").method  # what ran is what was saved
    assert saved.mask_ratio == ratio and "by_modality" not in saved
    assert lines[-1]["tokens_per_s"] > 0
    encoder = load_file(str(run / "encoder.safetensors"))
    assert "trunk.cls_token" in encoder
    assert not any(key.startswith("decoder.") for key in encoder)  # the decoder stays behind
    checkpoint = next((run / "checkpoints").iterdir())
    assert "decoder.mask_token" in load_file(str(checkpoint / "model.safetensors"))

    # The picture of the trained method: grids draw (volumes and video by their middle slice),
    # point clouds do not; drawing leaves the method in training mode and the RNG untouched.
    rng = torch.get_rng_state()
    picture = draw_reconstructions(result.method, build_domain(config, registry), seed=0)
    assert torch.equal(torch.get_rng_state(), rng) and result.method.training
    if modality == "points":
        assert picture is None
    else:
        assert picture.dtype == torch.uint8 and picture.shape[1:] == (3 * 96 + 4 * 2, 3)


def test_fmcore_train_mae_on_digits_writes_reconstruction_pictures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = tmp_path / "run"
    result = fmcore(
        "train",
        "domain=digits",
        *SMALL_MAE,
        "trainer.batch_size=16",
        "trainer.max_steps=3",
        "trainer.checkpoint_every=2",
        f"run.dir={run}",
        f"run.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
    )
    assert "finished 3 steps" in result.stdout
    assert "reconstruction picture" not in result.stderr
    pictures = sorted(p.name for p in (run / "reconstructions").iterdir())
    assert pictures == ["step_00000002.png", "step_00000003.png"]
    with Image.open(run / "reconstructions" / "step_00000003.png") as picture:
        # 8 validation digits, 16 px enlarged 6x, three panels, 2 px gutters
        assert picture.mode == "RGB"
        assert picture.size == (3 * 96 + 4 * 2, 8 * 96 + 9 * 2)
    config = (run / "config.yaml").read_text()
    assert "betas:\n  - 0.9\n  - 0.95" in config


def test_other_methods_get_no_picture(tmp_path: Path) -> None:
    """The plugin's checkpoint hook ignores runs of other methods."""
    from fmcore.factory import build_parts
    from fmcore.plugins.mae.plugin import fmcore_checkpoint_saved

    registry = load_registry()
    config = compose(["method=simclr", "encoder.depth=1"], config_sources(registry))
    parts = build_parts(config, registry)
    fmcore_checkpoint_saved(
        step=1,
        path=tmp_path / "step_00000001",
        run_dir=tmp_path,
        method=parts.method,
        domain=parts.domain,
        config=config,
    )
    assert os.listdir(tmp_path) == []


def test_successive_pictures_read_the_domain_once_and_show_the_same_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fmcore.factory import build_parts

    registry = load_registry()
    config = compose(
        ["domain=digits", *SMALL_MAE, f"run.cache_dir={tmp_path / 'cache'}"],
        config_sources(registry),
    )
    parts = build_parts(config, registry)
    indexed: list[str] = []
    index = parts.domain.index

    def counting_index(split: str):
        indexed.append(split)
        return index(split)

    monkeypatch.setattr(parts.domain, "index", counting_index)
    first = draw_reconstructions(parts.method, parts.domain, seed=0)
    second = draw_reconstructions(parts.method, parts.domain, seed=0)
    assert indexed == ["val"], "one index of the validation split for every picture of the run"
    assert first is not None and torch.equal(first, second)
