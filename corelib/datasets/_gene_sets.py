"""Gene set libraries (GO BP, KEGG, ...): loaded offline from ``pyenrichr``, restricted to a gene universe."""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from corelib.datasets._organism import (
    check_organism,
    note_mapping,
    organism_fix,
    organism_mismatch,
    to_organism,
)

#: Default gene set library (shipped offline by the ``pyenrichr`` package).
GO_BP = "GO_Biological_Process_2023"

#: Default gene set size bounds, counted within the ranking's genes (see :mod:`corelib.tl.enrichment`).
MIN_SIZE = 15
MAX_SIZE = 500


def _pyenrichr_data() -> Path:
    """The folder of gene set libraries inside the installed ``pyenrichr`` package (found, not imported)."""
    spec = importlib.util.find_spec("pyenrichr")
    if spec is None or spec.origin is None:
        raise ImportError("The pyenrichr package is not installed; install it (pip install pyenrichr).")
    return Path(spec.origin).parent / "data"


def available_libraries() -> list[str]:
    """Names of the gene set libraries that ``pyenrichr`` ships offline (e.g. ``GO_Biological_Process_2023``)."""
    return sorted(p.name for p in _pyenrichr_data().iterdir() if p.is_file() and "." not in p.name)


def _read_gmt(path: Path) -> dict[str, tuple[str, ...]]:
    """Parse a GMT(-like) file: ``term <tab> description <tab> gene <tab> gene ...`` per line.

    Read once per process while the file is unchanged (its path, size and modification time): notebook 07 loads
    the same library about twenty times.
    """
    stat = path.stat()
    return dict(_parse_gmt(str(path.resolve()), stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=8)
def _parse_gmt(path: str, size: int, mtime_ns: int) -> dict[str, tuple[str, ...]]:
    """:func:`_read_gmt`'s work, cached by the file's identity (the sets are tuples: nothing can change them)."""
    sets: dict[str, tuple[str, ...]] = {}
    with open(path) as fh:
        for line in fh:
            fields = line.rstrip("\n\r").split("\t")
            if len(fields) < 3 or not fields[0]:
                continue
            # Enrichr writes "GENE,1.0" in weighted libraries; keep the symbol.
            sets[fields[0]] = tuple(g.split(",")[0].strip() for g in fields[2:] if g.strip())
    if not sets:
        raise ValueError(f"{path} holds no gene set; expected lines 'term<TAB>description<TAB>gene<TAB>...'.")
    return sets


def _library_name(library: object, position: int) -> str:
    """Prefix of a library's terms when several are loaded together: its name, a file's stem, or its position."""
    if isinstance(library, str | os.PathLike):
        return Path(library).stem if Path(library).is_file() else str(library)
    return f"sets{position + 1}"


def _read_library(library: object) -> dict[str, Sequence[str]]:
    """``term -> genes`` of one library: a ``pyenrichr`` name, a ``.gmt`` path or a dict."""
    if isinstance(library, Mapping):
        raw: dict[str, Sequence[str]] = {str(k): [str(g) for g in v] for k, v in library.items()}
        if not raw:
            raise ValueError("The gene set dict is empty; pass term -> list of genes.")
    elif isinstance(library, str | os.PathLike):
        path = Path(library)
        if path.is_file():
            raw = _read_gmt(path)
        elif isinstance(library, str) and library in available_libraries():
            raw = _read_gmt(_pyenrichr_data() / library)
        else:
            raise ValueError(
                f"Unknown gene set library {str(library)!r}: not a file and not one of the libraries shipped "
                f"offline by pyenrichr: {', '.join(available_libraries())}. Pass one of these names, a .gmt "
                "path, or a dict term -> genes."
            )
    else:
        raise TypeError(
            f"library must be a library name, a .gmt path or a dict term -> genes, not {type(library).__name__}."
        )
    return raw


def load_gene_sets(
    library: str | os.PathLike | Mapping[str, Iterable[str]] | Sequence[object] = GO_BP,
    *,
    genes: Sequence[str] | None = None,
    min_size: int = MIN_SIZE,
    max_size: int = MAX_SIZE,
    organism: str = "human",
) -> dict[str, list[str]]:
    """Load gene sets offline, restricted to a gene universe and filtered by size.

    Parameters
    ----------
    library
        A library name shipped by ``pyenrichr`` (see :func:`available_libraries`; default GO Biological
        Process 2023), a path to a ``.gmt`` file, a dict ``term -> genes``, or a list of these: their sets
        together (terms prefixed ``"<library>: "``), so that GSEA and ORA calibrate over all of them as one
        family (e.g. ``["GO_Biological_Process_2023", "KEGG_2021_Human", "WikiPathway_2023_Human"]``).
    genes
        The gene universe (the model's genes, i.e. the ranking's index). Set members are matched to it (see
        ``organism``) and renamed to the universe's spelling. ``None`` keeps the sets as read (mapped to
        ``organism``), without the size filter.
    min_size, max_size
        Keep sets with ``min_size <= |set within genes| <= max_size`` (and smaller than the universe).
    organism
        The species of ``genes`` (the libraries are human). ``"human"``: members match exactly, then
        case-insensitively, as Enrichr upper-cases symbols that human data write in mixed case (``C1orf162``);
        a universe written mostly like mouse symbols then warns. ``"mouse"``: members are mapped by case
        (``CD3E -> Cd3e``, an approximate ortholog mapping, printed once) and match exactly.

    Returns
    -------
    dict
        ``term -> sorted list of genes`` (of ``genes`` when given). Possibly empty when no set passes the
        filter; :func:`gsea` then reports a reason for every unit instead of failing.
    """
    if isinstance(library, list | tuple):
        if not library:
            raise ValueError("The list of gene set libraries is empty; pass at least one name, path or dict.")
        raw = {
            f"{_library_name(lib, i)}: {t}": g
            for i, lib in enumerate(library)
            for t, g in _read_library(lib).items()
        }
    else:
        raw = _read_library(library)
    check_organism(organism)
    if organism != "human":
        note_mapping(_describe(library), organism)
        raw = {term: to_organism(members, organism) for term, members in raw.items()}
    if genes is None:
        return {term: sorted(set(members)) for term, members in raw.items()}
    if min_size < 1 or max_size < min_size:
        raise ValueError(f"Need 1 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}.")
    universe = [str(g) for g in genes]
    fold = str.upper if organism == "human" else str
    lookup = {fold(g): g for g in reversed(universe)} | {g: g for g in universe}
    if organism == "human":
        mismatch = organism_mismatch(universe, organism)
        if mismatch:
            warnings.warn(
                f"{_describe(library)}: {mismatch} Under organism human the sets' symbols match case-insensitively, "
                "so each of these genes is taken for its human namesake.",
                stacklevel=2,
            )
    out, found = {}, set()
    for term, members in raw.items():
        hits = sorted({lookup[m] if m in lookup else lookup.get(fold(m), "") for m in members} - {""})
        found.update(hits)
        if min_size <= len(hits) <= max_size and len(hits) < len(universe):
            out[term] = hits
    if not out:
        warnings.warn(
            f"No gene set of {_describe(library)} has {min_size}..{max_size} genes among the {len(universe)} "
            f"genes given: {len(found)} of them are in any of its {len(raw)} sets. Every unit will be unlabelled. "
            f"The organism setting is {organism}. {organism_fix(universe, organism)} Or lower min_size.",
            stacklevel=2,
        )
    return out


def _describe(library: object) -> str:
    """A library for messages: its name or path, or "the gene set dict"."""
    if isinstance(library, list | tuple):
        return " + ".join(_describe(lib) for lib in library)
    return str(library) if isinstance(library, str | os.PathLike) else "the gene set dict"
