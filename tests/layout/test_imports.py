"""The layout is the architecture: these tests hold every module of the
project (the packages, the tests, the benchmarks) to the import rules the
README's map states."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(
    path
    for folder in ("src", "tests", "benchmarks")
    for path in (ROOT / folder).rglob("*.py")
    if ".venv" not in path.parts
)


TWINS = {"_ctrie", "_pytrie"}  # fastmatch's two implementations, as multidict's tests use theirs


def module_of(path: Path) -> str:
    relative = path.relative_to(ROOT / "src" if path.is_relative_to(ROOT / "src") else ROOT)
    parts = list(relative.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[tuple[str, str | None]]:
    """(module, name) for each name imported; name None for ``import module``."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                yield node.module, alias.name


def package_of(module: str) -> str:
    """The package whose internals a module belongs to: a store's package, or
    the top-level package (fastmatch, processor)."""
    parts = module.split(".")
    if parts[:2] == ["processor", "stores"] and len(parts) > 2:
        return ".".join(parts[:3])
    return parts[0]


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_module_imports_a_private_name_or_module_from_outside_its_package(path: Path) -> None:
    importer = module_of(path)
    for module, name in imports(path):
        if not within(module, "processor") and not within(module, "fastmatch"):
            continue
        owner = package_of(module)
        if within(importer, owner):
            continue
        private = [part for part in [*module.split("."), name or ""] if part.startswith("_")]
        if private and set(private) <= TWINS and not within(importer, "processor"):
            continue  # tests and benchmarks run every test against both tries
        assert not private, f"{importer} imports {module}.{name or ''}: private to {owner}"
        if owner.startswith("processor.stores."):
            assert module == owner, f"{importer} imports {module}: use {owner}'s public names"


@pytest.mark.parametrize("path", sorted((ROOT / "src" / "fastmatch").rglob("*.py")), ids=lambda p: p.name)
def test_fastmatch_knows_nothing_of_events(path: Path) -> None:
    assert not any(within(module, "processor") for module, _ in imports(path))


def test_the_loop_and_the_projector_know_no_store() -> None:
    for name in ("loop", "projections", "matching", "retry"):
        path = ROOT / "src" / "processor" / f"{name}.py"
        for module, _ in imports(path):
            assert not within(module, "processor.stores") or module == "processor.stores.base", (
                f"processor.{name} imports {module}: it may know the contract (stores.base) only"
            )


def test_stores_know_nothing_of_the_loop_or_the_runner() -> None:
    for path in (ROOT / "src" / "processor" / "stores").rglob("*.py"):
        for module, _ in imports(path):
            for upper in ("processor.loop", "processor.runner", "processor.cli", "processor.leader"):
                assert not within(module, upper), f"{module_of(path)} imports {module}"
