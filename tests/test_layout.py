"""The layout rules of docs/DESIGN.md: components import only the shared module and themselves; one namespace."""

from __future__ import annotations

import ast
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMPONENTS = REPO / "components"
SHARED = "common"
# where each part of the `tlpipe` namespace lives in the repository (pyproject's package-dir)
FOLDERS = {"tlpipe": REPO / "tlpipe", "tlpipe.components": COMPONENTS, "tlpipe.pipelines": REPO / "pipelines"}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included), relative ones resolved."""
    package = path.relative_to(COMPONENTS).parent.parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(("tlpipe.components", *package[: len(package) - node.level + 1]))
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


def forbidden(component: str, module: str) -> bool:
    """Whether `component` may not import `module`: another component, the pipeline, CLI, stack or tools."""
    if module in ("components", "pipelines") or module.startswith(("components.", "pipelines.")):
        return True  # the old top-level names
    if not (module == "tlpipe" or module.startswith("tlpipe.")):
        return False
    parts = module.split(".")
    if len(parts) < 3 or parts[1] != "components":
        return module not in ("tlpipe", "tlpipe.components")
    allowed = {SHARED} if component == SHARED else {SHARED, component}
    return parts[2] not in allowed


COMPONENT_FILES = sorted(COMPONENTS.rglob("*.py"))


@pytest.mark.parametrize("path", COMPONENT_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_components_import_only_the_shared_module_and_themselves(path):
    component = path.relative_to(COMPONENTS).parts[0]
    if component.endswith(".py"):  # components/__init__.py
        component = SHARED
    bad = sorted(m for m in imported_modules(path) if forbidden(component, m))
    assert not bad, f"{path.relative_to(REPO)} imports {bad}: a component may import only " \
                    f"tlpipe.components.{SHARED} and its own package"


def test_the_import_check_catches_what_it_should():
    assert forbidden("register", "tlpipe.components.evaluate.scoring")
    assert forbidden("preprocess", "tlpipe.pipelines.settings")
    assert forbidden("train", "tlpipe.cli.train") and forbidden("ingest", "tlpipe.stack")
    assert forbidden("common", "tlpipe.components.train.core") and forbidden("train", "components.common.s3")
    assert not forbidden("train", "tlpipe.components.common.model_artifact")
    assert not forbidden("train", "tlpipe.components.train.params") and not forbidden("train", "numpy")


def test_no_import_cycle_inside_a_component():
    """Imports between the modules of one component (function-level ones too) form no cycle."""
    graph = {}
    for path in COMPONENT_FILES:
        name = ".".join(("tlpipe.components", *path.relative_to(COMPONENTS).with_suffix("").parts))
        graph[name.removesuffix(".__init__")] = imported_modules(path)
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}

    def visit(module, stack):
        if module in stack:
            raise AssertionError(f"import cycle: {' -> '.join([*stack[stack.index(module):], module])}")
        for dep in graph[module]:
            visit(dep, [*stack, module])

    for module in graph:
        visit(module, [])


def test_every_package_folder_is_installed():
    """pyproject's explicit package list holds every folder with an __init__.py (and nothing else)."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {k: REPO / v for k, v in config["package-dir"].items()} == FOLDERS
    on_disk = set()
    for prefix, folder in FOLDERS.items():
        for init in folder.rglob("__init__.py"):
            on_disk.add(".".join((prefix, *init.parent.relative_to(folder).parts)))
    assert set(config["packages"]) == on_disk


def test_no_file_refers_to_the_design_doc_outside_the_repository():
    assert (REPO / "docs" / "DESIGN.md").is_file()
    outside = "/".join(("..", "shared", "DESIGN.md"))
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    offenders = [name for name in tracked.splitlines()
                 if name.endswith((".py", ".md", ".sh", ".yaml", ".toml", ".txt", "Dockerfile", "Makefile"))
                 and outside in (REPO / name).read_text(errors="ignore")]
    assert not offenders
