"""Packaging keeps up with the folders, and public modules export a curated, sorted __all__."""

from __future__ import annotations

import importlib
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROOTS = {"sdk": "agentmesh", "services": "agentmesh.services", "agents": "agentmesh.agents"}


def _package_folders() -> set[str]:
    found = set()
    for folder, import_name in ROOTS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            if "node_modules" in init.parts:
                continue
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((import_name, *relative)))
    return found


def test_every_package_folder_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(config["packages"]) == _package_folders()
    assert config["package-dir"] == {import_name: folder for folder, import_name in ROOTS.items()}


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's RUF022 order: CONSTANTS, then Classes, then functions, each alphabetical."""
    if name.isupper():
        return (0, name)
    return (1 if name[:1].isupper() else 2, name)


@pytest.mark.parametrize("package", sorted(_package_folders()))
def test_public_all_is_sorted_and_importable(package: str) -> None:
    module = importlib.import_module(package)
    exported = getattr(module, "__all__", None)
    if exported is None:
        return
    assert list(exported) == sorted(exported, key=_isort_key), f"{package}.__all__ is not sorted"
    for name in exported:
        assert hasattr(module, name), f"{package}.__all__ names missing {name}"


def test_top_level_layout_is_the_architecture() -> None:
    for path in ("protos", "services/registry", "services/planner", "services/gateway", "agents", "sdk",
                 "deploy/compose", "tests", "bench", "buf.yaml", "pyproject.toml", "Makefile", "README.md",
                 ".ci/run"):
        assert (ROOT / path).exists(), path


def test_nothing_else_at_the_top_level() -> None:
    # Tracked files only: .venv/, .agentmesh/ and caches are local state, ignored by git.
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    top = {line.split("/", 1)[0] for line in tracked.splitlines()}
    assert top == {".ci", ".gitignore", "Makefile", "README.md", "agents", "bench", "buf.yaml", "deploy", "protos",
                   "pyproject.toml", "scripts", "sdk", "services", "tests"}


def _mypy_config() -> dict[str, Any]:
    config: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    return config


def test_mypy_is_strict_over_the_whole_package() -> None:
    # `make lint` runs `mypy` with no arguments: strict mode over agentmesh.* (sdk, services, agents).
    config = _mypy_config()
    assert config["strict"] is True
    assert config["packages"] == ["agentmesh"]
    assert "scripts/typecheck_tree.sh\n\t$(BIN)/mypy\n" in (ROOT / "Makefile").read_text()
    for override in config.get("overrides", []):
        # The only override: third-party packages without types. Nothing of ours is exempt from strict mode.
        assert set(override) == {"module", "ignore_missing_imports"}, override
        modules = override["module"] if isinstance(override["module"], list) else [override["module"]]
        assert not [m for m in modules if m.split(".")[0] == "agentmesh"], override


def test_typecheck_tree_lays_out_every_package() -> None:
    # mypy sees the import names only through these links; a package it cannot find would go unchecked.
    subprocess.run([ROOT / "scripts" / "typecheck_tree.sh"], check=True)
    base = ROOT / _mypy_config()["mypy_path"].replace("$MYPY_CONFIG_FILE_DIR/", "")
    for package in _package_folders():
        init = base.joinpath(*package.split("."), "__init__.py")
        assert init.resolve() == (ROOT / _folder_of(package) / "__init__.py").resolve(), package


def _folder_of(package: str) -> Path:
    for folder, import_name in sorted(ROOTS.items(), key=lambda item: -len(item[1])):
        if package == import_name or package.startswith(import_name + "."):
            return Path(folder, *package[len(import_name) :].split(".")[1:])
    raise AssertionError(package)
