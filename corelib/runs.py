"""The run directory: the only channel between notebooks, and the one place that knows its layout.

A run directory (``runs/<run_name>/`` by default) holds everything one params file produced::

    runs/<run_name>/
        params.yaml                      the resolved params file of the latest notebook run that succeeded
        attempts.jsonl                   one JSON object per notebook attempt (append-only): notebook, status
                                         (ok | failed | interrupted), start time, seconds, parameters, error
        01_embed/
            adata.h5ad                   cells: counts in X, obsm["X_<model>"], obsm["X_umap"], uns["embed"]
            encoder/                     cached encoder (trained scVI, fitted PCA): safetensors + JSON
            summary.json                 what notebook 01 did (dataset, model, genes used/missing, timing)
        02_sae/
            <sae_name>/                  one trained SAE: sae.safetensors, cfg.json, history.csv, metrics.json
            sweep.csv                    one row per trained SAE (the paper's Table 3)
            selected.json                {"sae": <sae_name>}: the SAE that notebooks 03-06 use
        03_interpret/
            metadata_concepts.csv        per concept x metadata column: top label, fraction, call
            metadata_neurons.csv         the same for neurons (embedding dimensions)
            attribution_concepts.npz     gene x concept attribution scores (+ genes, ids, status)
            attribution_neurons.npz      gene x neuron attribution scores
            attribution_status.csv       per unit: attributed or skipped, and why
            deletion_curves.csv          deletion curves, attribution vs DEG order (appendix C)
            gsea_concepts.csv            per concept: top term, NES, p-values, annotation strength
            gsea_neurons.csv             the same for neurons
        04_stability/                    tables of notebook 04 (matched cosines, R^2 across datasets, seeds)
        05_probes/                       tables of notebook 05 (accuracies, confusion matrices, coefficients)
        06_explorer/
            labels.jsonl                 expert answers, one JSON object per submit (append-only)
        atlas/index.html                 the static concept atlas
        notebooks/<NN_name>.ipynb        executed notebooks: the latest successful run of each
        html/<NN_name>.html              their HTML rendering (self-contained)
        failed/<NN_name>.ipynb           a notebook's latest attempt when it failed or was interrupted (it is
        failed/<NN_name>.html            written here as it runs; a success moves it to notebooks/ and html/)
        index.html                       the report: every notebook's latest status, its last good HTML, its
                                         failed attempt, and the atlas

Every write goes through :func:`atomic_write` (write to a temporary file, fsync, then rename), so a crash
never leaves a half-written file behind (:func:`open_run` removes the temporary files of killed writers),
and :meth:`RunDir.done` tells a notebook whether a step can be reused.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import pandas as pd

#: Documented layout: key -> path relative to the run directory. ``{name}`` is filled by :meth:`RunDir.path`.
LAYOUT: dict[str, str] = {
    "params": "params.yaml",
    "embedded": "01_embed/adata.h5ad",
    "encoder": "01_embed/encoder",
    "embed_summary": "01_embed/summary.json",
    "sae": "02_sae/{name}",
    "sae_sweep": "02_sae/sweep.csv",
    "sae_selected": "02_sae/selected.json",
    "metadata_concepts": "03_interpret/metadata_concepts.csv",
    "metadata_neurons": "03_interpret/metadata_neurons.csv",
    "attribution_concepts": "03_interpret/attribution_concepts.npz",
    "attribution_neurons": "03_interpret/attribution_neurons.npz",
    "attribution_status": "03_interpret/attribution_status.csv",
    "deletion_curves": "03_interpret/deletion_curves.csv",
    "gsea_concepts": "03_interpret/gsea_concepts.csv",
    "gsea_neurons": "03_interpret/gsea_neurons.csv",
    "interpret": "03_interpret/{name}",
    "stability": "04_stability/{name}",
    "probes": "05_probes/{name}",
    "labels": "06_explorer/labels.jsonl",
    "explorer": "06_explorer/{name}",
    "atlas": "atlas/index.html",
    "notebook": "notebooks/{name}.ipynb",
    "html": "html/{name}.html",
    "failed_notebook": "failed/{name}.ipynb",
    "failed_html": "failed/{name}.html",
    "attempts": "attempts.jsonl",
    "report": "index.html",
}

DEFAULT_ROOT = Path("runs")

#: An output of :meth:`RunDir.cached`: a layout key, ``(key, name)`` or ``(key, name, index)``.
Output = str | tuple[str, str | None] | tuple[str, str | None, bool]

#: Name of a temporary file of :func:`atomic_path`: ``.<final name>.<writer pid>-<random>.tmp<suffix>``.
TEMP_NAME = re.compile(r"^\..+\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp(\.[^.]+)?$")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file next to ``path`` and rename it onto ``path`` only if the block succeeds.

    Parameters
    ----------
    path
        Final destination. Parent folders are created.
    mode
        ``"w"`` (text) or ``"wb"`` (binary).

    Yields
    ------
    The open temporary file; the final file gets the permissions of a plain ``open`` (``0o666`` less the
    umask), and its data reach the disk (fsync) before the rename.
    """
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        yield fh


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path for writers that want a file name (``AnnData.write_h5ad``, ``np.savez``).

    The temporary file (see :data:`TEMP_NAME`) keeps ``path``'s suffix so that libraries choosing a format
    by suffix behave. When the block succeeds the file gets the permissions of a plain ``open`` (``0o666``
    less the umask; safetensors, for one, writes ``0o600``), is flushed to disk (fsync) and renamed onto
    ``path``; when the block fails it is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    mode = stat.S_IMODE(tmp.stat().st_mode)  # what open() gives under the current umask
    try:
        yield tmp
        os.chmod(tmp, mode)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temps(root: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that killed writers left under ``root``.

    A temporary file of :func:`atomic_path` carries its writer's process id (:data:`TEMP_NAME`); it is
    stale when no process with that id runs on this machine. A file of a live writer (another notebook or
    pipeline writing into the same run directory) is left alone.

    Returns
    -------
    The files removed.
    """
    stale = [
        p
        for p in Path(root).rglob(".*.tmp*")
        if (m := TEMP_NAME.match(p.name)) and p.is_file() and not _process_exists(int(m["pid"]))
    ]
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return stale


def _process_exists(pid: int) -> bool:
    """Whether a process with this id runs here (POSIX signal 0 only checks; elsewhere assume it does)."""
    if os.name != "posix":
        return True  # os.kill would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        pass
    return True


@dataclass(frozen=True)
class RunDir:
    """A run directory. Create with :func:`open_run`.

    Attributes
    ----------
    root
        The directory.
    overwrite
        When True, :meth:`done` always answers False so that every step is recomputed.
    """

    root: Path
    overwrite: bool = False

    def path(self, key: str, name: str | None = None) -> Path:
        """Absolute path of a layout entry; parent folders are created.

        Parameters
        ----------
        key
            A key of :data:`LAYOUT`.
        name
            Fills ``{name}`` for templated keys (``sae``, ``notebook``, ...).
        """
        if key not in LAYOUT:
            raise KeyError(f"Unknown run-directory entry {key!r}; known entries: {', '.join(LAYOUT)}.")
        template = LAYOUT[key]
        if "{name}" in template:
            if not name:
                raise ValueError(f"Run-directory entry {key!r} needs a name (template {template!r}).")
            template = template.format(name=name)
        elif name is not None:
            raise ValueError(f"Run-directory entry {key!r} takes no name.")
        out = self.root / template
        out.parent.mkdir(parents=True, exist_ok=True)
        return out

    def done(self, key: str, name: str | None = None) -> bool:
        """Whether an entry exists and may be reused (always False when ``overwrite`` is set)."""
        return not self.overwrite and self.path(key, name).exists()

    def require(self, key: str, name: str | None = None) -> Path:
        """Path of an entry that an earlier notebook must have written; a clear error when it is missing."""
        p = self.path(key, name)
        if not p.exists():
            producer = LAYOUT[key].split("/")[0]
            raise FileNotFoundError(
                f"{p} does not exist. It is written by notebook {producer!r}: run the earlier notebooks first "
                f"(python -m corelib run <params.yaml>) with the same run_dir ({self.root})."
            )
        return p

    def cached(
        self, compute: Callable[[], Any], *outputs: Output, load: Callable[[Path], Any] | None = None
    ) -> Any:
        """Reuse a step's outputs when they all exist (and ``overwrite`` is off), else compute and write them.

        Parameters
        ----------
        compute
            Returns one object per output (a tuple when there are several): a DataFrame (written as CSV) or
            an object with a ``save(path)`` method (e.g. :class:`corelib.attribution.Attribution`).
        *outputs
            Layout entries: a key, ``(key, name)`` for templated keys (``("interpret", "deg_concepts.csv")``),
            or ``(key, name, index)`` with ``index=False`` for a table whose row index carries no meaning
            (default True: the index is written and read back).
        load
            Reads back the outputs that are not CSV tables (e.g. ``Attribution.load``).

        Returns
        -------
        The object(s), computed or read back.
        """
        specs = [(o, None, True) if isinstance(o, str) else (*o, True)[:3] for o in outputs]
        if all(self.done(key, name) for key, name, _ in specs):
            loaded = [self._read_output(key, name, index, load) for key, name, index in specs]
            return loaded[0] if len(loaded) == 1 else tuple(loaded)
        result = compute()
        for obj, (key, name, index) in zip((result,) if len(specs) == 1 else result, specs, strict=True):
            if isinstance(obj, pd.DataFrame):
                self.write_table(key, obj, name, index=index)
            else:
                obj.save(self.path(key, name))
        return result

    def _read_output(
        self, key: str, name: str | None, index: bool, load: Callable[[Path], Any] | None
    ) -> Any:
        """One output of :meth:`cached`: a CSV table, or ``load(path)``."""
        path = self.path(key, name)
        if path.suffix == ".csv":
            return self.read_table(key, name, index_col=0 if index else None)
        if load is None:
            raise ValueError(
                f"{path} is not a CSV table: pass load= (e.g. Attribution.load) to read it back."
            )
        return load(path)

    # Small typed helpers, so notebooks never open files by hand.
    def write_json(self, key: str, obj: Any, name: str | None = None) -> Path:
        """Write ``obj`` as indented JSON, atomically."""
        p = self.path(key, name)
        with atomic_write(p) as fh:
            json.dump(obj, fh, indent=2, default=_json_default)
        return p

    def read_json(self, key: str, name: str | None = None) -> Any:
        """Read a JSON entry written by :meth:`write_json`."""
        return json.loads(self.require(key, name).read_text())

    def write_table(self, key: str, df: pd.DataFrame, name: str | None = None, index: bool = True) -> Path:
        """Write a DataFrame as CSV, atomically."""
        p = self.path(key, name)
        with atomic_write(p) as fh:
            df.to_csv(fh, index=index)
        return p

    def read_table(self, key: str, name: str | None = None, index_col: int | None = 0) -> pd.DataFrame:
        """Read a CSV entry written by :meth:`write_table`."""
        return pd.read_csv(self.require(key, name), index_col=index_col)

    def write_h5ad(self, key: str, adata: ad.AnnData, name: str | None = None) -> Path:
        """Write an AnnData (compressed), atomically."""
        p = self.path(key, name)
        with atomic_path(p) as tmp:
            adata.write_h5ad(tmp, compression="gzip")
        return p

    def read_h5ad(self, key: str, name: str | None = None) -> ad.AnnData:
        """Read an AnnData entry written by :meth:`write_h5ad`."""
        return ad.read_h5ad(self.require(key, name))


def _json_default(obj: Any) -> Any:
    """Make numpy scalars, arrays and paths JSON-serialisable."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return str(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")


def open_run(
    run_dir: str | os.PathLike | None = None, run_name: str = "demo", overwrite: bool = False
) -> RunDir:
    """Open (and create) a run directory.

    Parameters
    ----------
    run_dir
        Explicit folder; defaults to ``runs/<run_name>`` relative to the working directory.
    run_name
        Name used for the default folder.
    overwrite
        Recompute finished steps instead of reusing them.

    Temporary files that killed writers left in it are removed (:func:`remove_stale_temps`).
    """
    root = Path(run_dir) if run_dir else DEFAULT_ROOT / run_name
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(root)
    return RunDir(root=root.resolve(), overwrite=bool(overwrite))
