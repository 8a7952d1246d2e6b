"""Bad samples are skipped and counted; a run fails clearly only when nothing usable is left."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from conftest import SMALL_RUN

from fmcore.config import compose, config_sources
from fmcore.domain import Domain, Sample
from fmcore.domains.digits.data import Digits
from fmcore.engine.trainer import train
from fmcore.errors import BadSample, MissingExtra, NoUsableSamples
from fmcore.plugin_manager import load_registry

ROOT = Path(__file__).resolve().parents[1]


class EveryThirdDigitIsCorrupt(Digits):
    name = "corrupt_digits"

    def load(self, ref: int) -> Sample:
        if ref % 3 == 0:
            raise BadSample(f"/data/digit_{ref}.png", "truncated file")
        return super().load(ref)


class AllCorrupt(Digits):
    name = "all_corrupt"

    def load(self, ref: int) -> Sample:
        raise BadSample(f"/data/digit_{ref}.png", "not an image")


def run(tmp_path: Path, domain: type[Digits], steps: int) -> dict:
    registry = load_registry()
    registry.domains[domain.name] = domain
    config = compose(
        [
            *SMALL_RUN,
            f"trainer.max_steps={steps}",
            f"run.dir={tmp_path / 'run'}",
            "trainer.progress=none",
        ],
        config_sources(registry),
    )
    config.domain.name = domain.name
    train(config, registry)
    return json.loads((tmp_path / "run" / "summary.json").read_text())


def test_bad_samples_are_skipped_counted_and_named(tmp_path: Path) -> None:
    summary = run(tmp_path, EveryThirdDigitIsCorrupt, steps=5)
    assert summary["steps"] == 5
    # 5 batches of 16 drawn from a permutation: about a third of the 80 samples are corrupt
    assert 10 <= summary["skipped_samples"] <= 45
    assert all("truncated file" in m and "/data/digit_" in m for m in summary["skipped_examples"])


def test_a_run_with_no_usable_sample_fails_naming_the_files(tmp_path: Path) -> None:
    with pytest.raises(NoUsableSamples, match=r"/data/digit_\d+\.png: not an image"):
        run(tmp_path, AllCorrupt, steps=2)


def test_a_domain_whose_packages_are_missing_names_the_pip_command() -> None:
    class NeedsAbsentPackage(Domain):
        name = "needs_absent"
        modality = "image2d"
        extra = "pathology"
        requires = ("surely_not_an_installed_module",)

    with pytest.raises(MissingExtra) as raised:
        NeedsAbsentPackage.check_requirements()
    # The extra's own packages, as pyproject.toml lists them: never "fmcore[...]", which the
    # package index would resolve to an unrelated project.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = project["optional-dependencies"]["pathology"]
    quoted = " ".join(f"'{requirement}'" for requirement in extra)
    assert raised.value.install == f"pip install {quoted}"
    assert "surely_not_an_installed_module" in str(raised.value)
