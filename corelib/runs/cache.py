"""The fingerprinted cache: each output has a provenance record of what it was made from.

An output ``<output>`` has its record beside it, ``<output>.provenance.json``: the fingerprint of every input
(arrays, files, parameters, upstream outputs) and of the format version (:data:`FORMAT_VERSION`), and the
checksum of the output's own content as written. :func:`cached` reuses an output only when its record matches
the inputs asked for now and its content is the one recorded; otherwise it raises :class:`StaleOutputError`
(:class:`DamagedOutputError` for a changed or unreadable file) naming what differs, or recomputes when asked to
overwrite. :func:`verify_content` is the same content check for a reader of an earlier step's output.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from corelib._io import TEMP_NAME, atomic_write

#: An output of :meth:`RunDir.cached`: a layout key, ``(key, name)`` or ``(key, name, index)``.
Output = str | tuple[str, str | None] | tuple[str, str | None, bool]


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


class DamagedOutputError(StaleOutputError):
    """An output (or its provenance record) is not what its step wrote: edited, truncated or replaced since."""


#: The fix every damaged-output message ends with.
_DAMAGED_FIX = (
    "Fix: rerun with overwrite to recompute it (`python -m corelib run <params> --overwrite`, or "
    "`overwrite=True`), or put back the file as it was written."
)


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


def _read_record(output: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON record beside ``output`` (None without one); :class:`DamagedOutputError` when unreadable."""
    record = provenance_path(output)
    if not record.is_file():
        return None
    try:
        data = json.loads(record.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
        if "fingerprint" in data:
            Provenance.from_json(data)
    except (ValueError, KeyError, TypeError, AttributeError) as err:  # JSONDecodeError is a ValueError
        raise DamagedOutputError(
            f"{record} is damaged ({type(err).__name__}: {err}): it records what {Path(output).name} was made "
            f"from, so that output cannot be trusted. {_DAMAGED_FIX}"
        ) from None
    return data


def read_provenance(output: str | os.PathLike) -> Provenance | None:
    """The provenance record of ``output``, or None when it has none (or records only its content).

    Raises
    ------
    DamagedOutputError
        The record is not valid JSON (a truncated or edited file).
    """
    data = _read_record(output)
    return Provenance.from_json(data) if data is not None and "fingerprint" in data else None


def record_provenance(
    output: str | os.PathLike, inputs: Mapping[str, Any] | Provenance | None = None
) -> Provenance | None:
    """Write the record of an output that has just been written (atomically): the checksum of its content and,
    given ``inputs``, what it was made from. Without ``inputs`` the record serves :func:`verify_content` only.
    """
    prov = inputs if isinstance(inputs, Provenance | None) else Provenance.of(inputs)
    record = prov.to_json() if prov is not None else {}
    record["content"] = content_checksum(output)
    with atomic_write(provenance_path(output)) as fh:
        json.dump(record, fh, indent=1, default=str)
    return prov


#: Content checksums already computed in this process, by path and the size, time and inode of its files:
#: a reader that opens one output several times hashes it once.
_CHECKED: dict[tuple[Any, ...], str] = {}


def content_checksum(output: str | os.PathLike) -> str:
    """Fingerprint of an output's bytes: a file's content, or every file below a directory (names included;
    temporary files of live writers left out)."""
    path = Path(output)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    files = [f for f in files if not TEMP_NAME.match(f.name)]
    key = (str(path), *((str(f), s.st_size, s.st_mtime_ns, s.st_ino) for f in files for s in [f.stat()]))
    if key not in _CHECKED:
        h = hashlib.sha256(b"content:%d;" % len(files))
        for file in files:
            h.update(str(file.relative_to(path) if file != path else "").encode() + b"\0")
            with file.open("rb") as fh:
                while chunk := fh.read(1 << 24):
                    h.update(chunk)
        _CHECKED[key] = h.hexdigest()[:32]
    return _CHECKED[key]


def verify_content(output: str | os.PathLike) -> None:
    """Check that ``output`` holds what its step wrote: the checksum in its record (when it has one).

    Raises
    ------
    DamagedOutputError
        The content changed since it was written (edited by hand, cut short, replaced), or the record is
        unreadable; the message names the file and the fix.
    """
    data = _read_record(output)
    if data is None or "content" not in data:
        return  # no record, or one written before records held checksums: nothing to compare
    now = content_checksum(output)
    if now != data["content"]:
        raise DamagedOutputError(
            f"{output} is not the content its step wrote (checksum {data['content'][:8]} recorded, {now[:8]} "
            f"now): it was edited, cut short or replaced since, and would be served as a result. {_DAMAGED_FIX}"
        )


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
    True when every output exists with a matching record and the content it records; False when one is
    missing or has no record (it is then recomputed), or when they differ and ``overwrite`` is set.

    Raises
    ------
    StaleOutputError
        An output was made from other inputs and ``overwrite`` is not set; the message lists what changed.
    DamagedOutputError
        An output's content or record is not what was written, and ``overwrite`` is not set.
    """
    want = inputs if isinstance(inputs, Provenance) else Provenance.of(inputs)
    for output in map(Path, outputs):
        try:
            have = read_provenance(output) if output.exists() else None
            if have is not None and have.fingerprint == want.fingerprint:
                verify_content(output)
        except DamagedOutputError:
            if overwrite:
                return False
            raise
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
