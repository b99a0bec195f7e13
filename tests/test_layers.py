"""The package's layers: each subpackage imports, nothing imports upward, and there is no import cycle."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import corelib as cl

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "corelib"
SUBPACKAGES = ["tl", "pl", "runs", "explorer", "encoders", "datasets"]
# what each layer may not import (at run time or inside functions): the layers above it
FORBIDDEN = {
    "tl": ("corelib.pl", "corelib.runs", "corelib.explorer"),
    "pl": ("corelib.runs", "corelib.explorer"),
    "encoders": ("corelib.tl", "corelib.pl", "corelib.runs", "corelib.explorer"),
    "datasets": ("corelib.tl", "corelib.pl", "corelib.runs", "corelib.explorer", "corelib.encoders"),
    "runs": ("corelib.explorer",),
}


# numerical libraries: runs/steps calls tl and encoders for every computation, so it imports none of them
NUMERICAL = ("numpy", "scipy", "torch", "sklearn", "numba")


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    return {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _corelib_targets(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The corelib modules an import statement loads (``from corelib.x import y`` loads x, or x.y if a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("corelib")]
    if not (node.module or "").startswith("corelib"):
        return []
    return [
        f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module for a in node.names
    ]


def _function_level_imports(path: Path) -> list[tuple[int, str]]:
    """Corelib imports inside a function body that no ``try: ... except ImportError`` guards."""
    tree = ast.parse(path.read_text())
    guarded = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.Try)
        and any("ImportError" in ast.unparse(h.type or ast.Name("")) for h in block.handlers)
        for node in ast.walk(block)
    }
    found = []
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(func):
                if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in guarded:
                    found += [(node.lineno, t) for t in _corelib_targets(node)]
    return found


def _imports(path: Path) -> list[str]:
    """Modules a file imports, TYPE_CHECKING blocks excluded (types only, nothing runs)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            out += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_nothing_imports_upward(layer):
    bad = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in sorted((PACKAGE / layer).rglob("*.py"))
        for module in _imports(path)
        if module.startswith(FORBIDDEN[layer])
    ]
    assert not bad, bad


def test_pl_does_not_even_name_a_type_of_runs_or_explorer():
    """A plot takes a result of tl; not even a TYPE_CHECKING import ties it to a run directory or a card."""
    bad = [
        f"{path.relative_to(ROOT)}: {node.module}"
        for path in sorted((PACKAGE / "pl").rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom)
        and (node.module or "").startswith(("corelib.runs", "corelib.explorer"))
    ]
    assert not bad, bad


def test_no_function_level_import_of_corelib():
    """Every dependency is at the top of its module, where a reader sees it (optional ones aside: they are
    third-party, imported through ``corelib._optional.require``)."""
    bad = sorted(
        {
            f"{path.relative_to(ROOT)}:{line}: {target}"
            for path in MODULES.values()
            for line, target in _function_level_imports(path)
        }
    )
    assert not bad, bad


def test_runs_steps_holds_no_numerical_code():
    """Steps are thin wrappers (a tl or encoders call and the run directory's cache); the numbers are made in tl."""
    bad = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in sorted((PACKAGE / "runs" / "steps").glob("*.py"))
        for module in _imports(path)
        if module.split(".")[0] in NUMERICAL
    ]
    assert not bad, bad


@pytest.mark.parametrize("layer", SUBPACKAGES)
def test_no_import_cycle_inside_a_subpackage(layer):
    """Between the modules of one subpackage (its ``__init__`` re-exports aside), function-level imports
    included: each module can be read, and tested, after the ones it needs."""
    prefix = f"corelib.{layer}."
    inside = {m: p for m, p in MODULES.items() if m.startswith(prefix) and p.name != "__init__.py"}
    graph = {m: {t for t in _imports(p) if t in inside and t != m} for m, p in inside.items()}
    cycles = [sorted(c) for c in _strongly_connected(graph) if len(c) > 1]
    assert not cycles, cycles


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative depth-first search)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert sorted(sorted(c) for c in _strongly_connected(graph)) == [["a", "b", "c"], ["d"]]


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_each_subpackage_imports_alone_and_declares_its_api(name):
    """A fresh interpreter per subpackage: an import cycle would fail here whatever was imported before."""
    code = f"import corelib.{name} as m; assert m.__all__ and all(hasattr(m, n) for n in m.__all__)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_corelib_exposes_the_layers():
    assert set(SUBPACKAGES) <= set(cl.__all__)
    for name in SUBPACKAGES:
        assert getattr(cl, name) is importlib.import_module(f"corelib.{name}")


def test_no_module_is_over_500_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 550
    }
    assert not long, long


def test_notebooks_use_the_public_api_only():
    """One alias, ``import corelib as cl``; no notebook imports a corelib module (or a module for a constant)."""
    import json

    for book in sorted((ROOT / "notebooks").glob("*.ipynb")):
        code = "\n".join(
            "".join(cell["source"])
            for cell in json.loads(book.read_text())["cells"]
            if cell["cell_type"] == "code"
        )
        imports = [line for line in code.splitlines() if "corelib" in line and "import" in line]
        assert imports == ["import corelib as cl"], (book.name, imports)
