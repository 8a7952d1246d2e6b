"""The plugin author kit: required-key errors, the sample cache keyed by its writer, and
``fmcore new`` / ``fmcore check`` on a generated skeleton pip-installed into this environment."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fmcore.config import ConfigSources, compose, config_sources
from fmcore.domain import WRITER_STAMP_SUFFIX, Domain
from fmcore.errors import ConfigError
from fmcore.plugin_manager import registry


@pytest.mark.parametrize(
    ("group", "text", "key"),
    [
        ("domain", "data:\n  size: [16, 16]\n  channels: 1\n", "domain.name"),
        ("method", "method:\n  features: cls\n", "method.name"),
        ("method", "extends: simclr\nmethod:\n  name: ''\n", "method.name"),
    ],
)
def test_an_option_file_without_its_required_key_is_named_in_one_line(
    tmp_path: Path, group: str, text: str, key: str
) -> None:
    file = tmp_path / group / "mine.yaml"
    file.parent.mkdir()
    file.write_text(text)
    core = config_sources(registry())
    sources = ConfigSources((*core.dirs, tmp_path), core.modality_of, core.recipe_keys_of)
    with pytest.raises(ConfigError) as raised:
        compose([f"{group}=mine"], sources)
    assert str(raised.value) == f"{file} ({group}=mine) does not set the required key {key}"


def test_a_domain_without_data_size_names_the_key() -> None:
    config = compose(["domain=digits"], config_sources(registry()))
    data = OmegaConf.masked_copy(config.data, [k for k in config.data if k != "size"])
    domain = registry().domain("digits")(data, Path("unused"))
    with pytest.raises(ConfigError, match=r"domain=digits needs data.size, which is unset"):
        domain.sample_size  # noqa: B018


WRITER = """
from pathlib import Path
from fmcore.api import Domain, Sample


class Counting(Domain):
    name = "counting"
    modality = "image2d"

    def find_samples(self, split):
        return sorted(self.resolve_root().glob("*.txt"))

    def load(self, ref):
        raise NotImplementedError

    def write_sample_data(self, directory: Path) -> None:
        for i in range(COUNT):
            (directory / f"{i}.txt").write_text(str(i))
"""


def _domain_from(source: Path, module_name: str, count: int, cache: Path) -> Domain:
    source.write_text(WRITER.replace("COUNT", str(count)))
    spec = importlib.util.spec_from_file_location(module_name, source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # the key hashes the writer's module, found by name
    spec.loader.exec_module(module)
    data = OmegaConf.create({"root": None, "sample": "plain", "size": [8, 8], "channels": 1})
    return module.Counting(data, cache)


def test_a_changed_sample_writer_rewrites_the_cached_sample(tmp_path: Path) -> None:
    package, cache = tmp_path / "writer_package", tmp_path / "cache"
    package.mkdir()
    first = _domain_from(package / "counting.py", "counting_v1", 2, cache)
    try:
        assert [p.name for p in first.index("train")] == ["0.txt", "1.txt"]
        stamp = cache / "sample-data" / f"counting{WRITER_STAMP_SUFFIX}"
        written = stamp.read_text()
        (cache / "sample-data" / "counting" / "0.txt").write_text("kept")
        assert [p.name for p in first.index("train")] == ["0.txt", "1.txt"]  # same writer: kept
        assert (cache / "sample-data" / "counting" / "0.txt").read_text() == "kept"

        second = _domain_from(package / "counting.py", "counting_v2", 3, cache)
        assert [p.name for p in second.index("train")] == ["0.txt", "1.txt", "2.txt"]
        assert (cache / "sample-data" / "counting" / "0.txt").read_text() == "0"
        assert stamp.read_text() != written
        assert sorted(p.name for p in (cache / "sample-data").iterdir()) == [
            "counting",
            f"counting{WRITER_STAMP_SUFFIX}",
        ]
    finally:
        sys.modules.pop("counting_v1", None)
        sys.modules.pop("counting_v2", None)
