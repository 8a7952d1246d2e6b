"""Plugin discovery: built-ins through entry points, broken plugins reported and skipped,
duplicate names, config directories, lifecycle hooks, ``fmcore plugins`` and hook tracing."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from importlib.metadata import Distribution, EntryPoint, entry_points
from pathlib import Path

import pytest
from conftest import fmcore

import fmcore as fmcore_package
from fmcore.domain import Domain
from fmcore.errors import UnknownChoice
from fmcore.plugin_manager import Registry, load_registry

BUILTINS = {
    "digits": {"domains": ["digits"]},
    "simclr": {"methods": ["simclr"]},
    "modalities": {"modalities": ["image2d", "volume3d", "video", "points"]},
    "trunks": {"trunks": ["vit", "mamba"]},
}

# A minimal valid domain; plugin sources below import it with ``from fmcore.domain import ...``.
DOMAIN_CLASS = """
from fmcore import hookimpl
from fmcore.domain import Domain, Sample


class {cls}(Domain):
    name = "{name}"
    modality = "image2d"

    def find_samples(self, split):
        return []

    def load(self, ref):
        raise NotImplementedError
"""

MakePlugin = Callable[..., EntryPoint]


@pytest.fixture
def make_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakePlugin]:
    """Write a plugin module under a unique import name; return its entry point."""
    modules_dir = tmp_path / "modules"
    modules_dir.mkdir()
    monkeypatch.syspath_prepend(str(modules_dir))
    written: list[str] = []

    def make(entry_name: str, source: str) -> EntryPoint:
        module = f"fmcore_test_{entry_name}_{uuid.uuid4().hex[:8]}"
        (modules_dir / f"{module}.py").write_text(textwrap.dedent(source))
        written.append(module)
        return EntryPoint(name=entry_name, value=module, group="fmcore")

    yield make
    for module in written:
        sys.modules.pop(module, None)


def builtin(name: str) -> EntryPoint:
    (entry,) = (e for e in entry_points(group="fmcore") if e.name == name)
    return entry


def domain_plugin(cls: str, name: str, extra: str = "") -> str:
    return (
        DOMAIN_CLASS.format(cls=cls, name=name)
        + f"""

@hookimpl
def fmcore_domains():
    return [{cls}]
"""
        + extra
    )


def by_name(registry: Registry) -> dict[str, dict[str, list[str]]]:
    return {info.name: info.provides for info in registry.plugins}


# --- built-ins -------------------------------------------------------------------------------


def test_installed_registry_has_the_builtins_from_fmcore() -> None:
    registry = load_registry()
    assert registry.problems == []
    builtins = [info for info in registry.plugins if info.name in BUILTINS]
    assert {info.name for info in builtins} == set(BUILTINS)
    for info in builtins:
        assert info.distribution == "fmcore-ssl"
        assert info.version == fmcore_package.__version__
        assert info.module.startswith("fmcore.")
        assert info.provides == BUILTINS[info.name]

    assert "digits" in registry.domains and issubclass(registry.domain("digits"), Domain)
    assert registry.domain("digits").name == "digits"
    assert registry.method("simclr").name == "simclr"
    assert {"image2d", "volume3d", "video", "points"} <= set(registry.modalities)
    assert registry.modality("points").name == "points"
    assert callable(registry.trunk("vit"))
    with pytest.raises(UnknownChoice, match=r"unknown domain 'nowhere'; valid choices: .*digits"):
        registry.domain("nowhere")


# --- broken plugins --------------------------------------------------------------------------


def test_plugin_failing_to_import_is_reported_and_others_still_load(
    make_plugin: MakePlugin,
) -> None:
    broken = make_plugin("broken", "import fmcore_no_such_package_xyz\n")
    good = make_plugin("good", domain_plugin("GoodDomain", "good_domain"))
    registry = load_registry(entries=[broken, good])

    (problem,) = registry.problems
    assert problem.plugin == "broken"
    assert problem.entry_point == f"broken = {broken.value}"
    assert "failed to import" in problem.reason
    assert (
        "ModuleNotFoundError" in problem.reason and "fmcore_no_such_package_xyz" in problem.reason
    )
    assert "broken" in str(problem) and "fmcore_no_such_package_xyz" in str(problem)

    assert [info.name for info in registry.plugins] == ["good"]
    assert registry.domain("good_domain").name == "good_domain"


def test_plugin_raising_at_import_time_is_reported(make_plugin: MakePlugin) -> None:
    broken = make_plugin("explodes", "raise RuntimeError('no licence server')\n")
    registry = load_registry(entries=[broken, builtin("digits")])
    (problem,) = registry.problems
    assert problem.plugin == "explodes"
    assert "RuntimeError: no licence server" in problem.reason
    assert "digits" in registry.domains


def test_duplicate_domain_name_is_reported_and_the_first_kept(make_plugin: MakePlugin) -> None:
    real = builtin("digits")
    impostor = make_plugin("aaa_impostor", domain_plugin("FakeDigits", "digits"))
    # The impostor is listed (and named) first; fmcore's own plugins still load first.
    registry = load_registry(entries=[impostor, real])

    assert registry.domains["digits"].__module__ == "fmcore.domains.digits.data"
    (problem,) = registry.problems
    assert problem.plugin == "aaa_impostor"
    assert "domain 'digits' is already provided by plugin 'digits' of fmcore-ssl" in problem.reason
    names = [info.name for info in registry.plugins]
    assert names == ["digits", "aaa_impostor"]
    assert by_name(registry)["aaa_impostor"] == {}
    assert by_name(registry)["digits"] == {"domains": ["digits"]}


def test_third_party_distribution_sorting_before_fmcore_still_loads_after_it(
    make_plugin: MakePlugin, tmp_path: Path
) -> None:
    entry = make_plugin("aardvark", domain_plugin("Aardvark", "digits"))
    # A real installed-looking distribution whose name sorts before "fmcore".
    info = tmp_path / "dists" / "aardvark_plugins-1.2.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: aardvark-plugins\nVersion: 1.2.3\n"
    )
    (info / "entry_points.txt").write_text(f"[fmcore]\naardvark = {entry.value}\n")
    (third_party,) = Distribution.at(info).entry_points.select(group="fmcore")

    registry = load_registry(entries=[third_party, builtin("digits")])
    assert registry.domains["digits"].__module__ == "fmcore.domains.digits.data"
    (problem,) = registry.problems
    assert problem.distribution == "aardvark-plugins"
    assert "already provided" in problem.reason
    plugin = registry.plugins[-1]
    assert (plugin.name, plugin.distribution, plugin.version) == (
        "aardvark",
        "aardvark-plugins",
        "1.2.3",
    )


def test_the_same_entry_point_twice_is_reported(make_plugin: MakePlugin) -> None:
    entry = make_plugin("twice", domain_plugin("Twice", "twice"))
    registry = load_registry(entries=[entry, entry])
    assert [info.name for info in registry.plugins] == ["twice"]
    (problem,) = registry.problems
    assert "already registered" in problem.reason


def test_unknown_hook_is_reported_and_the_plugin_not_registered(make_plugin: MakePlugin) -> None:
    entry = make_plugin(
        "typo",
        domain_plugin(
            "Typo",
            "typo_domain",
            """
CALLS = []


@hookimpl
def fmcore_not_a_hook():
    return 1


@hookimpl
def fmcore_step_end(step, metrics, run_dir):
    CALLS.append(step)
""",
        ),
    )
    registry = load_registry(entries=[entry])
    (problem,) = registry.problems
    assert problem.plugin == "typo"
    assert "fmcore_not_a_hook" in problem.reason and "unknown hook" in problem.reason
    assert registry.plugins == []
    assert "typo_domain" not in registry.domains
    assert not registry.manager.has_plugin("typo")
    registry.hook.fmcore_step_end(step=1, metrics={}, run_dir=Path("."))
    assert sys.modules[entry.value].CALLS == []


def test_hook_with_wrong_arguments_is_reported(make_plugin: MakePlugin) -> None:
    entry = make_plugin(
        "wrongargs",
        """
from fmcore import hookimpl


@hookimpl
def fmcore_step_end(stepp):
    pass
""",
    )
    registry = load_registry(entries=[entry])
    (problem,) = registry.problems
    assert "invalid hook implementation" in problem.reason and "stepp" in problem.reason
    assert registry.plugins == []


PROVIDER_FAILURES = {
    "raises": "raise RuntimeError('database offline')",
    "not_a_domain": "return [object]",
    "not_a_list": "return 42",
}


@pytest.mark.parametrize("failure", sorted(PROVIDER_FAILURES))
def test_failing_provider_hook_registers_nothing_of_that_plugin(
    make_plugin: MakePlugin, failure: str
) -> None:
    source = f"""
from fmcore import hookimpl
from fmcore.plugins.simclr.method import SimCLR

CALLS = []


class Renamed(SimCLR):
    name = "renamed_{failure}"


@hookimpl
def fmcore_methods():
    return [Renamed]


@hookimpl
def fmcore_domains():
    {PROVIDER_FAILURES[failure]}


@hookimpl
def fmcore_step_end(step, metrics, run_dir):
    CALLS.append(step)
"""
    entry = make_plugin(f"half_{failure}", source)
    registry = load_registry(entries=[entry, builtin("simclr")])

    (problem,) = registry.problems
    assert problem.plugin == f"half_{failure}"
    assert "provider hook failed" in problem.reason
    assert registry.methods.keys() == {"simclr"}  # the valid method was not kept either
    assert [info.name for info in registry.plugins] == ["simclr"]
    registry.hook.fmcore_step_end(step=5, metrics={}, run_dir=Path("."))
    assert sys.modules[entry.value].CALLS == []


def test_domain_without_a_name_is_reported(make_plugin: MakePlugin) -> None:
    entry = make_plugin(
        "nameless",
        """
from fmcore import hookimpl
from fmcore.domain import Domain


class Nameless(Domain):
    modality = "image2d"


@hookimpl
def fmcore_domains():
    return [Nameless]
""",
    )
    registry = load_registry(entries=[entry])
    (problem,) = registry.problems
    assert "has no 'name'" in problem.reason
    assert registry.domains == {}


# --- config directories ----------------------------------------------------------------------


def test_plugin_config_dir_is_collected(make_plugin: MakePlugin, tmp_path: Path) -> None:
    configs = tmp_path / "plugin_configs"
    (configs / "domain").mkdir(parents=True)
    (configs / "domain" / "mine.yaml").write_text("domain:\n  name: mine\n")
    entry = make_plugin(
        "withconfigs",
        domain_plugin(
            "Mine",
            "mine",
            f"""

@hookimpl
def fmcore_config_dirs():
    return [{str(configs)!r}]
""",
        ),
    )
    registry = load_registry(entries=[entry])
    assert registry.problems == []
    assert registry.config_dirs == [configs]
    assert by_name(registry)["withconfigs"] == {
        "domains": ["mine"],
        "config_dirs": [str(configs)],
    }

    from fmcore.config import compose, config_sources

    assert compose(["domain=mine"], config_sources(registry)).domain.name == "mine"


def test_missing_plugin_config_dir_is_reported(make_plugin: MakePlugin, tmp_path: Path) -> None:
    missing = tmp_path / "not_there"
    entry = make_plugin(
        "missingdir",
        domain_plugin(
            "Lost",
            "lost",
            f"""

@hookimpl
def fmcore_config_dirs():
    return [{str(missing)!r}]
""",
        ),
    )
    registry = load_registry(entries=[entry])
    (problem,) = registry.problems
    assert str(missing) in problem.reason and "does not exist" in problem.reason
    assert registry.config_dirs == []
    assert "lost" not in registry.domains


# --- lifecycle hooks -------------------------------------------------------------------------

OBSERVER = """
from fmcore import hookimpl

CALLS = []


@hookimpl
def fmcore_train_start(config, run_dir, world_size):
    CALLS.append(("train_start", config, run_dir, world_size))


@hookimpl
def fmcore_step_end(step, metrics, run_dir):
    CALLS.append(("step_end", step, metrics, run_dir))
"""


def test_lifecycle_hooks_reach_every_plugin(make_plugin: MakePlugin, tmp_path: Path) -> None:
    first = make_plugin("observer_one", OBSERVER)
    second = make_plugin("observer_two", OBSERVER)
    registry = load_registry(entries=[first, second, builtin("digits")])
    assert registry.problems == []
    assert by_name(registry)["observer_one"] == {}

    registry.hook.fmcore_train_start(config={"a": 1}, run_dir=tmp_path, world_size=2)
    results = registry.hook.fmcore_step_end(step=3, metrics={"loss": 0.5}, run_dir=tmp_path)
    assert results == []  # lifecycle hooks return nothing

    expected = [
        ("train_start", {"a": 1}, tmp_path, 2),
        ("step_end", 3, {"loss": 0.5}, tmp_path),
    ]
    for entry in (first, second):
        calls = sys.modules[entry.value].CALLS
        assert calls == expected
    # Hooks nobody implements can be called too.
    registry.hook.fmcore_checkpoint_saved(
        step=3, path=tmp_path, run_dir=tmp_path, method=None, domain=None, config={}
    )


def test_trace_hooks_prints_hook_calls_to_stderr(
    make_plugin: MakePlugin, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = make_plugin("traced", OBSERVER)

    monkeypatch.setenv("FMCORE_TRACE_HOOKS", "1")
    registry = load_registry(entries=[entry])
    registry.hook.fmcore_step_end(step=11, metrics={"loss": 0.25}, run_dir=Path("runs/x"))
    err = capsys.readouterr().err
    assert "fmcore_step_end" in err
    assert "step: 11" in err and "0.25" in err
    assert "finish fmcore_step_end" in err

    for off in ("", "0"):
        monkeypatch.setenv("FMCORE_TRACE_HOOKS", off)
        quiet = load_registry(entries=[entry])
        quiet.hook.fmcore_step_end(step=12, metrics={}, run_dir=Path("runs/x"))
        assert capsys.readouterr().err == ""
    monkeypatch.delenv("FMCORE_TRACE_HOOKS")
    load_registry(entries=[entry]).hook.fmcore_step_end(step=13, metrics={}, run_dir=Path("."))
    assert capsys.readouterr().err == ""
    assert [call[1] for call in sys.modules[entry.value].CALLS] == [11, 12, 12, 13]


# --- the command line ------------------------------------------------------------------------


def test_plugins_strict_exits_1_on_a_broken_plugin_and_the_listing_shows_hooks(
    make_plugin: MakePlugin, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from fmcore import cli

    watcher = make_plugin(
        "watcher",
        """
from fmcore import hookimpl


@hookimpl
def fmcore_step_end(step, metrics, run_dir):
    pass
""",
    )
    impostor = make_plugin("impostor", domain_plugin("FakeDigits", "digits"))
    loaded = load_registry(entries=[builtin("digits"), watcher, impostor])
    monkeypatch.setattr(cli, "registry", lambda: loaded)
    assert cli.main(["plugins"]) == 0
    assert cli.main(["plugins", "--strict"]) == 1
    out = capsys.readouterr().out
    assert "watcher  (" in out and "    hooks: fmcore_step_end" in out
    assert "BROKEN plugin 'impostor'" in out
    assert "already provided by plugin 'digits' of fmcore-ssl" in out


def test_cli_plugins_lists_builtins_with_distribution_and_provides(tmp_path: Path) -> None:
    out = fmcore("plugins", cwd=tmp_path).stdout
    version = fmcore_package.__version__
    assert f"digits  (fmcore-ssl {version}, fmcore.domains.digits.plugin)" in out
    assert f"simclr  (fmcore-ssl {version}, fmcore.plugins.simclr.plugin)" in out
    assert f"trunks  (fmcore-ssl {version}, fmcore.backbones.plugin)" in out
    assert f"modalities  (fmcore-ssl {version}, fmcore.modalities.plugin)" in out
    assert "    domains: digits" in out
    assert "    methods: simclr" in out
    assert "    trunks: vit, mamba" in out
    assert "    modalities: image2d, volume3d, video, points" in out
    assert "BROKEN" not in out


def test_every_domain_refuses_an_unknown_split_with_one_message(tmp_path: Path) -> None:
    """The base class checks the split name against the domain's ``splits`` before the plugin's
    own ``find_samples`` runs, for the built-in domains and a third-party one alike."""
    from fmcore.config import compose, config_sources
    from fmcore.errors import ConfigError
    from fmcore.factory import build_domain
    from fmcore.plugin_manager import registry

    plugins = registry()
    for name in ("digits", "pathology", "radiology", "video"):
        words = [f"domain={name}", f"run.cache_dir={tmp_path}"]
        domain = build_domain(compose(words, config_sources(plugins)), plugins)
        with pytest.raises(ConfigError, match=rf"unknown split 'dev' for domain={name}; valid: "):
            domain.index("dev")
        assert {"train", "all"} <= set(domain.splits)
        assert not (tmp_path / "sample-data").exists()  # refused before any file is touched
