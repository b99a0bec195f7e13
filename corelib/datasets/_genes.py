"""The bundled human gene resources: the Tirosh et al. (2016) cell-cycle genes and the NCBI gene descriptions.

Both are matched to the data's symbols under the ``organism`` setting (:mod:`corelib.datasets._organism`):
as they are for human data, mapped by case for mouse data (``CD3E -> Cd3e``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from functools import cache

import pandas as pd

from corelib.datasets._bundled import bundled_path
from corelib.datasets._organism import check_organism, note_mapping, organism_fix, to_organism

#: Number of S-phase genes at the head of the bundled Tirosh list (the other 54 are G2M).
_N_S_GENES = 43


def cell_cycle_genes(
    var_names: Iterable[str] | None = None, *, organism: str = "human"
) -> tuple[list[str], list[str]]:
    """The Tirosh et al. (2016) cell-cycle genes: 43 S-phase and 54 G2M-phase symbols.

    Parameters
    ----------
    var_names
        If given, each symbol missing from it is replaced by its current or former symbol when that one is
        present (bundled NCBI aliases, e.g. MLF1IP -> CENPU), and genes absent under every name are dropped.
    organism
        ``"human"`` (the list's own symbols) or ``"mouse"`` (mapped by case, ``MCM5 -> Mcm5``).

    Returns
    -------
    ``(s_genes, g2m_genes)``, in ``organism``'s spelling (as in ``var_names`` when given).
    """
    genes = [
        g.strip()
        for g in bundled_path("regev_lab_cell_cycle_genes.txt").read_text().splitlines()
        if g.strip()
    ]
    check_organism(organism)
    note_mapping("the Tirosh cell-cycle genes", organism)
    s_genes, g2m_genes = genes[:_N_S_GENES], genes[_N_S_GENES:]
    if var_names is None:
        return to_organism(s_genes, organism), to_organism(g2m_genes, organism)
    present = set(map(str, var_names))
    return _resolve(s_genes, present, organism), _resolve(g2m_genes, present, organism)


def _resolve(symbols: Sequence[str], present: set[str], organism: str) -> list[str]:
    """Map each human symbol to a name in ``present`` (itself, or a synonym via the alias table, written as
    ``organism``'s symbols); drop the rest."""
    synonyms = _synonyms()
    out = []
    for s in symbols:
        names = to_organism([s, *synonyms.get(s, ())], organism)
        hit = next((name for name in names if name in present), None)
        if hit is not None:
            out.append(hit)
    return out


@cache
def gene_descriptions() -> pd.DataFrame:
    """The bundled NCBI Gene table (human protein-coding genes, 2016-02-22 snapshot).

    Returns
    -------
    DataFrame indexed by symbol with columns ``ncbi_gene_id``, ``description``, ``aliases``, ``map_location``.
    """
    df = pd.read_csv(
        bundled_path("gene_descriptions_ncbi_9606_2016.tsv.gz"), sep="\t", dtype=str, keep_default_na=False
    )
    return df.set_index("symbol")


@cache
def _synonyms() -> dict[str, tuple[str, ...]]:
    """Symbol -> other symbols naming the same gene, from the NCBI table.

    An official symbol maps to its own aliases (former names) only; a name that is not an official symbol
    maps to the official symbols that list it as an alias. So ``DTL`` (official, and also an alias of
    TNFSF13B) never becomes TNFSF13B, while ``MLF1IP`` (not official in every snapshot) finds ``CENPU``.
    """
    table = gene_descriptions()
    official = set(table.index)
    links: dict[str, list[str]] = {}
    for symbol, aliases in table["aliases"].items():
        for alias in (a.strip() for a in aliases.split(",") if a.strip()):
            links.setdefault(symbol, []).append(alias)
            if alias not in official:
                links.setdefault(alias, []).append(symbol)
    return {k: tuple(v) for k, v in links.items()}


@cache
def _human_names(organism: str) -> dict[str, str]:
    """``organism``'s spelling -> human name, for every official symbol and alias of the NCBI table."""
    names = [*gene_descriptions().index, *_synonyms()]
    return dict(zip(to_organism(names, organism), names, strict=True))


def describe_genes(symbols: Iterable[str], *, organism: str = "human") -> pd.Series:
    """One-line NCBI description per gene symbol, falling back to the alias table for renamed genes.

    Parameters
    ----------
    symbols
        Gene symbols (e.g. an AnnData's ``var_names``).
    organism
        ``"human"`` or ``"mouse"``: mouse symbols find the description of the human gene of the same name
        in upper case (``Cd3e -> CD3E``), an approximate ortholog mapping.

    Returns
    -------
    Series indexed by the given symbols; ``""`` where the gene is unknown. A description found through an
    alias or through the mapping says under which NCBI symbol (``"... (NCBI symbol CENPU)"``). When no
    symbol is known, a warning names the organism setting and the fix.
    """
    check_organism(organism)
    note_mapping("the NCBI gene descriptions", organism)
    table = gene_descriptions()["description"]
    synonyms, human = _synonyms(), _human_names(organism)
    symbols = list(map(str, symbols))
    out = {}
    for s in symbols:
        name = human.get(s, "")
        hit = (
            name
            if name in table.index
            else next((a for a in synonyms.get(name, ()) if a in table.index), None)
        )
        out[s] = "" if hit is None else table[hit] if hit == s else f"{table[hit]} (NCBI symbol {hit})"
    if symbols and not any(out.values()):
        warnings.warn(
            f"None of the {len(symbols)} genes has an NCBI description (human gene table) under organism "
            f"{organism}. {organism_fix(symbols, organism)}",
            stacklevel=2,
        )
    return pd.Series(out, name="description", dtype=str)
