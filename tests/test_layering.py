"""The import graph of the installed package: no circles, and every import points down a floor.

The floors, lowest first, are written down here once (docs/architecture.md explains them). A
module imports only from its own floor or below; the built-in domain and method plugins sit on
their own floor and see only the contracts below, never the engine, evaluation, each other or
the plugin manager. Imports under ``if TYPE_CHECKING`` count: a type is a dependency too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"core": "fmcore", "domains": "fmcore.domains", "plugins": "fmcore.plugins"}
PACKAGES["federated"] = "fmcore.federated"

FLOORS: list[tuple[str, ...]] = [
    # 0 foundation: errors, files, process groups, collapse statistics, the transport rule
    (
        "errors",
        "crops",
        "io",
        "file_checks",
        "probe_cache",
        "dicom_writing",
        "video_files",
        "run_files",
        "distributed",
        "collapse",
        "distribution",
        "scaffold",
        "transport",
    ),
    # 1 configuration, labels, and the report drawn from a run directory's files
    ("config", "config_sections", "labels", "splits", "report"),
    # 2 tensor layouts: tokenizers, views, masks
    ("modalities", "view_maker"),
    # 3 trunks
    ("backbones",),
    # 4 the contracts plugins implement, and the hooks
    ("encoder", "domain", "method", "hookspecs", "fmcore", "api"),
    # 5 plugins: built-in domains and methods, and the core modules that register on entry points
    ("domains", "plugins", "modalities.plugin", "backbones.plugin"),
    # 6 assembly: discovery and construction; export to other layouts
    ("plugin_manager", "factory", "timm_layout", "pretrained"),
    # 7 the training engine; reading an encoder out of its checkpoints and federated rounds
    ("engine", "encoder_source"),
    # 8 evaluation
    ("eval",),
    # 9 applications of the engine and evaluation
    ("federated", "export", "plugin_check"),
    # 10 the command line
    ("cli", "__main__"),
]
# Arrows allowed to point up (none today); a fixed one must be removed from here.
KNOWN_UPWARD: set[tuple[str, str]] = set()


def module_names() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: fmcore modules it imports}`` (``from a import b`` counts b if b is a module)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                targets.add(base)
                targets |= {f"{base}.{alias.name}" for alias in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def floor_of(module: str) -> int:
    """The floor of the longest entry matching the module (``fmcore`` itself is the package)."""
    relative = "fmcore" if module == "fmcore" else module.removeprefix("fmcore.")
    best, floor = -1, None
    for number, entries in enumerate(FLOORS):
        for entry in entries:
            if (relative == entry or relative.startswith(entry + ".")) and len(entry) > best:
                best, floor = len(entry), number
    assert floor is not None, f"{module} is on no floor: add it to FLOORS"
    return floor


def plugin_of(module: str) -> str | None:
    """``fmcore.domains.pathology`` for its modules; None outside the built-in plugins."""
    parts = module.split(".")
    if len(parts) >= 3 and parts[1] in ("domains", "plugins"):
        return ".".join(parts[:3])
    return None


def test_every_module_is_on_a_floor() -> None:
    for module in module_names():
        floor_of(module)


def test_no_import_points_up_a_floor() -> None:
    graph = imports(module_names())
    upward = {
        (source, target)
        for source, targets in graph.items()
        for target in targets
        if floor_of(target) > floor_of(source)
    }
    assert upward - KNOWN_UPWARD == set()
    assert KNOWN_UPWARD - upward == set(), "fixed: remove these from KNOWN_UPWARD"


def test_plugins_see_only_their_own_modules_and_the_contracts() -> None:
    graph = imports(module_names())
    for source, targets in graph.items():
        plugin = plugin_of(source)
        if plugin is None:
            continue
        for target in targets:
            other = plugin_of(target)
            assert other in (None, plugin), f"{source} imports another plugin: {target}"
            if other is None:
                assert floor_of(target) < floor_of(source), f"{source} imports {target}"


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of the graph (its modules, the first repeated at the end), or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for target in sorted(graph[module]):
            circle = visit(target, [*path, module])
            if circle:
                return circle
        done.add(module)
        return None

    for module in sorted(graph):
        circle = visit(module, [])
        if circle:
            return circle
    return None


def test_no_import_circles() -> None:
    assert find_circle(imports(module_names())) is None


def test_the_checker_sees_relative_imports_upward_arrows_and_circles(tmp_path: Path) -> None:
    """A hand-made package of three modules: the rules above would catch each violation."""
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("import fmcore.engine.c\n")
    (tmp_path / "c.py").write_text("from fmcore.a import thing\n")
    modules = {
        "fmcore.a": tmp_path / "a.py",
        "fmcore.b": tmp_path / "b.py",
        "fmcore.engine.c": tmp_path / "c.py",
    }
    graph = imports(modules)
    assert graph == {
        "fmcore.a": {"fmcore.b"},
        "fmcore.b": {"fmcore.engine.c"},
        "fmcore.engine.c": {"fmcore.a"},
    }
    assert find_circle(graph) == ["fmcore.a", "fmcore.b", "fmcore.engine.c", "fmcore.a"]
    assert floor_of("fmcore.engine.trainer") > floor_of("fmcore.encoder")
    assert floor_of("fmcore.modalities.plugin") > floor_of("fmcore.modalities.grid")
    assert plugin_of("fmcore.plugins.mae.method") == "fmcore.plugins.mae"


def test_the_third_party_example_uses_only_the_public_api() -> None:
    """examples/fmcore-dermatology is written as an outside author would: ``fmcore.api`` only."""
    source = ROOT / "examples" / "fmcore-dermatology" / "src"
    for path in sorted(source.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fmcore"):
                assert node.module in ("fmcore.api",) or node.module.startswith(
                    "fmcore_dermatology"
                ), f"{path.relative_to(ROOT)} imports {node.module}"


def test_every_public_api_name_resolves() -> None:
    import fmcore.api

    missing = [name for name in fmcore.api.__all__ if not hasattr(fmcore.api, name)]
    assert not missing
    assert {"Domain", "Method", "Modality", "Encoder", "hookimpl"} <= set(fmcore.api.__all__)
