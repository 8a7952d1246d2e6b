"""``fmcore embed``: shards and per-slide files hold the encoder's features, resumably."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import fmcore
from safetensors import safe_open
from safetensors.torch import load_file

from fmcore.config import compose, config_sources
from fmcore.domain import Sample
from fmcore.domains.digits.data import Digits
from fmcore.errors import BadSample, ConfigError
from fmcore.eval.embed import embed, with_embed_defaults
from fmcore.eval.feature_files import slide_files
from fmcore.eval.loading import load_encoder
from fmcore.io import atomic_save_tensors, read_metadata
from fmcore.plugin_manager import Registry, load_registry

TINY = ["encoder.depth=2", "encoder.embed_dim=64", "encoder.vit.num_heads=2"]
CPU = ["trainer.device=cpu", "trainer.num_workers=0"]


def embed_words(out: Path, *words: str) -> list[str]:
    return with_embed_defaults(["checkpoint=random", *TINY, *CPU, f"embed.out={out}", *words])


def run_embed(registry: Registry, words: list[str]) -> dict:
    return embed(compose(words, config_sources(registry)), registry, words)


def read_shards(out: Path) -> dict[str, torch.Tensor]:
    shards = [load_file(str(path)) for path in sorted(out.glob("shard-*.safetensors"))]
    return {key: torch.cat([shard[key] for shard in shards]) for key in shards[0]}


def test_digit_shards_hold_the_class_token_features_of_every_sample(
    tmp_path: Path, one_thread: None
) -> None:
    registry = load_registry()
    words = embed_words(
        tmp_path / "cls", "domain=digits", "embed.split=val", "embed.shard_size=100"
    )
    summary = run_embed(registry, words)
    assert sorted(p.name for p in (tmp_path / "cls").iterdir()) == [
        "embed.json",
        *(f"shard-{n:05d}.safetensors" for n in range(4)),
    ]
    shards = read_shards(tmp_path / "cls")
    assert summary["samples"] == 360 and summary["files"] == 4 and summary["skipped_count"] == 0

    # The same images and encoder, computed here: scikit-learn's digits, upsampled, normalised.
    from sklearn.datasets import load_digits

    digits = load_digits()
    val = np.arange(len(digits.target))[np.arange(len(digits.target)) % 5 == 0]
    images = torch.tensor(digits.images[val] / 16.0, dtype=torch.float32)[:, None]
    images = F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) - 0.3) / 0.4
    encoder = load_encoder(compose(words, config_sources(registry)), registry).encoder
    with torch.no_grad():
        output = encoder(images)
    torch.testing.assert_close(shards["features"], output.cls, rtol=1e-4, atol=1e-5)
    assert torch.equal(shards["labels"], torch.tensor(digits.target[val]))
    assert torch.equal(shards["positions"], torch.arange(360))
    ids = json.loads(read_metadata(tmp_path / "cls" / "shard-00001.safetensors")["sample_ids"])
    assert ids == [str(i) for i in val[100:200]]

    mean_words = embed_words(tmp_path / "mean", "domain=digits", "embed.split=val")
    mean_words.append("embed.features=mean")
    run_embed(registry, mean_words)
    pooled = read_shards(tmp_path / "mean")["features"]
    torch.testing.assert_close(pooled, output.patches.mean(dim=1), rtol=1e-4, atol=1e-5)


class EveryThirdDigitIsCorrupt(Digits):
    name = "corrupt_digits"

    def load(self, ref: int) -> Sample:
        if ref % 3 == 0:
            raise BadSample(f"/data/digit_{ref}.png", "truncated file")
        return super().load(ref)


def test_bad_samples_are_skipped_and_counted(tmp_path: Path, one_thread: None) -> None:
    registry = load_registry()
    registry.domains[EveryThirdDigitIsCorrupt.name] = EveryThirdDigitIsCorrupt
    words = embed_words(tmp_path / "out", "embed.split=val", "embed.shard_size=50")
    config = compose(words, config_sources(registry))
    config.domain.name = EveryThirdDigitIsCorrupt.name
    summary = embed(config, registry, words)
    bad = [i for i in range(0, 1797, 5) if i % 3 == 0]
    assert summary["skipped_count"] == len(bad) and summary["samples"] == 360 - len(bad)
    assert all("truncated file" in message for message in summary["skipped"])
    shards = read_shards(tmp_path / "out")
    good = [i for i in range(0, 1797, 5) if i % 3 != 0]
    assert torch.equal(shards["positions"], torch.tensor([i // 5 for i in good]))
    assert json.loads((tmp_path / "out" / "embed.json").read_text())["complete"] is True


@pytest.fixture(scope="module")
def sample_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's embedded pathology sample (shared with the pathology tests)."""
    pytest.importorskip("openslide", reason="needs the pathology extra")
    pytest.importorskip("imagecodecs", reason="the embedded sample is JPEG-compressed")
    return tmp_path_factory.getbasetemp() / "pathology-sample-cache"


def pathology_words(out: Path, cache: Path) -> list[str]:
    """``fmcore embed`` words (the command adds ``embed=default`` itself)."""
    return [
        "domain=pathology",
        "data.tile_size=64",
        f"run.cache_dir={cache}",
        "checkpoint=random",
        *TINY,
        *CPU,
        f"embed.out={out}",
    ]


@pytest.mark.slow
def test_the_sample_slides_give_one_file_per_slide_with_the_domains_tiles(
    tmp_path: Path, sample_cache: Path, one_thread: None
) -> None:
    out = tmp_path / "features"
    result = fmcore("embed", *pathology_words(out, sample_cache), cwd=tmp_path)
    assert "embedded" in result.stdout
    files = slide_files(out)
    assert sorted(files) == ["sample_slide_1", "sample_slide_2"]

    registry = load_registry()
    words = with_embed_defaults(pathology_words(out, sample_cache))
    loaded = load_encoder(compose(words, config_sources(registry)), registry)
    table, slides = loaded.domain.index_groups("all")
    for slide_id, positions in slides.items():
        tensors = load_file(str(files[slide_id]))
        tiles = [table[p] for p in positions]
        expected = torch.tensor([[tile.x, tile.y] for tile in tiles])
        assert tensors["coords"].dtype == torch.int64 and torch.equal(tensors["coords"], expected)
        assert tensors["features"].shape == (len(tiles), 64)
        assert tensors["features"].dtype == torch.float32
        first = torch.stack([loaded.domain.load(tile).data for tile in tiles[:4]])  # uint8
        with torch.no_grad():
            cls = loaded.encoder(loaded.domain.normalize(first.float() / 255)).cls
        torch.testing.assert_close(tensors["features"][:4], cls, rtol=1e-4, atol=1e-5)
        metadata = read_metadata(files[slide_id])
        assert metadata["path"] == tiles[0].path and metadata["slide"] == slide_id
        assert float(metadata["mpp"]) == 0.5 and metadata["tile_size"] == "64"
        assert metadata["checkpoint"] == "random" and "embed_dim: 64" in metadata["encoder"]
    summary = json.loads((out / "embed.json").read_text())
    assert summary["layout"] == "slides" and summary["files"] == 2
    assert summary["samples"] == len(table) and summary["complete"] is True


@pytest.mark.slow
def test_an_interrupted_embed_resumes_and_skips_the_slides_already_written(
    tmp_path: Path, sample_cache: Path
) -> None:
    out = tmp_path / "features"
    words = pathology_words(out, sample_cache)
    fmcore(
        "embed", *words, cwd=tmp_path
    )  # the sample (and its tile index) exists before the timing
    first = {name: path.stat().st_mtime_ns for name, path in slide_files(out).items()}

    # Kill a fresh run into a new directory as soon as it has written its first slide.
    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        [sys.executable, "-m", "fmcore", "embed", *pathology_words(interrupted, sample_cache)],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith("embed: sample_slide_1:"):
            process.kill()
            break
    process.wait()
    assert json.loads((interrupted / "embed.json").read_text())["complete"] is False
    for path in slide_files(interrupted).values():  # every file under a final name is whole
        assert load_file(str(path))["features"].shape[1] == 64
    written = {name: path.stat().st_mtime_ns for name, path in slide_files(interrupted).items()}
    assert "sample_slide_1" in written

    resumed = fmcore("embed", *pathology_words(interrupted, sample_cache), cwd=tmp_path)
    # It embeds the tiles of the slides not written, and those only (a count, from its log).
    missing = sorted(set(first) - set(written))
    tiles = {name: len(load_file(str(path))["coords"]) for name, path in slide_files(out).items()}
    assert f"{len(written)} of 2 file(s) already" in resumed.stderr
    assert f"embedding {sum(tiles[name] for name in missing)} sample(s)" in resumed.stderr
    logged = re.findall(r"^embed: (\S+): (\d+) sample\(s\) in ", resumed.stderr, re.MULTILINE)
    assert logged == [(name, str(tiles[name])) for name in missing]
    after = {name: path.stat().st_mtime_ns for name, path in slide_files(interrupted).items()}
    assert sorted(after) == sorted(first)
    assert all(after[name] == stamp for name, stamp in written.items())  # not rewritten
    for name in first:
        torch.testing.assert_close(
            load_file(str(slide_files(interrupted)[name]))["features"],
            load_file(str(slide_files(out)[name]))["features"],
        )
    assert json.loads((interrupted / "embed.json").read_text())["complete"] is True

    # A run that would mix another embedding into the directory is refused.
    mixed = fmcore("embed", *words, "embed.features=mean", cwd=tmp_path, check=False)
    assert mixed.returncode == 2 and "pooling" in mixed.stderr and "embed.out" in mixed.stderr


def test_feature_files_are_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "slides" / "site_a" / "case.safetensors"
    atomic_save_tensors({"features": torch.zeros(2, 3)}, path, {"slide": "site_a/case"})
    atomic_save_tensors({"features": torch.ones(5, 3)}, path, {"slide": "site_a/case"})
    assert sorted(p.name for p in path.parent.iterdir()) == ["case.safetensors"]
    with safe_open(str(path), framework="pt") as handle:
        assert handle.get_tensor("features").shape == (5, 3)
        assert handle.metadata() == {"slide": "site_a/case"}
    (path.parent / ".partial-other.safetensors").write_bytes(b"half a file")
    assert list(slide_files(tmp_path)) == ["site_a/case"]  # nested ids; partial files unseen


def test_embed_needs_an_output_directory(tmp_path: Path) -> None:
    registry = load_registry()
    words = with_embed_defaults(["checkpoint=random", "domain=digits"])
    with pytest.raises(ConfigError, match=r"embed\.out"):
        run_embed(registry, words)
