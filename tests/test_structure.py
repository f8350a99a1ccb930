"""The layout guards itself: the Python package has no import cycle (at module level or inside functions),
and no source file of the project is over the size a reader can hold (MAX_LINES).

The import graph is read from the sources (ast), not from sys.modules, so an import inside a function
counts as an arrow too. A package's __init__ and its own submodules import each other by design
(re-exports); an import from outside a package also runs that package's __init__, so it is an arrow to it.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "python" / "fuseprop"
MAX_LINES = 800
SOURCES = ("csrc", "cuda", "python", "tests", "benchmarks")
SUFFIXES = {".py", ".cpp", ".h", ".cu", ".cuh", ".pyi"}


def module_names(package: pathlib.Path) -> dict:
    """{dotted module name: path} for every .py file under package (packages by their __init__)."""
    names = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imports_of(path: pathlib.Path, name: str, is_package: bool) -> set:
    """The dotted names path imports anywhere in it (module level or in a function), resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            stem = ".".join(base + ([node.module] if node.module else []))
            found.add(stem)
            found.update(f"{stem}.{alias.name}" for alias in node.names)
    return found


def import_graph(package: pathlib.Path) -> dict:
    """{module: {modules of the package it imports}}: `from p import x` is an arrow to p (its __init__ runs)
    and to p.x when that is a module; an import of a module also runs the __init__ of every package it is
    in, an arrow to each that the importer is outside of. The root package is left out: it is the entry
    point, and its __init__ runs before any of its modules by design."""
    names = module_names(package)
    root = package.name
    graph = {}
    for name, path in names.items():
        targets = set()
        for target in imports_of(path, name, path.name == "__init__.py"):
            if target not in names or target == name:
                continue  # another library, a name inside a module, or the extension module
            targets.add(target)
            parts = target.split(".")
            for i in range(2, len(parts)):
                parent = ".".join(parts[:i])
                if not (name == parent or name.startswith(parent + ".")):
                    targets.add(parent)
        targets.discard(root)  # the root package's __init__ runs before any of its modules, by design
        graph[name] = targets
    return graph


def cycles(graph: dict) -> list:
    """The strongly connected components of more than one module, or of one that imports itself (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def without_package_reexports(graph: dict) -> dict:
    """The arrows between a package's __init__ and its own submodules removed (its re-exports, and a
    submodule's `from . import sibling`, which Python resolves while the __init__ runs)."""
    out = {}
    for name, targets in graph.items():
        out[name] = {t for t in targets if not t.startswith(name + ".") and not name.startswith(t + ".")}
    return out


def test_the_package_has_no_import_cycle():
    found = cycles(without_package_reexports(import_graph(PACKAGE)))
    assert not found, "import cycles in fuseprop (module names that import each other):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_the_cycle_check_finds_a_cycle_in_a_function_and_through_a_package(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import a, sub\n")
    (pkg / "a.py").write_text("import numpy\n\ndef f():\n    from .sub import b\n")  # a -> sub/__init__ and sub.b
    (pkg / "sub" / "__init__.py").write_text("from .b import thing\n")
    (pkg / "sub" / "b.py").write_text("from .. import a\nthing = 1\n")  # b -> a: a cycle through a function
    (pkg / "c.py").write_text("from .a import f\n")  # no cycle
    assert cycles(without_package_reexports(import_graph(pkg))) == [["pkg.a", "pkg.sub.b"]]
    (pkg / "sub" / "b.py").write_text("thing = 1\n")  # the arrow back removed: no cycle
    assert cycles(without_package_reexports(import_graph(pkg))) == []


def source_files():
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix in SUFFIXES and path.is_file() and "build" not in path.relative_to(ROOT).parts:
                yield path


def test_no_source_file_is_over_the_limit():
    files = list(source_files())
    assert len(files) > 50, "the source walk found too few files: the layout moved"
    over = [(str(p.relative_to(ROOT)), n) for p in files if (n := len(p.read_text(errors="replace").splitlines())) > MAX_LINES]
    assert not over, f"source files over {MAX_LINES} lines (split them by concern): {over}"


@pytest.mark.parametrize("package", ["engine", "_arrays", "_tape", "losses", "optim", "distributed", "training"])
def test_the_layers_below_nn_import_no_layer(package):
    """The plans, the step, losses, optimizers, data parallelism and the training loop talk to a model
    through its protocol (fuseprop.nn.module's Module methods, native_layer()), never a layer class."""
    graph = import_graph(PACKAGE)
    mine = {n for n in graph if n == f"fuseprop.{package}" or n.startswith(f"fuseprop.{package}.")}
    reached = {t for n in mine for t in graph[n]}
    assert not {t for t in reached if t == "fuseprop.nn" or t.startswith("fuseprop.nn.")}, reached


INTEGRATIONS = {"fuseprop.sklearn", "fuseprop.torch", "fuseprop.onnx"}


def test_the_core_never_imports_an_integration():
    """scikit-learn, PyTorch and ONNX are optional extras: their modules import the core, never the reverse,
    so `import fuseprop` needs none of them."""
    graph = import_graph(PACKAGE)
    assert INTEGRATIONS <= set(graph), "an integration module moved: update INTEGRATIONS"
    offenders = {name: sorted(graph[name] & INTEGRATIONS) for name in graph
                 if name not in INTEGRATIONS and name != "fuseprop.__main__" and graph[name] & INTEGRATIONS}
    assert not offenders, offenders
