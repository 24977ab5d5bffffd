"""Every package's lazy export table (``_LAZY`` in its ``__init__``) and its ``if TYPE_CHECKING:`` imports name
the same things from the same modules, and every entry exists: static analysers and users see one API."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

PACKAGES = [
    "refiners_core",
    "refiners_registry",
    "refiners_sd",
    "refiners_lora",
    "refiners_controlnet",
    "refiners_t2i",
    "refiners_ip_adapter",
]


def _init_source(package: str) -> ast.Module:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.origin is not None, f"{package} is not installed"
    return ast.parse(Path(spec.origin).read_text(encoding="utf-8"))


def lazy_table(tree: ast.Module) -> dict[str, str] | None:
    """The literal ``_LAZY = {...}`` of a module, or ``None`` when it has none."""
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        if isinstance(target, ast.Name) and target.id == "_LAZY" and node.value is not None:  # type: ignore[union-attr]
            return ast.literal_eval(node.value)  # type: ignore[union-attr,no-any-return]
    return None


def type_checking_imports(tree: ast.Module) -> dict[str, str]:
    """``{name: module}`` of the ``from module import name`` statements under ``if TYPE_CHECKING:``."""
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for statement in ast.walk(node):
                if isinstance(statement, ast.ImportFrom) and statement.module:
                    for alias in statement.names:
                        found[alias.asname or alias.name] = statement.module
    return found


def disagreements(lazy: dict[str, str], checked: dict[str, str]) -> list[str]:
    """What differs between a lazy table and the TYPE_CHECKING imports (empty when they agree)."""
    problems = [f"{name}: lazy only ({module})" for name, module in lazy.items() if name not in checked]
    problems += [f"{name}: TYPE_CHECKING only ({module})" for name, module in checked.items() if name not in lazy]
    problems += [
        f"{name}: lazy from {lazy[name]}, TYPE_CHECKING from {checked[name]}"
        for name in lazy.keys() & checked.keys()
        if lazy[name] != checked[name]
    ]
    return sorted(problems)


def test_the_check_catches_disagreements() -> None:
    tree = ast.parse(
        "_LAZY = {'A': 'p.a', 'B': 'p.b', 'C': 'p.c'}\n"
        "if TYPE_CHECKING:\n    from p.a import A\n    from p.x import B\n    from p.d import D\n"
    )
    table = lazy_table(tree)
    assert table is not None
    assert disagreements(table, type_checking_imports(tree)) == [
        "B: lazy from p.b, TYPE_CHECKING from p.x",
        "C: lazy only (p.c)",
        "D: TYPE_CHECKING only (p.d)",
    ]


@pytest.mark.parametrize("package", PACKAGES)
def test_lazy_exports_match_type_checking_imports(package: str) -> None:
    tree = _init_source(package)
    table = lazy_table(tree)
    if table is None:
        pytest.skip(f"{package} has no lazy export table")
    assert disagreements(table, type_checking_imports(tree)) == []
    exported = importlib.import_module(package)
    missing = [name for name in table if not hasattr(importlib.import_module(table[name]), name)]
    assert missing == [], f"{package}._LAZY names that their module lacks: {missing}"
    assert all(getattr(exported, name) is getattr(importlib.import_module(table[name]), name) for name in table)
