"""Import cycles and layer violations among the project's own modules (`uda`, `datamodules`).

Reads every .py file under the packages with `ast` (nothing is imported or executed) and lists
each import of a project module as an edge, module-level or function-level (an import inside a
function hides a cycle from Python but not from the design). A cycle is a strongly connected
component of that graph with more than one module, or a module importing itself. A layer
violation is an edge against the dependency directions of the architecture (`FORBIDDEN`: e.g.
the data layer never imports `uda`; losses and metrics never import models or recipes).

    python scripts/check_imports.py            # exit 0: none; 1: prints each cycle's edges and
                                               # each violating edge
    python scripts/check_imports.py --edges    # also list every edge
"""
from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("uda", "datamodules")

#: (importer, imported) package prefixes that must not meet: files -> datamodules -> recipes
#: (uda.modules) -> models + pure losses / metrics
FORBIDDEN = (
    ("datamodules", "uda"),  # the data layer owns no model and no model state
    ("uda.models", "datamodules"), ("uda.models", "uda.modules"),
    ("uda.losses", "datamodules"), ("uda.losses", "uda.models"), ("uda.losses", "uda.modules"),
    ("uda.metrics", "datamodules"), ("uda.metrics", "uda.models"),
    ("uda.metrics", "uda.modules"),
)


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    level: str  # "module" or "function"


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of dotted `name` that is a project module (None: not the project's)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def _base(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module name a `from ... import` statement imports from."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    package = package[:len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def _targets(module: str, path: Path, node: ast.AST, modules: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = _base(module, path, node)
        names = [f"{base}.{alias.name}" for alias in node.names]  # a submodule or a name in base
    return [t for t in (_resolve(n, modules) for n in names) if t is not None]


def _walk(node: ast.AST, in_function: bool = False):
    """(import node, inside a function?) for every import statement below `node`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                  ast.Lambda))
        yield from _walk(child, inner)


def import_edges(root: Path = ROOT) -> list[Edge]:
    modules = module_files(root)
    edges = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node, in_function in _walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                continue
            for target in dict.fromkeys(_targets(module, path, node, modules)):
                edges.append(Edge(module, target, node.lineno,
                                  "function" if in_function else "module"))
    return edges


def cycles(edges: list[Edge]) -> list[list[str]]:
    """The strongly connected components (Tarjan) that form a cycle, each sorted."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_violations(edges: list[Edge]) -> list[Edge]:
    """The edges from a package to one it must not import (`FORBIDDEN`)."""
    return [e for e in edges
            if any(_under(e.source, a) and _under(e.target, b) for a, b in FORBIDDEN)]


def _describe(e: Edge, modules: dict[str, Path], root: Path) -> str:
    return (f"  {e.source} -> {e.target}  ({modules[e.source].relative_to(root)}:{e.line}, "
            f"{e.level}-level)")


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", action="store_true", help="also list every import edge")
    args = parser.parse_args(argv)
    modules = module_files(root)
    edges = import_edges(root)
    if args.edges:
        for e in sorted(edges, key=lambda e: (e.source, e.line)):
            print(_describe(e, modules, root))
    found = cycles(edges)
    for component in found:
        members = set(component)
        print(f"import cycle among {', '.join(component)}:")
        for e in edges:
            if e.source in members and e.target in members:
                print(_describe(e, modules, root))
    wrong = layer_violations(edges)
    if wrong:
        print("imports against the layers (scripts/check_imports.py FORBIDDEN):")
        for e in wrong:
            print(_describe(e, modules, root))
    levels = {lv: sum(e.level == lv for e in edges) for lv in ("module", "function")}
    print(f"{len(modules)} modules, {levels['module']} module-level and {levels['function']} "
          f"function-level import edges, {len(found)} cycle(s), {len(wrong)} layer "
          "violation(s)")
    return 1 if found or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
