"""The run directory: every file of a run is a named key of :data:`LAYOUT`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from corelib._io import atomic_path, atomic_write, remove_stale_temps
from corelib.runs.cache import (
    DamagedOutputError,
    Known,
    Output,
    Provenance,
    StaleOutputError,
    cached,
    provenance_path,
    read_provenance,
    record_provenance,
    reusable,
    verify_content,
)
from corelib.runs.guards import RunDirError, check_writable, describe_os_error
from corelib.runs.registry import writer

#: Documented layout: key -> path relative to the run directory. ``{name}`` is filled by :meth:`RunDir.path`.
#: A step's outputs sit in its folder (:data:`corelib.runs.registry.STEPS`; tests/test_runs.py checks it).
LAYOUT: dict[str, str] = {
    "params": "params.yaml",
    "embedded": "01_embed/adata.h5ad",
    "encoder": "01_embed/encoder",
    "embed_summary": "01_embed/summary.json",
    # cells x dim float32 embedding written by corelib.encoders.embed(out=...) straight to disk (.npy: read
    # back with numpy.load(mmap_mode="r") without loading it); provenance beside it
    "embeddings": "01_embed/embeddings.npy",
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
    "gsea_terms": "03_interpret/gsea_terms_{name}.csv",
    "gsea_null": "03_interpret/gsea_null_{name}.csv",
    "deg": "03_interpret/deg_{name}.csv",
    "important_genes": "03_interpret/important_genes.csv",
    "top_genes": "03_interpret/top_genes_{name}.csv",
    "examples": "03_interpret/examples_concepts.csv",
    # notebook 03 section 7: ORA of the expression-signed scores, and the recovery of planted programs
    # (``cl.tl.recovery.recovery``, one row per annotation method and program; planted datasets only)
    "ora_concepts": "03_interpret/ora_concepts.csv",
    "recovery": "03_interpret/recovery.csv",
    # with a batch_key: corelib.tl.batch.batch_concepts' table of the selected SAE's concepts, its rule as columns
    # (corelib.runs.steps.batch_marks); the explorer and the atlas mark the concepts it calls associated
    "batch_marks": "03_interpret/batch_concepts.csv",
    "interpret": "03_interpret/{name}",
    "stability": "04_stability/{name}",
    "seeds_baselines": "04_stability/seeds_baselines.csv",
    # one row per match of a concept of this run's selected SAE (``concept``) with a concept of another SAE
    # (``matched_concept``, ``cosine``, ``comparison`` such as "seed 1"): the concept cards read it
    "matched_concepts": "04_stability/matched_concepts.csv",
    "cross_info": "04_stability/cross_info.json",
    "cross_matching": "04_stability/cross_matching.csv",
    "cross_pairs": "04_stability/cross_pairs.csv",
    # batch concepts (corelib.runs.steps.batch, issue 26): one SAE on both datasets of the cross-dataset part,
    # the dataset as batch. batch_scib: one row per embedding (uncorrected, batch concepts, random concepts,
    # seed <s>, cell-type concepts, Harmony; index "embedding") x scib's 8 metrics, "Batch correction",
    # "Bio conservation", "Total"; batch_concepts: corelib.tl.batch.batch_concepts' table; batch_umap: long
    # table of UMAP coordinates before/after suppression (embedding, dataset, cell_type, umap_1, umap_2);
    # batch_info: counts, the rule's threshold and null, the SAE's R^2
    "batch_sae": "04_stability/batch_sae",
    "batch_scib": "04_stability/batch_scib.csv",
    "batch_concepts": "04_stability/batch_concepts.csv",
    "batch_umap": "04_stability/batch_umap.csv",
    "batch_info": "04_stability/batch_info.json",
    "probes": "05_probes/{name}",
    "probe_summary": "05_probes/summary.csv",
    "probe_task_summary": "05_probes/{name}_summary.csv",
    "probe_per_seed": "05_probes/{name}_per_seed.csv",
    "probe_confusion": "05_probes/{name}_confusion.csv",
    "probe_top_units": "05_probes/{name}.csv",
    "claims_sae": "07_claims/sae/{name}",
    # long table claim, arm, replicate, value (corelib.tl.claims), one file per claim
    "claims_measurements": "07_claims/measurements_{name}.csv",
    # one row per claim: value, comparison, null, paper, verdict (corelib.tl.claims.evaluate_claims)
    "claims": "07_claims/claims.csv",
    "labels": "06_explorer/labels.jsonl",
    "explorer": "06_explorer/{name}",
    "study_key": "06_explorer/study_{name}_key.csv",
    "atlas": "atlas/index.html",
    "notebook": "notebooks/{name}.ipynb",
    "html": "html/{name}.html",
    "failed_notebook": "failed/{name}.ipynb",
    "failed_html": "failed/{name}.html",
    "attempts": "attempts.jsonl",
    "report": "index.html",
}


DEFAULT_ROOT = Path("runs")


@dataclass(frozen=True)
class RunDir:
    """A run directory. Create with :func:`open_run`.

    Attributes
    ----------
    root
        The directory.
    overwrite
        When True, outputs made from other inputs are recomputed and replaced instead of raising
        :class:`StaleOutputError` (see :meth:`cached`).
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
        out = self.locate(key, name)
        out.parent.mkdir(parents=True, exist_ok=True)
        return out

    def locate(self, key: str, name: str | None = None) -> Path:
        """Absolute path of a layout entry, creating nothing (to ask whether it exists)."""
        if key not in LAYOUT:
            raise KeyError(f"Unknown run-directory entry {key!r}; known entries: {', '.join(LAYOUT)}.")
        template = LAYOUT[key]
        if "{name}" in template:
            if not name:
                raise ValueError(f"Run-directory entry {key!r} needs a name (template {template!r}).")
            template = template.format(name=name)
        elif name is not None:
            raise ValueError(f"Run-directory entry {key!r} takes no name.")
        return self.root / template

    def forget(self, key: str, name: str | None = None) -> None:
        """Remove a file entry and its provenance record: an output an earlier run left that this run's
        parameters no longer make (a later step would otherwise read it as this run's)."""
        p = self.locate(key, name)
        for stale in (p, provenance_path(p)):
            stale.unlink(missing_ok=True)

    def require(self, key: str, name: str | None = None) -> Path:
        """Path of an entry that an earlier notebook must have written, its content checked against its record.

        Raises
        ------
        FileNotFoundError
            The entry is missing.
        DamagedOutputError
            Its content (or its record) changed since it was written (:func:`corelib.runs.cache.verify_content`).
        """
        p = self.locate(key, name)
        producer = writer(LAYOUT[key])
        if not p.exists():
            raise FileNotFoundError(
                f"{p} does not exist. It is written by {producer}: run the earlier steps first "
                f"(python -m corelib run <params.yaml>) with the same run_dir ({self.root})."
            )
        try:
            verify_content(p)
        except DamagedOutputError as err:
            raise DamagedOutputError(f"{err} It is written by {producer}.") from None
        return p

    def cached(
        self,
        compute: Callable[[], Any],
        *outputs: Output,
        inputs: Mapping[str, Any],
        load: Callable[[Path], Any] | None = None,
        save: Callable[[Any, Path], Any] | None = None,
    ) -> Any:
        """Reuse a step's outputs when they were made from ``inputs``, else compute, write and record them.

        Parameters
        ----------
        compute
            Returns one object per output (a tuple when there are several): a DataFrame (written as CSV) or
            an object with a ``save(path)`` method (e.g. :class:`corelib.tl.attribution.Attribution`).
        *outputs
            Layout entries: a key, ``(key, name)`` for templated keys (``("interpret", "deg_concepts.csv")``),
            or ``(key, name, index)`` with ``index=False`` for a table whose row index carries no meaning
            (default True: the index is written and read back).
        inputs
            What the outputs are made from (data, upstream objects or :meth:`fingerprint` of upstream
            outputs, parameters): see :func:`cached`. On a mismatch a :class:`StaleOutputError` names what
            changed, unless the run was opened with ``overwrite``.
        load
            Reads back the outputs that are not CSV tables (e.g. ``Attribution.load``).
        save
            Writes the outputs that are not DataFrames, ``save(obj, path)`` (default ``obj.save(path)``).

        Returns
        -------
        The object(s), computed or read back.
        """
        specs = {
            self.path(key, name): index
            for key, name, index in (
                (o, None, True) if isinstance(o, str) else (*o, True)[:3] for o in outputs
            )
        }

        def write(obj: Any, path: Path) -> None:
            if isinstance(obj, pd.DataFrame):
                with atomic_write(path) as fh:
                    obj.to_csv(fh, index=specs[path])
            elif save is not None:
                save(obj, path)
            else:
                obj.save(path)

        def read(path: Path) -> Any:
            if path.suffix == ".csv":
                return pd.read_csv(path, index_col=0 if specs[path] else None)
            if load is None:
                raise ValueError(
                    f"{path} is not a CSV table: pass load= (e.g. Attribution.load) to read it back."
                )
            return load(path)

        return cached(compute, list(specs), inputs, save=write, load=read, overwrite=self.overwrite)

    def fingerprint(self, key: str, name: str | None = None) -> Known:
        """The provenance of a finished entry, as the input of a later step (an upstream fingerprint)."""
        path = self.require(key, name)
        prov = read_provenance(path)
        if prov is None:
            raise StaleOutputError(
                f"{path} has no provenance record ({provenance_path(path).name}): it was written by an "
                "interrupted or older run. Rerun the notebook that writes it."
            )
        return Known(prov.fingerprint, f"{path.relative_to(self.root)} ({prov.fingerprint[:8]})")

    def reusable(self, key: str, name: str | None, inputs: Mapping[str, Any] | Provenance) -> bool:
        """Whether an entry exists and was made from ``inputs`` (see :func:`reusable`)."""
        return reusable([self.path(key, name)], inputs, overwrite=self.overwrite)

    def check_made_from(self, key: str, name: str | None = None, **upstream: Known) -> Path:
        """Require an entry and check that it was made from the given upstream entries as they are now.

        A notebook that reads an earlier notebook's output next to a newer upstream (an SAE retrained after
        the attribution was computed) would mix two runs: this stops it with the notebook to rerun.
        """
        path = self.require(key, name)
        prov = read_provenance(path)
        stale = [
            what
            for what, known in upstream.items()
            if prov is None or prov.inputs.get(what) != known.fingerprint
        ]
        if stale:
            producer = writer(LAYOUT[key])
            raise StaleOutputError(
                f"{path} was not made from the current {', '.join(stale)} "
                f"({', '.join(upstream[w].description for w in stale)}): rerun {producer} and the steps after "
                f"it (python -m corelib run <params> --only {producer.notebook if producer else '<notebook>'} ...)."
            )
        return path

    # Small typed helpers, so notebooks never open files by hand.
    def write_json(
        self, key: str, obj: Any, name: str | None = None, *, inputs: Mapping[str, Any] | None = None
    ) -> Path:
        """Write ``obj`` as indented JSON, atomically with its content checksum (and provenance, given ``inputs``)."""
        p = self.path(key, name)
        provenance_path(p).unlink(missing_ok=True)
        with atomic_write(p) as fh:
            json.dump(obj, fh, indent=2, default=_json_default)
        return self._recorded(p, inputs)

    def read_json(self, key: str, name: str | None = None) -> Any:
        """Read a JSON entry written by :meth:`write_json`."""
        return json.loads(self.require(key, name).read_text())

    def write_table(
        self,
        key: str,
        df: pd.DataFrame,
        name: str | None = None,
        index: bool = True,
        *,
        inputs: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write a DataFrame as CSV, atomically with its content checksum (and provenance, given ``inputs``)."""
        p = self.path(key, name)
        provenance_path(p).unlink(missing_ok=True)
        with atomic_write(p) as fh:
            df.to_csv(fh, index=index)
        return self._recorded(p, inputs)

    def read_table(self, key: str, name: str | None = None, index_col: int | None = 0) -> pd.DataFrame:
        """Read a CSV entry written by :meth:`write_table`."""
        return pd.read_csv(self.require(key, name), index_col=index_col)

    def write_h5ad(
        self, key: str, adata: ad.AnnData, name: str | None = None, *, inputs: Mapping[str, Any] | None = None
    ) -> Path:
        """Write an AnnData (compressed), atomically with its content checksum (and provenance, given ``inputs``)."""
        p = self.path(key, name)
        provenance_path(p).unlink(missing_ok=True)
        with atomic_path(p) as tmp:
            adata.write_h5ad(tmp, compression="gzip")
        return self._recorded(p, inputs)

    @staticmethod
    def _recorded(path: Path, inputs: Mapping[str, Any] | None) -> Path:
        """Record ``path``'s content checksum, and its provenance when ``inputs`` are given (the writers removed
        the old record first)."""
        record_provenance(path, inputs)
        return path

    def read_h5ad(self, key: str, name: str | None = None) -> ad.AnnData:
        """Read an AnnData entry written by :meth:`write_h5ad`."""
        return ad.read_h5ad(self.require(key, name))


def _json_default(obj: Any) -> Any:
    """Make numpy scalars, arrays and paths JSON-serialisable."""
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
        Recompute and replace outputs that were made from other inputs, instead of stopping with a
        :class:`StaleOutputError`; outputs made from the same inputs are still reused.

    Temporary files that killed writers left in it are removed (:func:`remove_stale_temps`).

    Raises
    ------
    corelib.runs.guards.RunDirError
        The folder cannot be created or written (a read-only file system, no permission).
    """
    root = Path(run_dir) if run_dir else DEFAULT_ROOT / run_name
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(describe_os_error(err)) from None
    check_writable(root)
    remove_stale_temps(root)
    return RunDir(root=root.resolve(), overwrite=bool(overwrite))
