"""The organism setting: which species' gene symbols the data use, and how the human resources map to it.

The bundled gene resources are human: the Enrichr gene set libraries, the Tirosh et al. (2016) cell-cycle
list and the NCBI gene descriptions. With ``organism="human"`` their symbols are used as they are. With
``organism="mouse"`` each human symbol is written as mouse symbols are: first letter upper case, the rest
lower case (``CD3E -> Cd3e``). That is an approximate ortholog mapping by case: a gene whose mouse symbol is
not its human one in title case (``HLA-DRA``, mouse ``H2-Ea``) is missed. :func:`note_mapping` says so once
per resource where a resource is mapped.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

#: Values of the ``organism`` setting (params file, ``corelib.datasets.load`` and the gene resources).
ORGANISMS: tuple[str, ...] = ("human", "mouse")


def check_organism(organism: str) -> None:
    """Raise a ``ValueError`` naming the choices when ``organism`` is not one of :data:`ORGANISMS`."""
    if organism not in ORGANISMS:
        raise ValueError(
            f"organism must be one of {', '.join(ORGANISMS)}, got {organism!r}. Set organism (top level of the "
            "params file, or the organism argument) to the species whose gene symbols the data use."
        )


def to_organism(human_symbols: Iterable[str], organism: str) -> list[str]:
    """Human symbols written as ``organism``'s: unchanged for human, title case for mouse (``CD3E -> Cd3e``)."""
    check_organism(organism)
    symbols = [str(s) for s in human_symbols]
    return symbols if organism == "human" else [s[:1].upper() + s[1:].lower() for s in symbols]


@cache
def note_mapping(resource: str, organism: str) -> None:
    """Print, once per resource and process, that a human resource is used through the mapping by case."""
    if organism != "human":
        print(
            f"organism {organism}: the human symbols of {resource} are mapped to {organism} symbols by case "
            f"(CD3E -> Cd3e), an approximate ortholog mapping that misses genes named otherwise in {organism}."
        )


def organism_mismatch(genes: Iterable[str], organism: str) -> str:
    """A sentence with the fix when most symbols are written like the other organism's, else ``""``.

    Mouse symbols are an upper-case letter, then lower case (``Cd3e``); human ones are upper case (``CD3E``;
    a few, such as ``C1orf162``, are mixed).
    """
    genes = [str(g) for g in genes]
    like_mouse = [g[:1].isupper() and g[1:] != g[1:].upper() for g in genes]
    share = sum(like_mouse) / len(genes) if genes else 0.0
    other = "mouse" if organism == "human" else "human"
    if (share > 0.5) == (organism == "mouse") or not genes:
        return ""
    examples = [g for g, m in zip(genes, like_mouse, strict=True) if m == (other == "mouse")][:3]
    return (
        f"{max(share, 1 - share):.0%} of the {len(genes)} genes are written like {other} symbols (e.g. "
        f"{', '.join(examples)}) but organism is {organism}: set organism: {other}."
    )


def organism_fix(genes: Iterable[str], organism: str) -> str:
    """The fix to print when a resource finds none or too few of the data's genes under ``organism``."""
    genes = list(genes)
    return organism_mismatch(genes, organism) or (
        f"Check that the gene names are {organism} gene symbols (var_names, or gene_symbols_key)."
    )
