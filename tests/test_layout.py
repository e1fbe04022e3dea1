"""The package's layout as the README's code map states it: every module listed once, and the
imports run one way, down the layers of the table, with no cycle."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "charrnn"


def _code_map() -> dict[str, int]:
    """Module name (`train`, `layers.rnn`, ...) -> its layer's rank in the README's code map."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("## Code map", 1)[1].split("\n\n", 3)[2]
    ranks: dict[str, int] = {}
    rank = -1
    for row in table.splitlines()[2:]:
        layer, modules = (cell.strip() for cell in row.strip("|").split("|")[:2])
        rank += bool(layer)
        for name in re.findall(r"`([\w/]+)(?:\.py)?`", modules):
            if name.endswith("/"):  # a subpackage: every module in it
                for path in (PACKAGE / name).glob("*.py"):
                    ranks[f"{name.rstrip('/')}.{path.stem}".removesuffix(".__init__")] = rank
            else:
                ranks[name] = rank
    return ranks


def _module(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")


def _outside_functions(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of `tree` that runs when the module is imported (none inside a function)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        todo += [n for n in ast.iter_child_nodes(node) if not isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def _imports(path: Path, deferred: bool = True) -> set[str]:
    """The charrnn modules that `path` imports (`from charrnn import __version__` is the package
    facade's constant, not an import of a layer). deferred=False: only those imported when the
    module is (not inside a function: an optional extra's module imported where it is used)."""
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree) if deferred else _outside_functions(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "charrnn":
            base = node.module.removeprefix("charrnn").lstrip(".")
            for alias in node.names:
                full = f"{base}.{alias.name}".lstrip(".")
                if (PACKAGE / f"{full.replace('.', '/')}.py").exists():
                    found.add(full)
                elif alias.name != "__version__":
                    found.add(base or "__init__")
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("charrnn.") for a in node.names if a.name.startswith("charrnn.")}
    return found


def test_every_module_is_in_the_code_map_once_and_imports_only_its_layer_or_above() -> None:
    ranks = _code_map()
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    assert set(modules) == set(ranks), f"not in the README's code map: {set(modules) ^ set(ranks)}"
    upward = [
        f"{name} ({ranks[name]}) imports {dep} ({ranks[dep]})"
        for name, path in modules.items()
        for dep in _imports(path)
        if ranks[dep] > ranks[name]
    ]
    assert not upward


def test_the_imports_have_no_cycle() -> None:
    """Importing any module never needs one that is still being imported; a function may import
    a module of its own layer when it runs (`engine.make_engine` imports `torch_engine`)."""
    graph = {_module(p): _imports(p, deferred=False) - {_module(p)} for p in PACKAGE.rglob("*.py")}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as err:
        raise AssertionError(f"import cycle: {err.args[1]}") from None
