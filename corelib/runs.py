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
never leaves a half-written file behind (:func:`open_run` removes the temporary files of killed writers).

Provenance: every cached output has a record beside it, ``<output>.provenance.json``, with the fingerprint of
what it was made from (its inputs: data by content, upstream objects by content, the step's parameters, and
:data:`FORMAT_VERSION`). :func:`cached` reuses an output only when its record matches the inputs asked for
now; a mismatch stops with :class:`StaleOutputError` naming what changed, unless ``overwrite`` is set, in
which case the output is recomputed. An output without a record (an interrupted write, or a run directory
from before records existed) is recomputed.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

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


# ----------------------------------------------------------------------------------------------------------
# Provenance: what an output was made from
# ----------------------------------------------------------------------------------------------------------
#: Version of the formats and algorithms behind cached outputs; bump it when a change alters what a step
#: computes from the same inputs, so that every earlier output stops matching.
FORMAT_VERSION = 1

#: Suffix of the record written beside each cached output.
PROVENANCE_SUFFIX = ".provenance.json"

#: Parameters whose JSON text is longer than this are recorded by fingerprint only.
_MAX_RECORDED_CHARS = 400


class StaleOutputError(ValueError):
    """An output exists but was made from other inputs than those asked for now."""


@dataclass(frozen=True)
class Known:
    """An input given by its fingerprint: a large array fingerprinted once, or an upstream output."""

    fingerprint: str
    description: str

    @classmethod
    def of(cls, value: Any) -> Known:
        """Fingerprint ``value`` once, to pass it as an input of several steps."""
        return cls(fingerprint(value), str(describe(value)))


def fingerprint(value: Any) -> str:
    """A content fingerprint (hex) of a step's input.

    Parameters
    ----------
    value
        JSON-like parameters (nested dicts, lists, scalars), numpy arrays, scipy sparse matrices, pandas
        objects, AnnData (its ``X``, ``obs_names`` and ``var_names``: pass the ``obs`` columns a step reads
        separately), torch tensors and modules (state dict, plus ``config()`` when the module has one),
        or a :class:`~pathlib.Path` (the content of the file, or of every file below a directory).

    Returns
    -------
    32 hex characters; equal values give equal fingerprints in any process on any machine.
    """
    if isinstance(value, Known):
        return value.fingerprint
    h = hashlib.sha256()  # hardware-accelerated on current x86 CPUs: twice blake2b's speed here
    _update(h, value)
    return h.hexdigest()[:32]


def _update(h: Any, value: Any) -> None:
    """Feed ``value`` into the hash ``h``, tagged by kind so that different kinds never collide."""
    import torch

    if value is None or isinstance(value, bool | int | float | str):
        h.update(b"json:" + json.dumps(value).encode())
    elif isinstance(value, Known):
        h.update(b"known:" + value.fingerprint.encode())
    elif isinstance(value, np.generic):
        _update(h, value.item())
    elif isinstance(value, Mapping):
        h.update(b"map:%d;" % len(value))
        for key in sorted(value, key=str):
            _update(h, str(key))
            _update(h, value[key])
    elif isinstance(value, list | tuple):
        h.update(b"seq:%d;" % len(value))
        for item in value:
            _update(h, item)
    elif isinstance(value, np.ndarray):
        _update_array(h, value)
    elif sp.issparse(value):  # CSR in canonical form, index width ignored: CSC, COO and int32/int64 agree
        csr = value if value.format == "csr" else value.tocsr()
        if not csr.has_canonical_format:
            csr = csr.copy()
            csr.sum_duplicates()
        h.update(b"csr:" + repr(tuple(csr.shape)).encode())
        for ids in (csr.indptr, csr.indices):
            for start in range(0, ids.size, 1 << 23):
                h.update(ids[start : start + (1 << 23)].astype(np.int64).tobytes())
        _update_array(h, csr.data)
    elif isinstance(value, pd.DataFrame | pd.Series | pd.Index):
        h.update(b"pandas:" + type(value).__name__.encode())
        frame = value.to_frame() if isinstance(value, pd.Series | pd.Index) else value
        _update(h, [str(c) for c in frame.columns])
        _update(h, [str(t) for t in frame.dtypes])
        _update_array(h, pd.util.hash_pandas_object(frame, index=not isinstance(value, pd.Index)).to_numpy())
    elif isinstance(value, ad.AnnData):
        h.update(b"anndata:")
        _update(h, value.obs_names)
        _update(h, value.var_names)
        _update(h, value.X)
    elif isinstance(value, torch.Tensor):  # as the equal numpy array, so both spellings of data match
        t = value.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            h.update(b"bfloat16:" + repr(tuple(t.shape)).encode())
            t = t.view(torch.int16)
        _update_array(h, t.numpy())
    elif isinstance(value, torch.nn.Module):
        h.update(b"module:" + type(value).__name__.encode())
        if callable(getattr(value, "config", None)):
            _update(h, json.loads(json.dumps(value.config(), default=str)))
        _update(h, dict(value.state_dict()))
    elif isinstance(value, Path):
        _update_path(h, value)
    else:
        raise TypeError(
            f"cannot fingerprint a {type(value).__name__}; pass its data (arrays, tables, parameters) or the "
            "fingerprint of the output it came from (RunDir.fingerprint)."
        )


def _update_array(h: Any, array: np.ndarray) -> None:
    """Hash an array's dtype, shape and bytes, in chunks (no full copy of a large C-contiguous array)."""
    if array.dtype == object:
        _update(h, [str(v) for v in array.ravel()])
        return
    array = np.ascontiguousarray(array)
    h.update(b"array:" + array.dtype.str.encode() + repr(array.shape).encode())
    flat = array.reshape(-1).view(np.uint8)
    for start in range(0, flat.size, 1 << 26):
        h.update(flat[start : start + (1 << 26)])


def _update_path(h: Any, path: Path) -> None:
    """Hash a file's content, or the names and contents of every file below a directory."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist, so what it holds cannot be fingerprinted.")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h.update(b"path:%d;" % len(files))
    for file in files:
        h.update(str(file.relative_to(path) if file != path else file.name).encode())
        with file.open("rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)


def describe(value: Any) -> Any:
    """What a provenance record shows of an input: a short parameter as itself, anything else summarised."""
    if isinstance(value, Known):
        return value.description
    if isinstance(value, np.ndarray | np.generic) and value.dtype.kind in "biufU" and value.size <= 64:
        value = value.tolist()  # small arrays (a list of concept ids) are shown as lists
    try:
        text = json.dumps(value)
    except TypeError:
        text = None
    if text is not None and len(text) <= _MAX_RECORDED_CHARS:
        return value
    if isinstance(value, ad.AnnData):
        return f"AnnData {value.n_obs} cells x {value.n_vars} genes"
    shape = getattr(value, "shape", None)
    if shape is not None:
        dtype = getattr(value, "dtype", None)
        kind = "sparse matrix" if sp.issparse(value) else type(value).__name__
        return f"{kind} {' x '.join(map(str, shape))}" + (f" ({dtype})" if dtype is not None else "")
    if isinstance(value, Path):
        return f"content of {value}"
    if isinstance(value, Mapping | list | tuple):
        return f"{type(value).__name__} of {len(value)} items"
    return type(value).__name__


@dataclass(frozen=True)
class Provenance:
    """What an output was made from: each input's fingerprint and description, and the combined fingerprint."""

    fingerprint: str
    inputs: dict[str, str]
    described: dict[str, Any]
    format_version: int = FORMAT_VERSION

    @classmethod
    def of(cls, inputs: Mapping[str, Any]) -> Provenance:
        """The provenance of an output made from ``inputs`` (name -> value, see :func:`fingerprint`)."""
        prints = {str(name): fingerprint(value) for name, value in inputs.items()}
        return cls(
            fingerprint=fingerprint({"format_version": FORMAT_VERSION, "inputs": prints}),
            inputs=prints,
            described={str(name): describe(value) for name, value in inputs.items()},
        )

    def differences(self, other: Provenance) -> list[str]:
        """One line per input that differs between ``other`` (stored) and ``self`` (asked for now)."""
        lines = []
        if other.format_version != self.format_version:
            lines.append(f"format version: {other.format_version} -> {self.format_version}")
        for name in sorted(set(self.inputs) | set(other.inputs)):
            if name not in other.inputs:
                lines.append(f"{name}: (not an input then) -> {_show(self.described[name])}")
            elif name not in self.inputs:
                lines.append(f"{name}: {_show(other.described[name])} -> (not an input now)")
            elif other.inputs[name] != self.inputs[name]:
                old, new = _show(other.described[name]), _show(self.described[name])
                lines.append(f"{name}: {old} -> {new}" + (" (other content)" if old == new else ""))
        return lines

    def to_json(self) -> dict[str, Any]:
        """The record written beside the output."""
        return {
            "format_version": self.format_version,
            "fingerprint": self.fingerprint,
            "inputs": {
                name: {"fingerprint": fp, "value": self.described[name]} for name, fp in self.inputs.items()
            },
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Provenance:
        """Read a record written by :meth:`to_json`."""
        inputs = record.get("inputs", {})
        return cls(
            fingerprint=record["fingerprint"],
            inputs={name: item["fingerprint"] for name, item in inputs.items()},
            described={name: item.get("value") for name, item in inputs.items()},
            format_version=int(record.get("format_version", 0)),
        )


def _show(described: Any) -> str:
    """A described input as plain text for messages (lists comma-separated, no Python reprs)."""
    if isinstance(described, list | tuple):
        return "[" + ", ".join(_show(v) for v in described) + "]"
    if isinstance(described, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in described.items()) + "}"
    return str(described)


def provenance_path(output: str | os.PathLike) -> Path:
    """Where the provenance record of ``output`` (a file or a directory) is stored: beside it."""
    output = Path(output)
    return output.with_name(output.name + PROVENANCE_SUFFIX)


def read_provenance(output: str | os.PathLike) -> Provenance | None:
    """The provenance record of ``output``, or None when it has none."""
    record = provenance_path(output)
    return Provenance.from_json(json.loads(record.read_text())) if record.is_file() else None


def record_provenance(output: str | os.PathLike, inputs: Mapping[str, Any] | Provenance) -> Provenance:
    """Write the provenance record of an output that has just been written (atomically)."""
    prov = inputs if isinstance(inputs, Provenance) else Provenance.of(inputs)
    with atomic_write(provenance_path(output)) as fh:
        json.dump(prov.to_json(), fh, indent=1, default=str)
    return prov


def reusable(
    outputs: Sequence[str | os.PathLike], inputs: Mapping[str, Any] | Provenance, *, overwrite: bool = False
) -> bool:
    """Whether existing ``outputs`` were made from ``inputs`` and may be reused.

    Parameters
    ----------
    outputs
        Files or directories that one step writes together.
    inputs
        What the step is asked to make them from now (or its :class:`Provenance`).
    overwrite
        On a mismatch, answer False (recompute and replace) instead of raising.

    Returns
    -------
    True when every output exists with a matching record; False when one is missing or has no record (it is
    then recomputed), or when they differ and ``overwrite`` is set.

    Raises
    ------
    StaleOutputError
        An output was made from other inputs and ``overwrite`` is not set; the message lists what changed.
    """
    want = inputs if isinstance(inputs, Provenance) else Provenance.of(inputs)
    for output in map(Path, outputs):
        have = read_provenance(output) if output.exists() else None
        if have is None:
            return False
        if have.fingerprint != want.fingerprint and not overwrite:
            changes = "\n".join(f"  - {line}" for line in want.differences(have)) or "  - (fingerprint)"
            raise StaleOutputError(
                f"{output} was made from other inputs than asked for now:\n{changes}\n"
                "Fix: rerun with overwrite to recompute and replace it (`python -m corelib run <params> "
                "--overwrite`, or `overwrite=True`), or use another run_name / run_dir to keep both."
            )
        if have.fingerprint != want.fingerprint:
            return False
    return True


def cached(
    compute: Callable[[], Any],
    outputs: Sequence[str | os.PathLike],
    inputs: Mapping[str, Any] | Provenance,
    *,
    save: Callable[[Any, Path], Any],
    load: Callable[[Path], Any],
    overwrite: bool = False,
) -> Any:
    """Reuse outputs made from the same ``inputs``, or compute, write and record them.

    Parameters
    ----------
    compute
        Returns one object per output (a tuple when there are several).
    outputs
        Paths the step writes.
    inputs
        Everything the result depends on: data, upstream objects, parameters (see :func:`fingerprint`).
        Leave out what only changes speed (device, batch size, progress bars).
    save, load
        ``save(obj, path)`` writes one output, ``load(path)`` reads it back.
    overwrite
        Recompute and replace outputs made from other inputs instead of raising :class:`StaleOutputError`.

    Returns
    -------
    The object(s), computed or read back.
    """
    want = inputs if isinstance(inputs, Provenance) else Provenance.of(inputs)
    paths = [Path(p) for p in outputs]
    if reusable(paths, want, overwrite=overwrite):
        loaded = [load(p) for p in paths]
        return loaded[0] if len(loaded) == 1 else tuple(loaded)
    result = compute()
    for path in paths:  # a crash while saving must not leave an old record beside a new output
        provenance_path(path).unlink(missing_ok=True)
    for obj, path in zip((result,) if len(paths) == 1 else result, paths, strict=True):
        save(obj, path)
    for path in paths:
        record_provenance(path, want)
    return result


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
            an object with a ``save(path)`` method (e.g. :class:`corelib.attribution.Attribution`).
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
            producer = LAYOUT[key].split("/")[0]
            raise StaleOutputError(
                f"{path} was not made from the current {', '.join(stale)} "
                f"({', '.join(upstream[w].description for w in stale)}): rerun notebook {producer!r} "
                "(python -m corelib run <params> --only <notebooks from it on>)."
            )
        return path

    # Small typed helpers, so notebooks never open files by hand.
    def write_json(
        self, key: str, obj: Any, name: str | None = None, *, inputs: Mapping[str, Any] | None = None
    ) -> Path:
        """Write ``obj`` as indented JSON, atomically (and its provenance when ``inputs`` are given)."""
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
        """Write a DataFrame as CSV, atomically (and its provenance when ``inputs`` are given)."""
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
        """Write an AnnData (compressed), atomically (and its provenance when ``inputs`` are given)."""
        p = self.path(key, name)
        provenance_path(p).unlink(missing_ok=True)
        with atomic_path(p) as tmp:
            adata.write_h5ad(tmp, compression="gzip")
        return self._recorded(p, inputs)

    @staticmethod
    def _recorded(path: Path, inputs: Mapping[str, Any] | None) -> Path:
        """Record ``path``'s provenance when ``inputs`` are given, else drop a record that no longer holds."""
        if inputs is None:
            provenance_path(path).unlink(missing_ok=True)
        else:
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
    """
    root = Path(run_dir) if run_dir else DEFAULT_ROOT / run_name
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(root)
    return RunDir(root=root.resolve(), overwrite=bool(overwrite))


def load_encoder(
    run: RunDir,
    adata: ad.AnnData,
    *,
    model: str,
    model_path: str | os.PathLike | None = None,
    trust_pickle: bool = False,
    random_init: bool = False,
    seed: int = 0,
    device: str = "auto",
    options: Mapping[str, Any] | None = None,
) -> Any:
    """The run's encoder: built once by :func:`corelib.encoders.load`, then read back from ``encoder``.

    Its provenance is the dataset's content, the model, the content of ``model_path`` and the settings; a
    later call with other ones stops with :class:`StaleOutputError` (or retrains, under ``overwrite``).
    Parameters are those of :func:`corelib.encoders.load` (``options`` = its ``**options``).
    """
    from corelib import encoders

    options = dict(options or {})
    inputs = {
        "data": adata,
        "model": str(model).lower(),
        "model_path": Path(model_path).resolve() if model_path is not None else None,
        "random_init": bool(random_init),
        "seed": int(seed),
        "model_options": options,
    }
    return run.cached(
        lambda: encoders.load(
            model,
            adata=adata,
            path=model_path,
            trust_pickle=trust_pickle,
            random_init=random_init,
            seed=seed,
            device=device,
            **options,
        ),
        "encoder",
        inputs=inputs,
        load=lambda path: encoders.restore(path, device=device),
        save=encoders.save,
    )


def restore_encoder(run: RunDir, *, device: str = "auto") -> Any:
    """The encoder that embedded the run's cells (notebook 01), checked against the embedding's record."""
    from corelib import encoders

    run.check_made_from("embedded", encoder=run.fingerprint("encoder"))
    return encoders.restore(run.path("encoder"), device=device)


def load_sae(run: RunDir, emb_ND: Any, name: str | None = None) -> tuple[str, Any]:
    """The run's SAE (default: the one notebook 02 selected), checked to be trained on these embeddings.

    Returns
    -------
    ``(name, sae)``, the :class:`corelib.sae.TopKSAE` in eval mode.
    """
    from corelib import sae as sae_lib

    name = name or run.read_json("sae_selected")["sae"]
    path = run.check_made_from("sae", name, embeddings=sae_lib.embeddings_fingerprint(emb_ND))
    return name, sae_lib.TopKSAE.load(path, d_in=emb_ND.shape[1])


def attribution_path(run: RunDir, kind: str) -> Path | None:
    """Notebook 03's attribution file of ``kind`` ("concepts" or "neurons"), or None when it was not written.

    Raises
    ------
    StaleOutputError
        It was computed from another embedding (or, for concepts, another selected SAE) than the run holds now.
    """
    key = f"attribution_{kind}"
    if not run.path(key).exists():
        return None
    upstream = {"embedded": run.fingerprint("embedded")}
    if kind == "concepts":
        upstream["sae"] = run.fingerprint("sae", run.read_json("sae_selected")["sae"])
    return run.check_made_from(key, **upstream)
