"""The wheel and the editable install give the same fmcore package layout."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import fmcore
from fmcore.distribution import DISTRIBUTION

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "core": "fmcore",
    "domains": "fmcore/domains",
    "plugins": "fmcore/plugins",
    "federated": "fmcore/federated",
    "configs": "fmcore/configs",
}
LIST_MODULES = """
import json, pkgutil, sys
sys.path.insert(0, sys.argv[1]) if len(sys.argv) > 1 else None
import importlib
import fmcore
from importlib.resources import files
names = set()
for top in ("fmcore", "fmcore.domains", "fmcore.plugins", "fmcore.federated", "fmcore.configs"):
    package = importlib.import_module(top)
    names.add(top)
    names.update(m.name for m in pkgutil.walk_packages(package.__path__, top + "."))
names = sorted(names)
yaml = sorted(str(p.relative_to(files("fmcore.configs"))) for p in
              __import__("pathlib").Path(str(files("fmcore.configs"))).rglob("*.yaml"))
print(json.dumps({"file": fmcore.__file__, "modules": names, "configs": yaml}))
"""


PACKAGED_SUFFIXES = (".py", ".yaml", ".tmpl")  # .tmpl: fmcore new's skeleton templates


def expected_files() -> set[str]:
    found = set()
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in PACKAGED_SUFFIXES and "__pycache__" not in path.parts:
                found.add(f"{package}/{path.relative_to(ROOT / folder).as_posix()}")
    return found


def layout(python_path: Path | None) -> dict:
    args = [sys.executable, "-c", LIST_MODULES] + ([str(python_path)] if python_path else [])
    return json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)


@pytest.mark.slow
def test_wheel_maps_every_folder_into_fmcore_like_the_editable_install(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("fmcore_ssl-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        entry_point_text = archive.read(entry_points).decode()
        archive.extractall(tmp_path / "site")
    packaged = {
        n for n in names if not n.startswith("fmcore_ssl-") and n.endswith(PACKAGED_SUFFIXES)
    }
    assert packaged == expected_files()
    assert "[fmcore]" in entry_point_text and "fmcore.domains.digits.plugin" in entry_point_text

    from_wheel = layout(tmp_path / "site")
    from_editable = layout(None)
    assert from_wheel["file"].startswith(str(tmp_path / "site"))
    assert from_editable["file"].startswith(str(ROOT / "core"))
    assert from_wheel["modules"] == from_editable["modules"]
    assert from_wheel["configs"] == from_editable["configs"]
    assert "domain/digits.yaml" in from_wheel["configs"]


def test_the_distribution_is_fmcore_ssl_and_carries_the_builtin_plugins() -> None:
    """ "fmcore" on the package index is another project: fmcore installs as fmcore-ssl, and the
    import package, the command and the entry-point group keep the name fmcore."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION == "fmcore-ssl"
    installed = metadata.distribution(DISTRIBUTION)
    assert installed.version == fmcore.__version__
    assert set(metadata.packages_distributions()["fmcore"]) == {DISTRIBUTION}
    builtins = {e.name: e.value for e in installed.entry_points.select(group="fmcore")}
    assert builtins == project["entry-points"]["fmcore"]
    (command,) = installed.entry_points.select(group="console_scripts", name="fmcore")
    assert command.value == "fmcore.cli:main"
    for extra in project["optional-dependencies"]:  # no extra points back at the index's fmcore
        assert not any(r.startswith("fmcore[") for r in project["optional-dependencies"][extra])
