"""Plugin discovery: every ``fmcore`` entry point is loaded into one pluggy manager.

Built-ins and third-party packages take the same path. A plugin that fails to import, implements
an unknown hook, raises in a provider hook, or provides a name that is already taken is recorded
as a :class:`PluginProblem` (which package, which entry point, why) and skipped; everything else
keeps working. ``FMCORE_TRACE_HOOKS=1`` prints every hook call to stderr.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import pluggy
from omegaconf import DictConfig

from fmcore import hookspecs
from fmcore.backbones.trunk import Trunk
from fmcore.distribution import DISTRIBUTION
from fmcore.domain import Domain
from fmcore.errors import UnknownChoice
from fmcore.method import Method
from fmcore.modalities.base import Modality

ENTRY_POINT_GROUP = "fmcore"
PROVIDER_HOOKS = (
    "fmcore_domains",
    "fmcore_methods",
    "fmcore_modalities",
    "fmcore_trunks",
    "fmcore_config_dirs",
)
TrunkFactory = Callable[[DictConfig], Trunk]  # the encoder section -> a trunk


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    module: str
    provides: dict[str, list[str]] = field(default_factory=dict)
    hooks: list[str] = field(default_factory=list)  # lifecycle hooks it implements


@dataclass
class PluginProblem:
    plugin: str
    distribution: str
    entry_point: str
    reason: str

    def __str__(self) -> str:
        return (
            f"plugin '{self.plugin}' from {self.distribution} ({self.entry_point}): {self.reason}"
        )


@dataclass
class Registry:
    """What the loaded plugins provide, by name."""

    manager: pluggy.PluginManager
    plugins: list[PluginInfo] = field(default_factory=list)
    problems: list[PluginProblem] = field(default_factory=list)
    domains: dict[str, type[Domain]] = field(default_factory=dict)
    methods: dict[str, type[Method]] = field(default_factory=dict)
    modalities: dict[str, Modality] = field(default_factory=dict)
    trunks: dict[str, TrunkFactory] = field(default_factory=dict)
    config_dirs: list[Path] = field(default_factory=list)

    def modality_of(self, domain: str, data: DictConfig) -> str:
        """The modality of domain ``domain``'s samples under the ``data`` section."""
        return self.domain(domain).modality_for(data)

    def recipe_keys_of(self, domain: str, data: DictConfig) -> tuple[str, ...]:
        """Domain ``domain``'s own ``by_modality`` keys under the ``data`` section."""
        return self.domain(domain).recipe_keys(data)

    @property
    def hook(self) -> Any:
        """Lifecycle hooks, called with keyword arguments: ``hook.fmcore_step_end(...)``."""
        return self.manager.hook

    def domain(self, name: str) -> type[Domain]:
        return _pick(self.domains, name, "domain")

    def method(self, name: str) -> type[Method]:
        return _pick(self.methods, name, "method")

    def modality(self, name: str) -> Modality:
        return _pick(self.modalities, name, "modality")

    def trunk(self, name: str) -> TrunkFactory:
        return _pick(self.trunks, name, "trunk")


def _pick(table: dict[str, Any], name: str, kind: str) -> Any:
    if name not in table:
        raise UnknownChoice(kind, name, table)
    return table[name]


def _distribution(entry: EntryPoint) -> tuple[str, str]:
    dist = entry.dist
    return (dist.name, dist.version) if dist is not None else ("<unknown>", "")


def _discovery_order(entry: EntryPoint) -> tuple[bool, str, str]:
    # fmcore's own plugins first, so a third-party duplicate never shadows a built-in.
    dist_name = _distribution(entry)[0]
    return (dist_name != DISTRIBUTION, dist_name, entry.name)


def load_registry(entries: Iterable[EntryPoint] | None = None) -> Registry:
    """Load every entry point of the ``fmcore`` group (or the given ones) into a new registry."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    if os.environ.get("FMCORE_TRACE_HOOKS", "") not in ("", "0"):
        manager.trace.root.setwriter(lambda message: sys.stderr.write(message))
        manager.enable_tracing()
    registry = Registry(manager=manager)
    found = entry_points(group=ENTRY_POINT_GROUP) if entries is None else entries
    for entry in sorted(found, key=_discovery_order):
        _load_one(registry, entry)
    return registry


def _load_one(registry: Registry, entry: EntryPoint) -> None:
    dist_name, version = _distribution(entry)
    where = f"{entry.name} = {entry.value}"

    def problem(reason: str) -> None:
        registry.problems.append(PluginProblem(entry.name, dist_name, where, reason))

    try:
        module = entry.load()
    except Exception as error:  # a broken plugin must not break the CLI for everything else
        problem(f"failed to import: {_short(error)}")
        return
    if registry.manager.is_registered(module) or registry.manager.has_plugin(entry.name):
        problem("a plugin with this name or module is already registered")
        return
    try:
        registry.manager.register(module, name=entry.name)
    except Exception as error:
        problem(f"invalid hook implementation: {_short(error)}")
        return
    unknown = [c.name for c in registry.manager.get_hookcallers(module) or [] if c.spec is None]
    if unknown:
        registry.manager.unregister(module)
        problem(f"implements unknown hook(s) {', '.join(unknown)}; see fmcore.hookspecs")
        return
    try:
        contributions = {hook: _call_provider(module, hook) for hook in PROVIDER_HOOKS}
        provides = _add_contributions(registry, contributions, problem)
    except Exception as error:
        registry.manager.unregister(module)
        problem(f"provider hook failed: {_short(error)}")
        return
    hooks = sorted(
        caller.name
        for caller in registry.manager.get_hookcallers(module) or []
        if caller.name not in PROVIDER_HOOKS
    )
    registry.plugins.append(
        PluginInfo(
            entry.name,
            dist_name,
            version,
            getattr(module, "__name__", repr(module)),
            provides,
            hooks,
        )
    )


def _call_provider(module: Any, hook: str) -> Any:
    function = getattr(module, hook, None)
    if function is None or not hasattr(function, f"{hookspecs.PROJECT}_impl"):
        return None
    return function()


def _add_contributions(
    registry: Registry, contributions: dict[str, Any], problem: Callable[[str], None]
) -> dict[str, list[str]]:
    """Validate everything a plugin provides first, then add it; taken names are reported."""
    entries = [
        *(("domains", _subclass(d, Domain), d) for d in contributions["fmcore_domains"] or []),
        *(("methods", _subclass(m, Method), m) for m in contributions["fmcore_methods"] or []),
        *(
            ("modalities", _instance(m, Modality), m)
            for m in contributions["fmcore_modalities"] or []
        ),
        *(("trunks", _factory(n, f), f) for n, f in (contributions["fmcore_trunks"] or {}).items()),
    ]
    directories = [Path(d) for d in contributions["fmcore_config_dirs"] or []]
    for directory in directories:
        if not directory.is_dir():
            raise NotADirectoryError(f"config directory {directory} does not exist")
    provides: dict[str, list[str]] = {}
    for kind, name, value in entries:
        table = getattr(registry, kind)
        if name in table:
            owner = next(p for p in registry.plugins if name in p.provides.get(kind, []))
            problem(
                f"{kind[:-1]} '{name}' is already provided by plugin '{owner.name}' of"
                f" {owner.distribution}; ignored"
            )
            continue
        table[name] = value
        provides.setdefault(kind, []).append(name)
    for directory in directories:
        registry.config_dirs.append(directory)
        provides.setdefault("config_dirs", []).append(str(directory))
    return provides


def _subclass(value: Any, base: type) -> str:
    if not (isinstance(value, type) and issubclass(value, base)):
        raise TypeError(f"expected a {base.__name__} subclass, got {value!r}")
    return _name(value)


def _instance(value: Any, base: type) -> str:
    if not isinstance(value, base):
        raise TypeError(f"expected a {base.__name__} object, got {value!r}")
    return _name(value)


def _factory(name: str, value: Any) -> str:
    if not callable(value):
        raise TypeError(f"trunk '{name}' must be a callable, got {value!r}")
    return name


def _name(value: Any) -> str:
    name = getattr(value, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{value!r} has no 'name'")
    return name


def _short(error: BaseException) -> str:
    last = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
    where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
    return f"{type(error).__name__}: {error}{where}"


@cache
def registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    return load_registry()
