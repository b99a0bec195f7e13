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


def _imports(path: Path) -> list[str]:
    """Modules a file imports, TYPE_CHECKING blocks excluded (types only, nothing runs)."""
    tree = ast.parse(path.read_text())
    skip = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
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
