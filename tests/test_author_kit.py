"""The plugin author kit: required-key errors, the sample cache keyed by its writer, and
``fmcore new`` / ``fmcore check`` on a generated skeleton pip-installed into this environment."""

from __future__ import annotations

import importlib.util
import site
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from contextlib import closing
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest
from conftest import TINY_ENCODER, fmcore
from omegaconf import OmegaConf
from safetensors import safe_open

from fmcore.cli import main
from fmcore.config import ConfigSources, compose, config_sources
from fmcore.domain import WRITER_STAMP_SUFFIX, Domain
from fmcore.errors import ConfigError
from fmcore.plugin_check import find_target, run_checks
from fmcore.plugin_manager import load_registry, registry


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
            "counting.lock",  # writers take turns: no process removes a folder another reads
            f"counting{WRITER_STAMP_SUFFIX}",
        ]
    finally:
        sys.modules.pop("counting_v1", None)
        sys.modules.pop("counting_v2", None)


def _pip(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"pip {' '.join(args)}:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def ecg_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``fmcore new domain ecg``, pip-installed (editable, so its files can be broken in place)
    and uninstalled at the end, so no other test sees the plugin. The commands run in this
    process (a subprocess would pay fmcore's start-up again), which sees the install once its
    .pth file is read and the plugin registry is loaded again."""
    parent = tmp_path_factory.mktemp("new")
    assert main(["new", "domain", "ecg", "--dir", str(parent)]) == 0
    root = parent / "fmcore-ecg"
    saved_path = list(sys.path)
    _pip("install", "--no-deps", "--no-build-isolation", "-e", str(root))
    site.addsitedir(sysconfig.get_paths()["purelib"])  # the editable install's .pth: src/
    registry.cache_clear()
    try:
        yield root
    finally:
        _pip("uninstall", "-y", "fmcore-ecg")
        sys.path[:] = saved_path
        for module in [m for m in sys.modules if m.split(".")[0] == "fmcore_ecg"]:
            del sys.modules[module]
        registry.cache_clear()


def _check(name: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(["check", name])
    return code, capsys.readouterr().out.splitlines()


def _line(lines: list[str], start: str) -> str:
    found = [line for line in lines if line.startswith(start)]
    assert len(found) == 1, (start, lines)
    return found[0]


def test_a_new_domain_installs_and_passes_every_check(
    ecg_plugin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = _check("fmcore-ecg", capsys)
    assert code == 0 and lines[-1] == "all checks of fmcore-ecg passed", lines
    assert _line(lines, "pass  load: ").endswith("ecg (fmcore-ecg 0.1.0)")
    config = ecg_plugin / "src" / "fmcore_ecg" / "configs" / "domain" / "ecg.yaml"
    assert _line(lines, "pass  config domain/ecg.yaml: ").endswith(f"{config} sets domain.name")
    assert _line(lines, "pass  domain ecg: sample data: ").startswith(
        "pass  domain ecg: sample data: 40 files in "
    )
    assert _line(lines, "pass  domain ecg: index and load: ").endswith(
        "train 32, val 8, all 40; a sample (1, 16, 16)"
    )
    assert _line(lines, "pass  domain ecg: partition keys (federated): ").endswith("2 groups")
    assert "2 steps into" in _line(lines, "pass  domain ecg: train 2 steps: ")
    assert "{'train': 32, 'val': 8}" in _line(lines, "pass  domain ecg: eval: kNN accuracy ")
    assert len(lines) == 9  # load, config, six domain checks, the verdict


def test_a_broken_required_key_fails_the_check_naming_it(
    ecg_plugin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ecg_plugin / "src" / "fmcore_ecg" / "configs" / "domain" / "ecg.yaml"
    original = config.read_text()
    config.write_text(original.replace("  name: ecg", "  label: ecg"))
    try:
        code, lines = _check("ecg", capsys)
    finally:
        config.write_text(original)
    assert code == 1 and lines[-1] == "2 check(s) failed", lines
    missing = f"{config} does not set the required key domain.name"
    assert _line(lines, "FAIL  config domain/ecg.yaml: ") == (
        f"FAIL  config domain/ecg.yaml: {missing}"
    )
    assert _line(lines, "FAIL  domain ecg: compose: ") == (
        f"FAIL  domain ecg: compose: {config} (domain=ecg) does not set the required key"
        " domain.name"
    )
    assert _line(lines, "skip  domain ecg: train 2 steps: ") == (
        "skip  domain ecg: train 2 steps: needs compose"
    )


def test_check_names_the_installed_plugins_when_none_matches(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["check", "no-such-plugin"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: no installed plugin, distribution, domain or method is named")
    assert "simclr (fmcore-ssl)" in error


def _first_method_checks(root: Path, work: Path) -> list[str]:
    """``fmcore check vic_reg`` up to its federated scopes (train and eval follow, the same
    engine paths the domain check above runs), on a registry that loads the skeleton at
    ``root`` from its source folder."""
    sys.path.insert(0, str(root / "src"))
    entry = EntryPoint("vic_reg", "fmcore_vic_reg.plugin", "fmcore")
    try:
        results = []
        plugins = load_registry([*entry_points(group="fmcore"), entry])
        with closing(run_checks(plugins, "vic_reg", work)) as checks:
            for result in checks:
                results.append(str(result))
                if result.name == "method vic_reg: federated scopes":
                    return results
        raise AssertionError(results)
    finally:
        sys.path.remove(str(root / "src"))
        for module in [m for m in sys.modules if m.split(".")[0] == "fmcore_vic_reg"]:
            del sys.modules[module]


def test_a_new_method_gives_every_parameter_a_gradient_and_scopes_its_state(
    tmp_path: Path,
) -> None:
    assert main(["new", "method", "vic_reg", "--dir", str(tmp_path)]) == 0
    root = tmp_path / "fmcore-vic-reg"
    results = _first_method_checks(root, tmp_path / "work")
    assert [line.split(":")[0] for line in results] == [
        "pass  load",
        "pass  config method/vic_reg.yaml",
        "pass  method vic_reg",
        "pass  method vic_reg",
        "pass  method vic_reg",
    ], results
    gradient = "pass  method vic_reg: every trainable parameter gets a gradient (DDP): loss "
    assert results[3].startswith(gradient)
    assert results[4].endswith(" domain, 0 local")

    # Without freezing the mask token it never uses, the method would stall DDP.
    method = root / "src" / "fmcore_vic_reg" / "method.py"
    freeze = "        encoder.mask_token.requires_grad_(False)\n"
    assert freeze in method.read_text()
    method.write_text(method.read_text().replace(freeze, ""))
    results = _first_method_checks(root, tmp_path / "work-unfrozen")
    assert results[3].startswith(
        "FAIL  method vic_reg: every trainable parameter gets a gradient (DDP): 1 trainable"
        " parameter(s) got no gradient, which stalls DDP: encoder.mask_token (freeze"
    ), results


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["new", "domain", "ECG"], "'ECG' cannot name a domain: use lower-case letters"),
        (["new", "method", "simclr"], "a method named 'simclr' is already installed"),
    ],
)
def test_new_refuses_a_name_it_cannot_use(
    words: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*words, "--dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {message}")
    assert list(tmp_path.iterdir()) == []


def test_new_never_writes_over_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "fmcore-ekg").mkdir()
    assert main(["new", "domain", "ekg", "--dir", str(tmp_path)]) == 2
    assert f"{tmp_path / 'fmcore-ekg'} already exists" in capsys.readouterr().err
    assert list((tmp_path / "fmcore-ekg").iterdir()) == []


def test_check_by_a_method_name_checks_that_method_and_by_plugin_all_it_provides() -> None:
    plugins = registry()
    assert find_target(plugins, "aim").methods == ["aim"]
    assert sorted(find_target(plugins, "autoregressive").methods) == ["aim", "arm", "digpt"]


@pytest.mark.slow
def test_a_new_method_with_batchnorm_federates_two_rounds(tmp_path: Path) -> None:
    """Issue 22's trap: a model with a BatchNorm failed every federated round (its 0-d
    num_batches_tracked came back as shape (1,)). The method skeleton's projector has one; its
    plugin, pip-installed, federates two rounds and the round file keeps the 0-d counter."""
    assert main(["new", "method", "bn_probe", "--dir", str(tmp_path)]) == 0
    _pip("install", "--no-deps", "--no-build-isolation", "-e", str(tmp_path / "fmcore-bn-probe"))
    try:
        run = tmp_path / "federation"
        words = ["domain=digits", "method=bn_probe", *TINY_ENCODER, "method.hidden_dim=32"]
        words += ["method.projection_dim=32", "trainer.batch_size=16", "trainer.num_workers=0"]
        words += ["trainer.progress=none", "federated.sites=2", "federated.rounds=2"]
        words += ["federated.local_steps=1", f"run.dir={run}", f"run.cache_dir={tmp_path}"]
        result = fmcore("federate", *words, cwd=tmp_path, timeout=400)
        assert "finished 2 rounds" in result.stdout
        with safe_open(str(run / "rounds" / "round_0002.safetensors"), "np") as handle:
            names = handle.keys()
            counters = [key for key in names if key.endswith("num_batches_tracked")]
            assert counters and all(handle.get_tensor(key).shape == () for key in counters)
            assert all(int(handle.get_tensor(key)) == 2 for key in counters)  # a step a round
    finally:
        _pip("uninstall", "-y", "fmcore-bn-probe")
