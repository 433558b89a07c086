"""Resolve an import path to a class without importing it (building a spec stays light).

The module is found on ``sys.path`` the way the import system would find it, and its source is
read as a syntax tree: a name the module defines or imports at top level is there. Only when the
module decides its names at run time (a module ``__getattr__`` or a star import) is it imported
to ask; such modules are rare among estimator libraries.
"""

import ast
import functools
import importlib
import importlib.machinery
import importlib.util
import sys

from secure_pipeline.spec._patterns import DOTTED_NAME


@functools.lru_cache(maxsize=128)
def import_path_problem(path: str) -> str | None:
    """What is wrong with ``module.Class``, or None when the class is there.

    Args:
        path: Dotted import path of a class.

    Returns:
        A sentence naming what was expected and what was found, or None.
    """
    if not DOTTED_NAME.match(path):
        return f"{path!r} is not an import path (expected module.Class)"
    module, _, name = path.rpartition(".")
    spec, missing = _find_module(module)
    if spec is None:
        return (
            f"{path!r}: module {missing!r} is not installed or does not exist "
            "(install the package that provides it, or correct the path)"
        )
    defined = _top_level_names(spec)
    if defined is None or (name not in defined and "__getattr__" in defined):
        # The module computes its names at run time: only importing it can tell.
        try:
            return (
                None
                if hasattr(importlib.import_module(module), name)
                else _no_name(path, module, name)
            )
        except Exception as exc:  # noqa: BLE001 - any import failure is the answer
            return f"{path!r}: importing {module!r} failed ({type(exc).__name__}: {exc})"
    return None if name in defined else _no_name(path, module, name)


def _no_name(path: str, module: str, name: str) -> str:
    return f"{path!r}: module {module!r} has no {name!r} (check the spelling and the case)"


def _find_module(dotted: str) -> tuple[importlib.machinery.ModuleSpec | None, str]:
    """The spec of a module, found without executing it or its parent packages."""
    parts = dotted.split(".")
    if parts[0] in sys.modules and len(parts) == 1:
        return sys.modules[parts[0]].__spec__, ""
    locations = None
    spec = None
    for depth in range(len(parts)):
        name = ".".join(parts[: depth + 1])
        loaded = sys.modules.get(name)
        spec = (
            loaded.__spec__
            if loaded is not None and loaded.__spec__ is not None
            else importlib.machinery.PathFinder.find_spec(name, locations)
        )
        if spec is None:
            if depth == 0:  # a built-in or frozen module is not on a path
                spec = importlib.util.find_spec(name)
            if spec is None:
                return None, name
        locations = spec.submodule_search_locations
        if depth < len(parts) - 1 and locations is None:
            return None, ".".join(parts[: depth + 2])
    return spec, ""


def _top_level_names(spec: importlib.machinery.ModuleSpec) -> set[str] | None:
    """Names a module binds at top level.

    Returns None when its source cannot be read or a star import hides them.
    """
    origin = spec.origin
    if not origin or not origin.endswith(".py"):
        return None
    try:
        with open(origin, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), filename=origin)
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    names: set[str] = set()
    pending: list[ast.stmt] = list(tree.body)
    while pending:  # top-level statements, inside if/try blocks too, not inside definitions
        node = pending.pop()
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.If | ast.Try | ast.With):
            for block in ("body", "orelse", "finalbody"):
                pending.extend(getattr(node, block, []))
            for handler in getattr(node, "handlers", []):
                pending.extend(handler.body)
    return names
