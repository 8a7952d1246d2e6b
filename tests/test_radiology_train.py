"""`fmcore train domain=radiology` end to end, in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import fmcore

pytest.importorskip("monai", reason="needs the radiology extra: pip install -e '.[radiology]'")
pytest.importorskip("nibabel")
pytest.importorskip("pydicom")

from pydicom.data import get_testdata_file
from safetensors import safe_open

from fmcore.config import compose, config_sources
from fmcore.domains.radiology.sample_data import write_sample
from fmcore.domains.radiology.sample_radiographs import write_radiographs
from fmcore.engine.trainer import train
from fmcore.plugin_manager import registry

# A small 3D run: 32^3 crops of the embedded phantoms, 8^3 patches (64 tokens).
RADIOLOGY_RUN = [
    "domain=radiology",
    "encoder.depth=2",
    "encoder.embed_dim=64",
    "encoder.vit.num_heads=2",
    "trainer.batch_size=2",
    "trainer.num_workers=0",
    "trainer.device=cpu",
    "trainer.max_steps=2",
]
SMALL_DINOV2 = [
    "method=dinov2_small",
    "method.dino.prototypes=64",
    "method.ibot.prototypes=64",
    "method.dino.hidden_dim=32",
    "method.dino.bottleneck_dim=16",
]
SMALL_MAE = [
    "method=mae",
    "method.decoder.depth=1",
    "method.decoder.embed_dim=64",
    "method.decoder.num_heads=2",
]


@pytest.fixture(scope="module")
def sample_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for this module: the sample is written and its volumes decoded once (both
    atomically, so sharing is safe)."""
    return tmp_path_factory.mktemp("radiology-sample-cache")


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def train_two_steps(tmp_path: Path, cache: Path, *words: str) -> Path:
    """`fmcore train` with these words for two steps; the run must skip nothing."""
    run = tmp_path / "run"
    result = fmcore("train", *words, f"run.dir={run}", f"run.cache_dir={cache}", cwd=tmp_path)
    assert "finished 2 steps" in result.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["skipped_samples"] == 0
    assert summary["skipped_inputs"] == []
    assert metrics(run)[-1]["step"] == 2 and metrics(run)[-1]["loss"] > 0
    return run


@pytest.mark.slow
@pytest.mark.parametrize("method", [SMALL_DINOV2, SMALL_MAE], ids=["dinov2_small", "mae"])
def test_train_runs_on_the_embedded_volumes(
    tmp_path: Path, sample_cache: Path, method: list[str]
) -> None:
    run = train_two_steps(tmp_path, sample_cache, *RADIOLOGY_RUN, *method)
    assert (run / "encoder.safetensors").exists()
    sample = sample_cache / "sample-data" / "radiology"
    assert len(list(sample.glob("*.nii.gz"))) == 2
    assert len(list((sample / "phantom_0_dicom").glob("*.dcm"))) == 48


def test_non_image_dicom_in_the_data_folder_is_skipped_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In process (no interpreter start-up): the run trains on the volumes and names the
    RTSTRUCT file it skipped, in the log and in the run summary."""
    root = tmp_path / "data"
    write_sample(root, volumes=1)
    rtstruct = root / "structures" / "rtstruct.dcm"
    rtstruct.parent.mkdir()
    shutil.copy(get_testdata_file("rtstruct.dcm"), rtstruct)
    run = tmp_path / "run"
    config = compose(
        [
            *RADIOLOGY_RUN,
            *SMALL_MAE,
            f"data.root={root}",
            f"run.dir={run}",
            f"run.cache_dir={tmp_path / 'cache'}",
        ],
        config_sources(registry()),
    )
    train(config, registry())
    output = capsys.readouterr()
    assert f"skipped bad input: {rtstruct}: not an image (Modality RTSTRUCT" in output.err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2
    assert [m.split(": ")[0] for m in summary["skipped_inputs"]] == [str(rtstruct)]


XRAY_RUN = [*RADIOLOGY_RUN, "data.mode=xray"]  # 64^2 radiographs, 8^2 patches: 64 tokens
SMALL_DINOV2_REFERENCE = [
    "method=dinov2",
    *SMALL_DINOV2[1:],
    "method.ibot.hidden_dim=32",
    "method.ibot.bottleneck_dim=16",
    "method.views.local.count=2",
]


@pytest.mark.slow
@pytest.mark.parametrize("method", [SMALL_DINOV2_REFERENCE, SMALL_MAE], ids=["dinov2", "mae"])
def test_xray_mode_trains_on_the_embedded_radiographs(
    tmp_path: Path, sample_cache: Path, method: list[str]
) -> None:
    run = train_two_steps(tmp_path, sample_cache, *XRAY_RUN, *method)
    with safe_open(run / "encoder.safetensors", "pt") as encoder:
        assert encoder.metadata()["modality"] == "image2d"
    sample = sample_cache / "sample-data" / "radiology-xray"
    assert len(list(sample.glob("*.dcm"))) == 4 and len(list(sample.glob("*.png"))) == 4


@pytest.mark.slow
def test_xray_folder_with_bad_files_trains_and_reports_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An RTSTRUCT and a truncated PNG are left out when indexing; a DICOM whose pixel data is
    cut short is skipped when loaded. Two steps of two cover all four indexed files once."""
    root = tmp_path / "data"
    write_radiographs(root, count=5)
    rtstruct = root / "rtstruct.dcm"
    shutil.copy(get_testdata_file("rtstruct.dcm"), rtstruct)
    png = root / "chest_2_8bit.png"
    png.write_bytes(png.read_bytes()[:-100])
    cut = root / "chest_1_cr.dcm"
    cut.write_bytes(cut.read_bytes()[:-1000])
    run = tmp_path / "run"
    config = compose(
        [
            *XRAY_RUN,
            *SMALL_MAE,
            f"data.root={root}",
            f"run.dir={run}",
            f"run.cache_dir={tmp_path / 'cache'}",
        ],
        config_sources(registry()),
    )
    train(config, registry())
    output = capsys.readouterr()
    assert f"skipped bad input: {rtstruct}: not an image (Modality RTSTRUCT" in output.err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2
    reasons = dict(message.split(": ", 1) for message in summary["skipped_inputs"])
    assert sorted(reasons) == sorted([str(rtstruct), str(png)])
    assert reasons[str(png)].startswith("truncated PNG")
    assert summary["skipped_samples"] == 1
    assert summary["skipped_examples"][0].startswith(f"{cut}: cannot decode DICOM pixels")
