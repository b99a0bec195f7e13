"""Never wrong in silence: bad inputs and faults, tried as a user meets them, with what each one gets (issue 23).

Every case runs the command a user would (``python -m corelib run``, papermill on one notebook, or one call of
the README's API) in a fresh process on small data (a PCA encoder on 600 pbmc3k cells), and is judged from its
exit status and what it printed:

- ``clear``: it stops (or warns, for a case that may go on) with a message matching what the problem is,
  in one line, without a traceback, before any notebook ran;
- ``late``: the same, but only after one or more notebooks ran (minutes, on real data);
- ``handled``: a case that should succeed (a documented option, a notebook run by hand) succeeds and says so;
- ``silent``: exit 0 and no word of the problem (the worst: a wrong result served as a right one);
- ``unclear``: it fails, but with a traceback or a message that does not name the problem.

    .venv/bin/python benchmarks/audit_silence.py                      # this checkout, ~10 min on 2 cores
    .venv/bin/python benchmarks/audit_silence.py --repo /tmp/before   # the same cases against another checkout

Disk-full and read-only cases mount a small tmpfs and need root; elsewhere they are reported as not run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import yaml

import corelib as cl

#: The small, fast recipe every case starts from (ci-sized notebooks, a PCA encoder).
BASE = {
    "run_name": "audit",
    "seed": 0,
    "device": "cpu",
    "label_key": "cell_type",
    "metadata_keys": ["cell_type"],
    "model": "pca",
    "model_options": {"n_comps": 10},
    "notebooks": {
        "02_sae_scale_sweep": {
            "n_concepts": [20],
            "k": [2],
            "epochs": 5,
            "batch_size": 256,
            "selected_expansion": 2,
            "k_sweep": [],
            "min_r2": None,
        },
        "03_interpret_concepts": {
            "max_concepts": 4,
            "n_prototypes": 3,
            "n_counterfactuals": 2,
            "permutations": 20,
            "deletion_steps": 5,
            "deg_max_cells": 100,
            "null_units": 4,
        },
        "04_stability": {
            "stability_dataset": None,
            "stability_seeds": [0, 1, 2],
            "split_seeds": [0],
            "stability_epochs": 5,
            "n_pairs_shown": 1,
            "attribution_options": {"n_prototypes": 3, "n_counterfactuals": 2},
        },
        "05_downstream_probes": {"min_cells_per_class": 30, "phase_min_cells_per_class": 10, "n_markers": 10},
        "07_claims": {"min_cells_per_class": 30},
    },
}


@dataclass
class Case:
    """One bad input or fault: how to provoke it, and the message that names it."""

    group: str
    name: str
    run: Callable[[Path], tuple[int, str]]
    expect: str  # regular expression (case-insensitive) the output must match
    should_fail: bool = True


@dataclass
class Env:
    """Where the cases run: the checkout under test, the shared data and the prepared run."""

    repo: Path
    work: Path
    data: Path
    prepared: Path | None = None


ENV: Env


def _python(*args: str, cwd: Path | None = None, timeout: int = 600) -> tuple[int, str]:
    """Run Python of this environment on the checkout under test; (exit status, stdout + stderr)."""
    env = {**os.environ, "PYTHONPATH": str(ENV.repo)}
    try:
        out = subprocess.run(
            [sys.executable, *args],
            cwd=cwd or ENV.repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as err:
        return 124, f"timed out after {err.timeout} s"
    return out.returncode, out.stdout + out.stderr


def _params(path: Path, edit: Callable[[dict], None] | None = None, *, run_dir: Path | None = None) -> Path:
    """Write :data:`BASE` (after ``edit``) with the audit dataset and a run directory of its own."""
    params = yaml.safe_load(yaml.safe_dump(BASE))
    params["dataset"] = str(ENV.data / "cells.h5ad")
    params["run_dir"] = str(run_dir or path.with_suffix(""))
    if edit is not None:
        edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _cli(params: Path, *extra: str) -> tuple[int, str]:
    return _python("-m", "corelib", "run", str(params), "--no-progress", *extra)


def _recipe(
    edit: Callable[[dict], None] | None = None, *, text: str | None = None, only: tuple[str, ...] = ()
) -> Callable[[Path], tuple[int, str]]:
    """A case that runs the recipe (edited, or given as raw text): every notebook, or ``only`` these.

    A bad value should stop the run before any notebook starts: a run still going after :data:`PATIENCE`
    seconds took it (``silent``), and one that stops only after a notebook ran says so (``late``).
    """

    def run(tmp: Path) -> tuple[int, str]:
        path = tmp / "p.yaml"
        if text is not None:
            path.write_text(text)
        else:
            _params(path, edit)
        if only:
            code, out = _cli(path, "--only", *only)
            return code, out + _notebook_text(path.with_suffix("")) + _late(path.with_suffix(""), code)
        proc = _start(path)
        try:
            out, _ = proc.communicate(timeout=PATIENCE)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            return 124, out + f"\nstill running after {PATIENCE} s: the value was taken"
        return proc.returncode, out + _late(path.with_suffix(""), proc.returncode)

    return run


def _late(run_dir: Path, code: int) -> str:
    """A note when a failed run got into a notebook (finished or failed) instead of stopping before any."""
    started = sorted(run_dir.glob("*/[0-9][0-9]_*.ipynb"))
    return f"\nlate: in or after {started[-1].stem}" if started and code else ""


def _notebook_text(run_dir: Path, books: str = "*/[0-9][0-9]_*.ipynb") -> str:
    """What the executed notebooks printed (warnings and notes a user reads there, not on the terminal)."""
    import nbformat

    texts = []
    for book in sorted(run_dir.glob(books)):
        for cell in nbformat.read(book, as_version=4).cells:
            texts += [o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream"]
    return "\n" + "".join(texts)


#: Seconds a run with a bad value may go on before the case counts it as taken.
PATIENCE = 100

#: Data cases run notebook 01 only: the data are checked before it, or by it.
ONLY_01 = ("01_embed",)


def _set(*keys_value: object) -> Callable[[dict], None]:
    """An edit setting a nested key: ``_set("notebooks", "03_interpret_concepts", "n_prototypes", "3")``."""
    *keys, last, value = keys_value

    def edit(params: dict) -> None:
        node = params
        for key in keys:
            node = node.setdefault(key, {})
        node[last] = value

    return edit


def _dataset(name: str, **extra: object) -> Callable[[dict], None]:
    def edit(params: dict) -> None:
        params["dataset"] = str(ENV.data / name)
        params.update(extra)

    return edit


def _api(code: str) -> Callable[[Path], tuple[int, str]]:
    """A case that runs a few lines of the README's API (``cl`` imported, ``DATA`` the audit data folder)."""
    return lambda tmp: _python("-c", f"import corelib as cl\nDATA = {str(ENV.data)!r}\n{code}")


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------
def make_data(folder: Path) -> None:
    """The audit's h5ad files: 600 pbmc3k cells as they are, and spoiled copies."""
    folder.mkdir(parents=True, exist_ok=True)
    base = cl.datasets.load_dataset("pbmc3k")
    base = base[np.random.default_rng(0).choice(base.n_obs, 600, replace=False)].copy()
    base.obs = base.obs[["cell_type"]].copy()
    base.uns = {}
    base.write_h5ad(folder / "cells.h5ad")

    def spoiled(name: str, change: Callable) -> None:
        a = base.copy()
        change(a)
        a.write_h5ad(folder / name)

    def zero_cells(a):
        x = a.X.tolil()
        x[:100] = 0
        a.X = x.tocsr()

    def negative(a):
        a.X = a.X.copy()
        a.X.data[:10] = -1

    def nan(a):
        a.X = a.X.copy()
        a.X.data[:10] = np.nan

    def lognorm(a):
        a.X = sp.csr_matrix(np.log1p(a.X.toarray() / 3))

    def ensembl(a):
        a.var_names = [f"ENSG{i:011d}" for i in range(a.n_vars)]

    def duplicates(a):
        a.var["feature_name"] = [
            g if i % 2 else a.var_names[max(i - 1, 0)] for i, g in enumerate(a.var_names)
        ]
        a.var_names = [f"ENSG{i:011d}" for i in range(a.n_vars)]

    def one_assay(a):
        a.obs["assay"] = "10x 3' v1"

    def mouse(a):
        a.var_names = [g.capitalize() for g in a.var_names]

    def few(a):
        a._inplace_subset_obs(np.arange(30))

    for name, change in {
        "zero_cells.h5ad": zero_cells,
        "negative.h5ad": negative,
        "nan.h5ad": nan,
        "lognorm.h5ad": lognorm,
        "ensembl.h5ad": ensembl,
        "duplicates.h5ad": duplicates,
        "one_assay.h5ad": one_assay,
        "mouse.h5ad": mouse,
        "few.h5ad": few,
    }.items():
        spoiled(name, change)
    raw = (folder / "cells.h5ad").read_bytes()
    (folder / "truncated.h5ad").write_bytes(raw[: len(raw) // 2])
    (folder / "cells.csv").write_text("gene,cell1\nCD3E,1\n")


# ----------------------------------------------------------------------------------------------------------
# The prepared run (notebooks 01-03), damaged one output at a time
# ----------------------------------------------------------------------------------------------------------
def prepare(work: Path) -> Path:
    """Run notebooks 01-03 once on the audit data; the run directory."""
    params = _params(work / "prepared.yaml")
    code, out = _cli(params, "--only", "01_embed", "02_sae_scale_sweep", "03_interpret_concepts")
    if code != 0:
        raise RuntimeError(f"the prepared run failed:\n{out[-3000:]}")
    return params.with_suffix("")


@contextlib.contextmanager
def _damaged(relative: str, damage: Callable[[bytes], bytes]) -> Iterator[Path]:
    """Damage one file of the prepared run for the block, then put it back as it was."""
    path = ENV.prepared / relative
    original = path.read_bytes()
    path.write_bytes(damage(original))
    try:
        yield path
    finally:
        path.write_bytes(original)
        os.utime(path)


def _rerun_after(relative: str, damage: Callable[[bytes], bytes], notebook: str, *extra: str) -> Callable:
    def run(tmp: Path) -> tuple[int, str]:
        with _damaged(relative, damage):
            return _cli(ENV.prepared.with_suffix(".yaml"), "--only", notebook, *extra)

    return run


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _cut_line(data: bytes) -> bytes:
    return data[: data.rindex(b"\n", 0, len(data) - 1) + 5]


def _swap_sae(tmp: Path) -> tuple[int, str]:
    """The selected SAE's weights replaced by another SAE's of the same shape (seed 1 of the stability step)."""
    sae = next((ENV.prepared / "02_sae").glob("c20_k2_s0"))
    weights = sae / "sae.safetensors"
    original = weights.read_bytes()
    import torch
    from safetensors.torch import load_file, save_file

    tensors = {k: torch.flipud(v).contiguous() for k, v in load_file(weights).items()}
    save_file(tensors, weights)
    try:
        return _cli(ENV.prepared.with_suffix(".yaml"), "--only", "03_interpret_concepts")
    finally:
        weights.write_bytes(original)


def _edit_term(data: bytes) -> bytes:
    text = data.decode()
    first = re.search(r"\n[^,\n]*,([^,\n]+),", text)
    return (
        (text[: first.start(1)] + "Edited By Hand" + text[first.end(1) :]).encode() if first else data + b"x"
    )


#: Damaged outputs of the prepared run: case, file, damage, and the message that names it.
DAMAGES = [
    ("SAE weights truncated", "02_sae/c20_k2_s0/sae.safetensors", _half, "c20_k2_s0 is not the content"),
    (
        "selected.json edited",
        "02_sae/selected.json",
        lambda d: d.replace(b'"c20', b'"c21'),
        "selected.json is not",
    ),
    ("provenance record truncated", "02_sae/c20_k2_s0.provenance.json", _half, "provenance.json is damaged"),
    ("adata.h5ad truncated", "01_embed/adata.h5ad", _half, "adata.h5ad is not the content"),
    ("attribution .npz truncated", "03_interpret/attribution_concepts.npz", _half, "concepts.npz is not the"),
    (
        "deletion_curves.csv cut mid-line",
        "03_interpret/deletion_curves.csv",
        _cut_line,
        "curves.csv is not the",
    ),
    (
        "GSEA term edited by hand",
        "03_interpret/gsea_concepts.csv",
        _edit_term,
        "gsea_concepts.csv is not the",
    ),
]


def _overwrite_recomputes(tmp: Path) -> tuple[int, str]:
    with _damaged("03_interpret/attribution_concepts.npz", _half):
        code, out = _cli(ENV.prepared.with_suffix(".yaml"), "--only", "03_interpret_concepts", "--overwrite")
    return code, out + ("\nrecomputed" if code == 0 else "")


def _hand_run(tmp: Path) -> tuple[int, str]:
    """papermill on notebook 02 with only run_dir, as a user reruns one notebook by hand."""
    out = tmp / "02.ipynb"
    code, text = _python(
        "-m",
        "papermill",
        str(ENV.repo / "notebooks" / "02_sae_scale_sweep.ipynb"),
        str(out),
        "-p",
        "run_dir",
        str(ENV.prepared),
        "--cwd",
        str(ENV.repo),
    )
    return code, text + (_notebook_text(tmp, out.name) if out.exists() else "")


def _stability_null(tmp: Path) -> tuple[int, str]:
    """Notebook 04 with stability_dataset: null (the README's advice for non-PBMC data), then 05."""
    code, out = _cli(ENV.prepared.with_suffix(".yaml"), "--only", "04_stability", "05_downstream_probes")
    return code, out + _notebook_text(ENV.prepared, "notebooks/0[45]_*.ipynb")


# ----------------------------------------------------------------------------------------------------------
# Faults of the process and the file system
# ----------------------------------------------------------------------------------------------------------
def _start(params: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ENV.repo)}
    return subprocess.Popen(
        [sys.executable, "-m", "corelib", "run", str(params), "--no-progress", *extra],
        cwd=ENV.repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)


def _two_runs(tmp: Path) -> tuple[int, str]:
    params = _params(tmp / "p.yaml")
    first = _start(params, "--only", "01_embed", "02_sae_scale_sweep")
    _wait_for(params.with_suffix("") / "failed" / "01_embed.ipynb", first)
    code, out = _cli(params, "--only", "01_embed")
    first.kill()
    first.communicate()
    return code, out


def _kernel_files() -> set[Path]:
    from jupyter_core.paths import jupyter_runtime_dir

    return set(Path(jupyter_runtime_dir()).glob("kernel-*.json"))


def _sigterm(tmp: Path) -> tuple[int, str]:
    params = _params(tmp / "p.yaml")
    before = _kernel_files()
    proc = _start(params, "--only", "01_embed", "02_sae_scale_sweep")
    _wait_for(params.with_suffix("") / "failed" / "01_embed.ipynb", proc)
    time.sleep(3)  # the kernel is up and running a cell
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    attempts = params.with_suffix("") / "attempts.jsonl"
    recorded = attempts.exists() and "interrupted" in attempts.read_text()
    left = _kernel_files() - before
    out += f"\nattempt recorded: {recorded}; kernel files left: {len(left)}"
    ok = proc.returncode == 143 and recorded and not left
    return proc.returncode, out + ("\nSIGTERM handled" if ok else "")


@contextlib.contextmanager
def _tmpfs(options: str) -> Iterator[Path | None]:
    """A small tmpfs mounted for the block (None when this process may not mount)."""
    point = Path(tempfile.mkdtemp(prefix="audit-fs-"))
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)]).returncode
    ):
        yield None
        return
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)])


def _disk_full(tmp: Path) -> tuple[int, str]:
    with _tmpfs("size=600k") as fs:
        if fs is None:
            return -1, "not run: mounting a tmpfs needs root"
        return _cli(_params(tmp / "p.yaml", run_dir=fs / "run"), "--only", "01_embed")


def _read_only(tmp: Path) -> tuple[int, str]:
    with _tmpfs("size=1m,ro") as fs:
        if fs is None:
            return -1, "not run: mounting a tmpfs needs root"
        return _cli(_params(tmp / "p.yaml", run_dir=fs / "run"), "--only", "01_embed")


# ----------------------------------------------------------------------------------------------------------
def cases() -> list[Case]:
    nb03, nb02 = "03_interpret_concepts", "02_sae_scale_sweep"
    return [
        # params
        Case("params", "empty params file", _recipe(text="# nothing yet\n"), "params file .* is empty"),
        Case("params", "YAML syntax error", _recipe(text="dataset: [pbmc3k\n"), r"line \d+, column \d+"),
        Case("params", "params file missing", lambda t: _cli(t / "none.yaml"), "not found"),
        Case("params", "top-level typo (sed)", _recipe(_set("sed", 1)), "unknown top-level keys.*sed"),
        Case(
            "params",
            "notebook param typo",
            _recipe(_set("notebooks", nb03, "n_protoypes", 3)),
            "n_protoypes",
        ),
        Case(
            "params",
            "n_prototypes: '3'",
            _recipe(_set("notebooks", nb03, "n_prototypes", "3")),
            "n_prototypes.*expected.*int",
        ),
        Case(
            "params",
            "metadata_keys: a string",
            _recipe(_set("metadata_keys", "cell_type")),
            "metadata_keys.*expected.*list",
        ),
        Case(
            "params",
            "n_concepts: a scalar",
            _recipe(_set("notebooks", nb02, "n_concepts", 20)),
            "n_concepts.*expected.*list",
        ),
        Case(
            "params",
            "model_options n_comps: a string",
            _recipe(_set("model_options", "n_comps", "10")),
            "n_comps.*expected.*int",
        ),
        Case(
            "params",
            "k >= n_concepts",
            _recipe(_set("notebooks", nb02, "k", [20])),
            "k.*n_concepts|n_concepts.*k",
        ),
        Case("params", "k <= 0", _recipe(_set("notebooks", nb02, "k", [0])), r"k \(?0|k 0|k must"),
        Case(
            "params",
            "n_concepts and k unpaired",
            _recipe(_set("notebooks", nb02, "k", [2, 4])),
            "paired|same length",
        ),
        Case("params", "unknown model", _recipe(_set("model", "scvii")), "scvii"),
        Case("params", "device: gpu", _recipe(_set("device", "gpu")), "device.*gpu|gpu.*device"),
        # data
        Case(
            "data",
            "dataset path missing",
            _recipe(_dataset("none.h5ad"), only=ONLY_01),
            "no such file.*none.h5ad",
        ),
        Case("data", "dataset is a CSV", _recipe(_dataset("cells.csv"), only=ONLY_01), r"cells.csv.*h5ad"),
        Case(
            "data",
            "truncated dataset .h5ad",
            _recipe(_dataset("truncated.h5ad"), only=ONLY_01),
            "truncated.h5ad.*truncated",
        ),
        Case("data", "Ensembl ids as var_names", _recipe(_dataset("ensembl.h5ad"), only=ONLY_01), "ensembl"),
        Case("data", "negative values", _recipe(_dataset("negative.h5ad"), only=ONLY_01), "negative"),
        Case("data", "NaN values", _recipe(_dataset("nan.h5ad"), only=ONLY_01), "nan|finite"),
        Case("data", "log-normalised, not counts", _recipe(_dataset("lognorm.h5ad"), only=ONLY_01), "counts"),
        Case(
            "data",
            "100 all-zero cells",
            _recipe(_dataset("zero_cells.h5ad"), only=ONLY_01),
            "100 of 600 cells have no counts",
        ),
        Case(
            "data",
            "... dropped under drop_empty_cells",
            _recipe(_dataset("zero_cells.h5ad", drop_empty_cells=True), only=ONLY_01),
            "dropped 100",
            False,
        ),
        Case(
            "data",
            "label_key not in obs",
            _recipe(_set("label_key", "celltype")),
            "celltype.*not in adata.obs",
        ),
        Case(
            "data",
            "metadata key with one value",
            _recipe(
                _dataset("one_assay.h5ad", metadata_keys=["cell_type", "assay"]),
                only=(*ONLY_01, "02_sae_scale_sweep"),
            ),
            "assay",
            False,
        ),
        Case(
            "data",
            "duplicate gene symbols",
            _recipe(_dataset("duplicates.h5ad", gene_symbols_key="feature_name"), only=ONLY_01),
            "repeat a symbol",
            False,
        ),
        Case(
            "data",
            "... summed under duplicate_symbols: sum",
            _recipe(
                _dataset("duplicates.h5ad", gene_symbols_key="feature_name", duplicate_symbols="sum"),
                only=ONLY_01,
            ),
            "summed|sum",
            False,
        ),
        Case("data", "30 cells", _recipe(_dataset("few.h5ad")), "30 cells"),
        Case(
            "data",
            "stability_dataset missing",
            lambda t: _cli(
                _params(t / "p.yaml", _set("notebooks", "04_stability", "stability_dataset", "none.h5ad")),
                "--only",
                "01_embed",
                "04_stability",
            ),
            "stability_dataset.*none.h5ad",
        ),
        Case(
            "data",
            "mouse symbols, organism human",
            _api(
                "import anndata as ad\na = ad.read_h5ad(DATA + '/mouse.h5ad')\ncl.tl.probe_labels.cell_cycle_phase(a, missing='skip')"
            ),
            "organism|mouse",
        ),
        Case(
            "data",
            "cell-cycle phase from 3 of 97 genes",
            _api(
                "a = cl.datasets.load_dataset('pbmc68k_reduced')\nt, n = cl.tl.probe_labels.cell_cycle_phase(a, missing='skip')\nprint(n)"
            ),
            "skipped.*minimum|at least",
        ),
        Case(
            "data",
            "no gene-set overlap",
            _api(
                "import anndata as ad\na = ad.read_h5ad(DATA + '/ensembl.h5ad')\ncl.datasets.load_gene_sets('GO_Biological_Process_2023', genes=list(a.var_names))"
            ),
            "no gene set|overlap",
        ),
        # outputs of a finished run, damaged one at a time, then notebook 03 rerun on them
        *(
            Case("outputs", name, _rerun_after(file, damage, nb03), message)
            for name, file, damage, message in DAMAGES
        ),
        Case("outputs", "SAE weights swapped", _swap_sae, "c20_k2_s0.*not the content"),
        Case(
            "outputs", "--overwrite recomputes a damaged output", _overwrite_recomputes, "recomputed", False
        ),
        Case(
            "outputs", "notebook 02 run by hand (only run_dir)", _hand_run, "taken from .*params.yaml", False
        ),
        Case("outputs", "stability_dataset: null, then 05", _stability_null, "skipp", False),
        # the process and the file system
        Case("faults", "two runs on one run directory", _two_runs, "in use by pid"),
        Case("faults", "SIGTERM of the runner", _sigterm, "SIGTERM handled"),
        Case("faults", "disk full", _disk_full, "no space left on device"),
        Case("faults", "read-only run directory", _read_only, "cannot write to|read-only"),
    ]


def judge(case: Case, code: int, out: str) -> str:
    """``clear``, ``late``, ``handled``, ``silent``, ``unclear`` or ``not run`` (see the module docstring)."""
    if code == -1:
        return "not run"
    named = re.search(case.expect, out, flags=re.IGNORECASE | re.DOTALL) is not None
    raw = "Traceback (most recent call last)" in out
    if not case.should_fail:
        return "handled" if code == 0 and named else ("unclear" if code else "silent")
    if code in (0, 124):
        return (
            "clear" if code == 0 and named and case.group == "data" else "silent"
        )  # data: a warning may go on
    if not named or raw:
        return "unclear"
    return "late" if "\nlate: in or after" in out else "clear"


def _message(case: Case, out: str) -> str:
    """The line a user reads: the error (or interruption), else the line naming the problem, else the last."""
    lines = [x for x in out.strip().splitlines() if x.strip() and "Warning: --logging" not in x] or [""]
    at = next((i for i, x in enumerate(lines) if re.match(r"(error|interrupted):", x)), None)
    first = None if at is None else lines[at] + (f" {lines[at + 1]}" if lines[at].endswith(":") else "")
    named = next((x for x in lines if re.search(case.expect, x, re.IGNORECASE)), None)
    return re.sub(r"/tmp/audit-\w+/", "", (first or named or lines[-1]).strip())[:120].replace("|", "/")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repo", type=Path, default=Path(__file__).resolve().parents[1], help="checkout under test"
    )
    parser.add_argument("--only", nargs="+", help="groups or case names to run")
    args = parser.parse_args()
    global ENV
    work = Path(tempfile.mkdtemp(prefix="audit-"))
    ENV = Env(repo=args.repo.resolve(), work=work, data=work / "data")
    make_data(ENV.data)
    chosen = [c for c in cases() if not args.only or c.group in args.only or c.name in args.only]
    if any(c.group == "outputs" for c in chosen):
        ENV.prepared = prepare(work)
    print(f"Checkout: {ENV.repo} ({_commit(ENV.repo)})\n")
    print("| group | case | exit | message | verdict |\n|---|---|---|---|---|")
    tally: dict[str, int] = {}
    for case in chosen:
        tmp = Path(tempfile.mkdtemp(dir=work))
        clock = time.perf_counter()
        code, out = case.run(tmp)
        verdict = judge(case, code, out)
        tally[verdict] = tally.get(verdict, 0) + 1
        print(f"| {case.group} | {case.name} | {code} | {_message(case, out)} | **{verdict}** |", flush=True)
        if os.environ.get("AUDIT_VERBOSE"):
            print(out[-2000:], f"({time.perf_counter() - clock:.0f} s)", file=sys.stderr)
    print("\n" + ", ".join(f"{v}: {n}" for v, n in sorted(tally.items())) + f" of {len(chosen)} cases")
    shutil.rmtree(work, ignore_errors=True)


def _commit(repo: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), "log", "-1", "--format=%h %s"], capture_output=True, text=True
    )
    return out.stdout.strip()[:70]


if __name__ == "__main__":
    main()
