"""`make docs`: the API reference builds from the docstrings, and every module imports (what CI checks)."""

import subprocess
import sys

import corelib as cl

IMPORT_FAILURES = ("Couldn't import", "Error loading", "Error importing")


def test_the_api_reference_builds_and_every_module_imports(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pdoc", "--docformat", "numpy", "-o", str(tmp_path), "corelib"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]  # pdoc exits 1 when a module does not import
    failures = [line for line in done.stderr.splitlines() if any(f in line for f in IMPORT_FAILURES)]
    assert not failures, failures
    for name in cl.__all__:
        page = tmp_path / "corelib" / f"{name}.html"
        assert page.exists() and "<h1" in page.read_text(), name
    assert "train_sae" in (tmp_path / "corelib" / "tl.html").read_text()
