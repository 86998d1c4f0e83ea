"""Every module of the qlab package imports: a broken module fails here, naming itself, instead of being skipped.

The walk uses pkgutil over the installed package (qlab, qlab.gguf and qlab.kernels.* mapped from kernels/),
so a new module is covered without editing this file. Only an optional third-party dependency that is
genuinely absent (triton) turns into a skip, and even that fails when the CI variable is set, because the CI
set-up installs it.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from pathlib import Path

import pytest

# third-party packages a qlab module may need that the base install does not promise (pyproject extras)
OPTIONAL = {"triton"}


def all_modules() -> list[str]:
    """qlab's modules. qlab.kernels lives in kernels/ (a package-dir mapping): an editable install does not put
    it under qlab.__path__, so it is walked as a second root."""
    names = []
    for root in ("qlab", "qlab.kernels"):
        names.append(root)
        try:
            path = importlib.import_module(root).__path__
        except Exception:  # reported by test_module_imports, naming the root
            continue
        for info in pkgutil.walk_packages(path, prefix=root + ".", onerror=names.append):
            names.append(info.name)
    return sorted(set(names))


def test_the_walk_finds_the_package_tree():
    """A walk that found nothing would make the test below pass vacuously."""
    names = all_modules()
    for expected in ("qlab.eval", "qlab.gptq", "qlab.awq", "qlab.gguf.reader", "qlab.kernels.cpu",
                     "qlab.kernels.triton", "qlab.cli"):
        assert expected in names, f"{expected} missing from the package walk: {names}"


@pytest.mark.parametrize("name", all_modules())
def test_module_imports(name):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top in OPTIONAL:
            if os.environ.get("CI"):
                pytest.fail(f"{name}: optional dependency {e.name!r} is required in CI but not installed")
            pytest.skip(f"{name} needs the optional dependency {e.name!r}, which is not installed")
        pytest.fail(f"{name} does not import: {type(e).__name__}: {e}")
    except Exception as e:  # a SyntaxError, a NameError at import time, a missing qlab symbol …
        pytest.fail(f"{name} does not import: {type(e).__name__}: {e}")


# ---------------------------------------------------------------- the import graph has no cycles

ROOT = Path(__file__).resolve().parents[1]


def package_dirs() -> dict[str, Path]:
    """{package: its source folder}: pyproject's package-dir mapping (qlab -> qlab/, qlab.kernels -> kernels/ ...);
    on Python 3.10 (no tomllib) the folders of the two roots the module walk above uses."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        return {root: Path(importlib.import_module(root).__path__[0]) for root in ("qlab", "qlab.kernels")}
    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return {package: ROOT / folder for package, folder in dirs.items()}


def package_files() -> dict[str, Path]:
    """{module name: source file} of every module of the package, from the source tree (nothing imported)."""
    mods = {}
    for package, folder in package_dirs().items():
        for f in sorted(folder.rglob("*.py")):
            parts = list(f.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([package, *parts])] = f
    return mods


def import_graph(mods: dict) -> dict[str, dict[str, int]]:
    """{module: {imported qlab module: line of the first such import}}: every ``import`` and ``from ... import``
    statement (module level and inside functions, absolute and relative). ``from X import Y`` imports X.Y when
    that is a module, else X; a name that is no module counts as its closest enclosing module."""
    import ast

    graph = {}
    for name, f in mods.items():
        package = name if f.name == "__init__.py" else name.rpartition(".")[0]
        edges = {}
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")
                    up = up[:len(up) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    edges.setdefault(t, node.lineno)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted; [] for a DAG."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def describe_cycles(graph: dict[str, dict[str, int]], mods: dict) -> str:
    lines = []
    for comp in cycles(graph):
        lines.append("cycle among " + ", ".join(comp) + ":")
        for a in comp:
            for b, line in sorted(graph[a].items()):
                if b in comp:
                    lines.append(f"    {mods[a]}:{line}  {a} imports {b}")
    return "\n".join(lines)


def test_the_import_graph_sees_the_package():
    """The graph covers qlab and qlab.kernels.* (mapped from kernels/), and resolves relative, absolute and
    function-level imports (a graph that saw nothing would make the cycle test pass vacuously)."""
    mods = package_files()
    graph = import_graph(mods)
    for expected in ("qlab", "qlab.gguf", "qlab.gguf.reader", "qlab.kernels.cpu", "qlab.kernels.cpu.fallback",
                     "qlab.kernels.triton", "qlab.cli"):
        assert expected in mods, expected
    assert "qlab.errors" in graph["qlab.gguf.reader"]  # relative, module level: from ..errors import ...
    assert "qlab.gguf.types" in graph["qlab.kernels.cpu"]  # absolute into another package-dir root
    assert "qlab.kernels.cpu.build" in graph["qlab.kernels.cpu"]  # relative from a package __init__
    assert "qlab.gguf.reader" in graph["qlab.model"]  # inside a function
    assert cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    """No module of qlab imports itself through others, at module level or inside functions: a cycle hides an
    import-order dependency (a function-level import that 'works' until someone moves it to the top)."""
    mods = package_files()
    graph = import_graph(mods)
    assert not cycles(graph), "import cycles in the qlab package:\n" + describe_cycles(graph, mods)


def test_gguf_formats_do_not_depend_on_the_kernels():
    """Layering: the GGUF formats (qlab.gguf) sit below the CPU kernels (qlab.kernels.cpu reads the GGUF type
    registry), never the other way round."""
    graph = import_graph(package_files())
    wrong = {m: [t for t in edges if t.startswith("qlab.kernels")] for m, edges in graph.items()
             if m.startswith("qlab.gguf")}
    assert not {m: t for m, t in wrong.items() if t}, wrong


def test_pyproject_lists_every_package():
    """A non-editable install ships only the packages pyproject lists: every folder of the package tree that holds
    an __init__.py must be listed (a new subpackage forgotten there imports here and fails for users)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {name for name, f in package_files().items() if f.name == "__init__.py"}
    assert found == listed, f"not listed: {sorted(found - listed)}; listed but missing: {sorted(listed - found)}"
