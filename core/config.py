"""Config composition with omegaconf: ``train.yaml`` + chosen group files + dotted overrides.

Command-line words are either a group choice (``domain=pathology``; several options of a group
as a list, ``logger=[tensorboard,mlflow]``), an override of an existing key
(``trainer.max_steps=10``), or a new key (``+data.slide_mpp=0.25``). Group files are merged in
the order encoder, domain, method, then plugin groups, so a domain may adjust its encoder's
tokenizer (patch size) and a method may adjust anything. Unknown keys and choices fail with the
valid ones listed.

A section may hold ``by_modality: {<modality>: {...}}`` (MAE's per-modality recipes): it is
merged over its section for the chosen domain's modality when the config is composed, and
dropped, so the composed (and saved) config is exactly what runs. A domain's own keys follow
the modality's (``Domain.recipe_keys``: its name, and ``<name>-<mode>`` for a domain with
modes), so a recipe can name one domain or one of its modes (RETFound's 0.85 for
``ophthalmology-oct``). A command-line override of the
section's own key (``method.mask_ratio=0.8``) wins over the modality's value;
``method.by_modality.video.mask_ratio=0.8`` changes the recipe itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Protocol

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from fmcore.config_sections import type_sections
from fmcore.errors import ConfigError, UnknownChoice

BASE_FILE = "train.yaml"
GROUP_ORDER = ("encoder", "domain", "method")
BY_MODALITY = "by_modality"
# Keys an option file of a group must set (after its ``extends``): fmcore picks the plugin by them.
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {"domain": ("domain.name",), "method": ("method.name",)}


def core_config_dir() -> Path:
    from importlib.resources import files

    return Path(str(files("fmcore.configs")))


# (domain name, data section) -> the modality of that domain's samples
ModalityOf = Callable[[str, DictConfig], str]
# (domain name, data section) -> the domain's own by_modality keys, merged after the modality's
RecipeKeysOf = Callable[[str, DictConfig], tuple[str, ...]]


@dataclass(frozen=True)
class ConfigSources:
    """The directories searched for config groups, fmcore's own first, and how to tell a
    domain's modality from its data section (``by_modality`` sections are resolved with it)."""

    dirs: tuple[Path, ...]
    modality_of: ModalityOf | None = None
    recipe_keys_of: RecipeKeysOf | None = None

    def groups(self) -> list[str]:
        found = {p.name for d in self.dirs if d.is_dir() for p in d.iterdir() if p.is_dir()}
        return sorted(found - {"__pycache__"}, key=_group_rank)

    def options(self, group: str) -> dict[str, Path]:
        """``{option name: file}`` for a group; the first directory providing a name wins."""
        found: dict[str, Path] = {}
        for directory in self.dirs:
            for file in sorted((directory / group).glob("*.yaml")):
                found.setdefault(file.stem, file)
        return found

    def base(self) -> Path:
        return self.dirs[0] / BASE_FILE


class ProvidesConfigDirs(Protocol):
    """What :func:`config_sources` needs of the plugin registry."""

    @property
    def config_dirs(self) -> Sequence[Path]: ...

    def modality_of(self, domain: str, data: DictConfig) -> str: ...

    def recipe_keys_of(self, domain: str, data: DictConfig) -> tuple[str, ...]: ...


def config_sources(plugins: ProvidesConfigDirs) -> ConfigSources:
    """fmcore's config directory, then every plugin's (``fmcore_config_dirs``)."""
    return ConfigSources(
        (core_config_dir(), *plugins.config_dirs), plugins.modality_of, plugins.recipe_keys_of
    )


def _group_rank(group: str) -> tuple[int, str]:
    return (GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER), group)


@dataclass(frozen=True)
class Overrides:
    choices: dict[str, str]
    values: list[tuple[str, Any, bool]]  # (dotted key, value, may_add)


def parse_overrides(words: Sequence[str], groups: Iterable[str]) -> Overrides:
    groups = set(groups)
    choices: dict[str, str] = {}
    values: list[tuple[str, Any, bool]] = []
    for word in words:
        if "=" not in word:
            raise ConfigError(
                f"'{word}' is not an override: write key=value (trainer.max_steps=10),"
                " group=option (domain=pathology) or +new.key=value"
            )
        key, raw = word.split("=", 1)
        may_add = key.startswith("+")
        key = key.lstrip("+")
        if not key:
            raise ConfigError(f"'{word}' has no key before '='")
        if key in groups and not may_add:
            choices[key] = raw
        else:
            values.append((key, _parse_value(raw), may_add))
    return Overrides(choices, values)


def _parse_value(raw: str) -> Any:
    """YAML scalars and flow collections: 10 -> int, 1e-4 -> float, [a,b] -> list, null -> None."""
    if raw == "":
        return ""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, date):  # 2024-01-01: OmegaConf cannot hold dates, keep the text
        return raw
    if isinstance(value, str) and _looks_like_float(value):
        return float(value)
    return value


def _looks_like_float(text: str) -> bool:
    # Only numbers YAML 1.1 leaves as text (1e-4); words like nan / inf / infinity stay strings.
    if not any(c.isdigit() for c in text):
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True


# What a resumed run may change: where and how it runs, how long, and where its data now lives.
RESUME_MAY_CHANGE = (
    "resume",
    "run.dir",
    "run.cache_dir",
    "data.root",
    "trainer.max_steps",
    "trainer.device",
    "trainer.num_workers",
    "trainer.progress",
    "trainer.log_every",
    "trainer.checkpoint_every",
    "trainer.keep_checkpoints",
)


def refuse_resume_changes(
    words: Sequence[str],
    groups: Iterable[str],
    run_config: Path,
    may_change: Sequence[str] = RESUME_MAY_CHANGE,
) -> None:
    """Raise unless ``words`` only restate ``run_config``'s values or change ``may_change`` keys:
    repeating the original command line with ``resume=true`` works, a real change does not."""
    saved = OmegaConf.load(run_config)
    overrides = parse_overrides(words, groups)
    final = {key: value for key, value, _ in overrides.values}  # the last word for a key wins
    changed = [
        key
        for key, value in final.items()
        if key not in may_change and as_dict(OmegaConf.select(saved, key)) != value
    ]
    changed += [
        f"{group}={option}"
        for group, option in overrides.choices.items()
        if chosen_options(saved.get("defaults", {}).get(group)) != chosen_options(option)
    ]
    if changed:
        raise ConfigError(
            f"resume=true continues {run_config} as saved and cannot change {', '.join(changed)};"
            f" a resume may only change {', '.join(key for key in may_change if key != 'resume')}"
        )


def resume_config(words: Sequence[str], sources: ConfigSources, run_config: Path) -> DictConfig:
    """The saved config of a run being resumed, with the few overrides a resume may make."""
    refuse_resume_changes(words, sources.groups(), run_config)
    kept = [w for w in words if w.split("=", 1)[0].lstrip("+") not in sources.groups()]
    return compose(kept, sources, saved=run_config)


def compose(words: Sequence[str], sources: ConfigSources, saved: Path | None = None) -> DictConfig:
    """Resolve a full config from command-line words (and optionally a saved run config)."""
    overrides = parse_overrides(words, sources.groups())
    if saved is not None:
        if overrides.choices:
            raise ConfigError(
                f"{saved} is a complete saved config: group choices"
                f" ({', '.join(f'{k}={v}' for k, v in overrides.choices.items())})"
                " cannot change it;"
                " override single keys instead"
            )
        if not Path(saved).is_file():
            raise ConfigError(f"saved config {saved} does not exist")
        config = OmegaConf.load(saved)
    else:
        config = _compose_groups(sources, overrides.choices)
    OmegaConf.set_struct(config, True)
    for key, value, may_add in overrides.values:
        _set(config, key, value, may_add)
    if _resolve_by_modality(config, sources):
        for key, value, may_add in overrides.values:  # the command line wins over a recipe
            if f".{BY_MODALITY}." not in f".{key}":
                _set(config, key, value, may_add)
    try:
        OmegaConf.resolve(config)
    except OmegaConfBaseException as error:  # ${...} naming a missing key, and the like
        raise ConfigError(f"cannot resolve the config: {error}") from error
    type_sections(config)
    return config


def unresolved_by_modality(config: DictConfig) -> list[str]:
    """Sections that still hold a ``by_modality`` table (composed without a known domain)."""
    return [
        str(name)
        for name, section in config.items()
        if isinstance(section, DictConfig) and BY_MODALITY in section
    ]


def _resolve_by_modality(config: DictConfig, sources: ConfigSources) -> bool:
    """Merge each section's ``by_modality.<modality>`` (then the domain's own keys) over it and
    drop the table; False when there is nothing to resolve, or no domain chosen yet to resolve
    it for."""
    sections = unresolved_by_modality(config)
    domain = OmegaConf.select(config, "domain.name")
    if not sections or domain is None:
        return False
    if sources.modality_of is None:
        raise ConfigError(
            f"cannot resolve {', '.join(f'{s}.{BY_MODALITY}' for s in sections)} without the"
            " installed domains: compose with config_sources(registry)"
        )
    data = config.get("data") or OmegaConf.create({})
    modality = sources.modality_of(str(domain), data)
    domain_keys = sources.recipe_keys_of(str(domain), data) if sources.recipe_keys_of else ()
    with open_dict(config):
        for name in sections:
            config[name] = for_modality(config[name], modality, name, domain_keys)
    return True


def for_modality(
    section: DictConfig, modality: str, name: str, domain_keys: Sequence[str] = ()
) -> DictConfig:
    """Section ``name`` as it runs on ``modality``: its ``by_modality.<modality>``, then each of
    ``domain_keys`` it has, merged over it (only keys the section has), the table dropped."""
    keys = [str(key) for key in section if key != BY_MODALITY]
    base = OmegaConf.masked_copy(section, keys)
    table = section.get(BY_MODALITY) or {}
    for recipe_key in (modality, *domain_keys):
        recipe = table.get(recipe_key)
        if not recipe:
            continue
        OmegaConf.set_struct(base, True)  # a recipe may only override keys the section has
        try:
            base = OmegaConf.merge(base, recipe)
        except OmegaConfBaseException as error:
            raise ConfigError(
                f"{name}.{BY_MODALITY}.{recipe_key} overrides an unknown key: {error};"
                f" valid keys: {', '.join(keys)}"
            ) from error
    return base


def _compose_groups(sources: ConfigSources, choices: dict[str, str]) -> DictConfig:
    base = OmegaConf.load(sources.base())
    defaults = dict(base.pop("defaults", {}) or {})
    unknown_groups = set(choices) - set(sources.groups())
    if unknown_groups:
        raise UnknownChoice("config group", sorted(unknown_groups)[0], sources.groups())
    defaults.update(choices)
    merged = base
    chosen: dict[str, str | list[str]] = {}
    for group in sources.groups():
        options = chosen_options(defaults.get(group))
        for option in options:
            node = load_option(sources, group, option)
            missing = missing_required_keys(group, node)
            if missing:
                raise ConfigError(
                    f"{sources.options(group)[option]} ({group}={option}) does not set the"
                    f" required key {missing[0]}"
                )
            merged = OmegaConf.merge(merged, node)
        if options:
            chosen[group] = options if len(options) > 1 else options[0]
    merged.defaults = chosen
    return merged


def chosen_options(choice: Any) -> list[str]:
    """The options a group choice names: none (``null``), one (``logger=mlflow``) or several,
    as a YAML list (``logger=[tensorboard,mlflow]``), whose files merge in the listed order."""
    if isinstance(choice, str) and choice.startswith("["):
        choice = _parse_value(choice)
    if choice is None or choice == "null":
        return []
    if isinstance(choice, list | ListConfig):
        return [str(option) for option in choice]
    return [str(choice)]


def missing_required_keys(group: str, node: DictConfig) -> list[str]:
    """The ``REQUIRED_KEYS`` of ``group`` that the option file ``node`` leaves unset or empty."""
    return [
        key for key in REQUIRED_KEYS.get(group, ()) if OmegaConf.select(node, key) in (None, "")
    ]


def load_option(sources: ConfigSources, group: str, option: str) -> DictConfig:
    """Option ``option`` of ``group`` as its file and the files it ``extends`` merge it."""
    return _load_option(sources, group, option, ())


def _load_option(
    sources: ConfigSources, group: str, option: str, seen: tuple[str, ...]
) -> DictConfig:
    """One group file; ``extends: <option>`` first loads another option of the same group, so a
    preset lists only what it changes (``method=dinov2_small`` extends ``dinov2``)."""
    files = sources.options(group)
    if option not in files:
        raise UnknownChoice(group, option, files)
    if option in seen:
        raise ConfigError(f"{group}/{option}.yaml extends itself through {' -> '.join(seen)}")
    node = OmegaConf.load(files[option])
    parent = node.pop("extends", None)
    if parent is None:
        return node
    return OmegaConf.merge(_load_option(sources, group, str(parent), (*seen, option)), node)


def _set(config: DictConfig, key: str, value: Any, may_add: bool) -> None:
    parent_key, _, leaf = key.rpartition(".")
    parent = _select(config, parent_key) if parent_key else config
    if parent is None and may_add:
        _set(config, parent_key, {}, may_add=True)
        parent = _select(config, parent_key)
    if parent is None and not may_add:
        # A missing section on the way (traner.max_steps): list the keys where the path breaks.
        section, level = config, ""
        for part in parent_key.split("."):
            if not isinstance(section, DictConfig) or part not in section:
                break
            level = f"{level}.{part}" if level else part
            section = _select(config, level)
        if isinstance(section, DictConfig):
            raise _unknown_key(key, level, section)
    if not isinstance(parent, DictConfig | ListConfig):
        raise ConfigError(f"unknown config key '{key}': '{parent_key}' is not a section")
    if isinstance(parent, DictConfig) and leaf not in parent and not may_add:
        raise _unknown_key(key, parent_key, parent)
    try:
        with open_dict(parent):
            if isinstance(parent, ListConfig):
                parent[int(leaf)] = value
            else:
                parent[leaf] = value
    except (ConfigKeyError, ValueError, IndexError) as error:
        raise ConfigError(f"cannot set '{key}': {error}") from error


def _select(config: DictConfig, key: str) -> Any:
    """The node at ``key``, or None (also where the path indexes a list with a non-number)."""
    try:
        return OmegaConf.select(config, key)
    except OmegaConfBaseException:
        return None


def _unknown_key(key: str, level: str, section: DictConfig) -> ConfigError:
    return ConfigError(
        f"unknown config key '{key}'; valid keys under '{level or '<root>'}':"
        f" {', '.join(sorted(str(k) for k in section))}"
        f" (prefix a new key with '+': +{key}=...)"
    )


def to_yaml(config: DictConfig) -> str:
    return OmegaConf.to_yaml(config, resolve=True)


def as_dict(node: Any) -> Any:
    """Plain Python containers from an OmegaConf node (anything else is returned unchanged)."""
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node
