"""``fmcore new domain|method NAME``: a pip-installable plugin package to start from.

The files are rendered from the templates shipped beside this module (``templates/``, package
data) with :class:`string.Template`: ``$name``, ``$package``, ``$class_name`` ... Each template
is listed in :data:`LAYOUT` with the path it is written to.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from string import Template

from fmcore.errors import ConfigError

KINDS = ("domain", "method")
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")
# template (under templates/, ``KIND`` standing for the kind's folder) -> the file it becomes
LAYOUT = {
    "common/pyproject.toml": "pyproject.toml",
    "common/README.md": "README.md",
    "common/__init__.py": "src/$package/__init__.py",
    "common/plugin.py": "src/$package/plugin.py",
    "KIND/module.py": "src/$package/$module.py",
    "KIND/config.yaml": "src/$package/configs/$kind/$name.yaml",
    "KIND/test.py": "tests/test_$name.py",
}
MODULES = {"domain": "data", "method": "method"}  # the module holding the class
BASES = {"domain": "Domain", "method": "Method"}
TRAIN_COMMANDS = {
    "domain": "fmcore train domain=$name method=simclr trainer.max_steps=2",
    "method": "fmcore train domain=digits method=$name trainer.max_steps=2",
}


@dataclass(frozen=True)
class Skeleton:
    kind: str
    name: str

    @property
    def distribution(self) -> str:
        return f"fmcore-{self.name.replace('_', '-')}"

    def values(self) -> dict[str, str]:
        values = {
            "kind": self.kind,
            "name": self.name,
            "distribution": self.distribution,
            "package": f"fmcore_{self.name}",
            "module": MODULES[self.kind],
            "base": BASES[self.kind],
            "class_name": "".join(part.capitalize() for part in self.name.split("_")),
        }
        values["train_command"] = Template(TRAIN_COMMANDS[self.kind]).substitute(values)
        return values


def check_name(kind: str, name: str, taken: Collection[str]) -> Skeleton:
    """The skeleton for ``fmcore new KIND NAME``; a :class:`ConfigError` for a name that is not
    a lower-case Python identifier or that an installed plugin already provides."""
    if kind not in KINDS:
        raise ConfigError(f"fmcore new makes a {' or a '.join(KINDS)}, not a '{kind}'")
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"'{name}' cannot name a {kind}: use lower-case letters, digits and '_', starting"
            " with a letter (it becomes the package fmcore_<name>)"
        )
    if name in taken:
        raise ConfigError(f"a {kind} named '{name}' is already installed: choose another name")
    return Skeleton(kind, name)


def write_skeleton(skeleton: Skeleton, parent: Path) -> Path:
    """Write the package into ``parent/fmcore-<name>`` (which must not exist); its path."""
    root = parent / skeleton.distribution
    if root.exists():
        raise ConfigError(f"{root} already exists: remove it or choose another --dir")
    values = skeleton.values()
    templates = files("fmcore.scaffold") / "templates"
    for template, target in LAYOUT.items():
        source = templates / f"{template.replace('KIND', skeleton.kind)}.tmpl"
        path = root / Template(target).substitute(values)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(source.read_text()).substitute(values))
    return root
