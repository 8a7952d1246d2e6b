"""The example third-party plugin (examples/fmcore-dermatology), pip-installed and trained with.

The package is installed into this test environment with a real ``pip install`` (dependencies
resolved: Pillow comes from the package index if it is missing), used through the real ``fmcore``
command in subprocesses, and uninstalled again at the end of the module.
"""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
import struct
import subprocess
import sys
import tomllib
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SMALL_RUN, fmcore
from safetensors.torch import load_file

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fmcore-dermatology"
PROJECT = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
DIGITS_FREE_RUN = [word for word in SMALL_RUN if not word.startswith("domain=")]

pytestmark = pytest.mark.slow


def _pip(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0:
        raise AssertionError(f"pip {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Install the example (from a copy, so its build files stay out of the repository).

    Whatever the install added (the example, and Pillow if it was missing) is uninstalled again
    afterwards, so the environment is left as it was found.
    """
    work = tmp_path_factory.mktemp("example")
    source = work / EXAMPLE.name
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    report = work / "pip-report.json"
    # With setuptools here, build against it instead of fetching one into an isolated build
    # environment; dependencies are still resolved (fmcore is installed, Pillow if missing).
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    _pip("install", *isolation, "--report", str(report), str(source))
    added = [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]]
    assert PROJECT["name"] in added, added
    try:
        yield PROJECT["version"]
    finally:
        _pip("uninstall", "-y", *added)


def test_plugin_is_listed_with_its_distribution_and_config_group(
    installed: str, tmp_path: Path
) -> None:
    listing = fmcore("plugins", cwd=tmp_path).stdout.splitlines()
    header = [i for i, line in enumerate(listing) if line.startswith("dermatology  ")]
    assert len(header) == 1, listing
    assert f"(fmcore-dermatology {installed}, fmcore_dermatology.plugin)" in listing[header[0]]
    provides = listing[header[0] + 1 : header[0] + 3]
    assert "    domains: dermatology" in provides
    assert any(
        line.startswith("    config_dirs: ") and line.endswith("fmcore_dermatology/configs")
        for line in provides
    ), provides
    assert not any(line.startswith("BROKEN") for line in listing), listing

    groups = fmcore("config", "groups", cwd=tmp_path).stdout.splitlines()
    domain_line = next(line for line in groups if line.startswith("domain: "))
    assert "dermatology" in domain_line.removeprefix("domain: ").split(", ")

    shown = fmcore("config", "show", "domain=dermatology", cwd=tmp_path).stdout
    assert "name: dermatology" in shown and "patch_size: 8" in shown


def test_train_on_the_embedded_sample(installed: str, tmp_path: Path) -> None:
    run, cache = tmp_path / "run", tmp_path / "cache"
    result = fmcore(
        "train",
        "domain=dermatology",
        *DIGITS_FREE_RUN,
        "trainer.max_steps=3",
        f"run.dir={run}",
        f"run.cache_dir={cache}",
        cwd=tmp_path,
    )
    assert "finished 3 steps" in result.stdout

    sample = cache / "sample-data" / "dermatology"
    photos = sorted(sample.rglob("*.png"))
    assert sorted(p.parent.name for p in photos) == ["melanoma"] * 12 + ["nevus"] * 12
    for photo in photos:  # real 64x64 8-bit RGB PNGs
        header = photo.read_bytes()[:26]
        assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
        assert struct.unpack(">IIBB", header[16:26]) == (64, 64, 8, 2)

    encoder = load_file(str(run / "encoder.safetensors"))
    assert encoder["tokenizer.proj.weight"].shape == (64, 3, 8, 8)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["skipped_samples"] == 0


def _png(width: int, height: int, rng: random.Random) -> bytes:
    """A valid 8-bit RGB PNG of noise (incompressible, so a cut lands inside the image data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = b"".join(b"\x00" + rng.randbytes(3 * width) for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_corrupt_photos_are_skipped_counted_and_named(installed: str, tmp_path: Path) -> None:
    rng = random.Random(0)
    root = tmp_path / "photos"
    for name, count in (("melanoma", 3), ("nevus", 3)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            (root / name / f"{name}_{i}.png").write_bytes(_png(40, 30, rng))
    not_an_image = root / "nevus" / "random_bytes.png"
    not_an_image.write_bytes(rng.randbytes(2_000))
    truncated = root / "melanoma" / "truncated.png"
    truncated.write_bytes(_png(40, 30, rng)[:1_500])
    files, bad = 8, 2

    # One batch is the whole folder: every step sees each photo once, so each bad one per step.
    steps = 2
    run = tmp_path / "run"
    result = fmcore(
        "train",
        "domain=dermatology",
        *DIGITS_FREE_RUN,
        f"trainer.batch_size={files}",
        f"trainer.max_steps={steps}",
        f"data.root={root}",
        f"run.dir={run}",
        cwd=tmp_path,
    )
    assert f"finished {steps} steps" in result.stdout

    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped_samples"] == bad * steps
    examples = "\n".join(summary["skipped_examples"])
    assert str(not_an_image) in examples and "cannot identify image file" in examples
    assert str(truncated) in examples and "truncated" in examples
    assert f"skipped bad sample: {not_an_image}: " in result.stderr
    assert f"skipped bad sample: {truncated}: " in result.stderr
    assert f"{bad * steps} bad sample(s) skipped" in result.stderr
