"""The benchmark scripts still name what the library has.

They are run by hand (`make bench`), not by the suite: a renamed or removed function would
otherwise break one unnoticed until the next measurement. Every ``from secure_pipeline... import
name`` in them, at module level or inside a function, must resolve.
"""

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).parents[1] / "benchmarks").glob("*.py"))


def _imports(path: Path) -> list[tuple[str, str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("secure_pipeline"):
            found.extend((node.module, alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend(
                (alias.name, "", node.lineno)
                for alias in node.names
                if alias.name.startswith("secure_pipeline")
            )
    return found


def test_there_are_benchmarks() -> None:
    assert len(BENCHMARKS) > 10


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_every_library_name_a_benchmark_imports_exists(path: Path) -> None:
    missing = []
    for module_name, name, line in _imports(path):
        module = importlib.import_module(module_name)
        if name and not hasattr(module, name):
            try:
                importlib.import_module(f"{module_name}.{name}")
            except ImportError:
                missing.append(f"line {line}: {module_name}.{name}")
    assert not missing, f"{path.name} imports names the library no longer has: {missing}"
