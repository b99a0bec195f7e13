"""The sentences the notebooks print about a result: reading a table, never computing one.

Each function takes what a ``corelib.tl`` call or a ``corelib.runs.steps`` step returned and gives the text a
notebook prints under it (notebook 02: :func:`describe_reconstruction`, :func:`describe_k_tradeoff`; 03:
:func:`describe_inputs`, :func:`describe_important_genes`, :func:`describe_deletion`, :func:`describe_annotation`,
:func:`describe_examples`, :func:`describe_ora`,
:func:`describe_recovery`; 04: :func:`describe_stability`, :func:`describe_cross_dataset`, :func:`describe_batch`; 05:
:func:`describe_classes`, :func:`describe_phases`, :func:`describe_probes`, :func:`describe_shown_attribution`, :func:`describe_top_units`; 07:
:func:`describe_random_reconstruction`, :func:`describe_claims`). The thresholds they read against stay in ``tl``.
:func:`show` displays a table or says it is empty; :func:`warnings_once` tells repeated warnings once.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from corelib.encoders.precomputed import NO_MODEL
from corelib.tl.annotation import annotation_excess
from corelib.tl.attribution import ATTRIBUTED, Attribution, Selection
from corelib.tl.claims import VERDICTS, batch_suppression, evaluate_claims, format_mean_std
from corelib.tl.deg import deletion_summary
from corelib.tl.integration import BATCH_SCORE, BIO_SCORE
from corelib.tl.probes import task_classes

if TYPE_CHECKING:
    from corelib.runs.steps.interpret import Inputs


# --------------------------------------------------------------------------------------------------------------
# Any notebook: a table or the sentence saying it is empty; repeated warnings told once
# --------------------------------------------------------------------------------------------------------------
#: What the random-encoder null is when the run has no model (said once where it is made).
RANDOM_PROJECTION = (
    "The random-encoder null of a precomputed embedding: there are no weights to redraw, so it is a random "
    "linear encoder of the same cells' expression (random orthonormal axes of the log-normalised counts, as many "
    "as the embedding's dimensions)."
)


def absent(what: str) -> str:
    """Why ``what`` is not measured in a run on a precomputed embedding: it needs the model's weights."""
    return f"{what}: not measured: {NO_MODEL}, and it needs the model that made the embedding."


def show(table: pd.DataFrame, empty: str) -> pd.DataFrame | None:
    """``table`` for a notebook to display, or, when it has no rows, ``empty`` printed instead (a sentence
    reads better than an empty frame's column names)."""
    if len(table):
        return table
    say(empty)
    return None


def say(text: str) -> None:
    """Print ``text`` unless it is empty (a step with nothing to add prints nothing, not a blank line)."""
    if text:
        print(text)


@contextlib.contextmanager
def warnings_once() -> Iterator[None]:
    """Warnings raised inside, told once per kind: the first one's text and how many more there were.

    A step that runs GSEA over several SAE seeds and arms warns once per call; a notebook shows one block.
    The kind is the message's text up to its first colon (e.g. ``"GSEA"``) and the warning's category.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    kinds: dict[tuple[type, str], list[str]] = {}
    for w in caught:
        kinds.setdefault((w.category, str(w.message).split(":")[0]), []).append(str(w.message))
    for (category, _), messages in kinds.items():
        more = f" ({len(messages) - 1} more like it in this step)" if len(messages) > 1 else ""
        warnings.warn(messages[0] + more, category, stacklevel=3)


# --------------------------------------------------------------------------------------------------------------
# Notebook 02: the SAE sweep
# --------------------------------------------------------------------------------------------------------------
def describe_reconstruction(grid: pd.DataFrame, chosen: pd.Series, paper_r2: float = 0.95) -> str:
    """The reading of the paper grid's R^2 (a sweep table, :func:`corelib.runs.steps.sweep`) and of the selected
    SAE's row ``chosen`` (named by its SAE): the ranges, against the paper's ``paper_r2``, and the selected
    SAE's gap between training and held-out cells."""
    held, train = grid["r2_heldout"], grid["r2_train"]
    gap = float(chosen["r2_train"] - chosen["r2_heldout"])
    return (
        f"Paper grid: held-out R² from {held.min():.3f} ({held.idxmin()}) to {held.max():.3f} ({held.idxmax()}), "
        f"training R² from {train.min():.3f} to {train.max():.3f}; {int((held >= paper_r2).sum())} of {len(grid)} "
        f"reach the paper's {paper_r2:g} on held-out cells. The selected {chosen.name}: held-out "
        f"{chosen['r2_heldout']:.3f}, training {chosen['r2_train']:.3f} ({int(chosen['n_cells_train'])} training "
        f"cells for {int(chosen['n_concepts'])} concepts). "
        + (
            f"The gap of {gap:.3f} means it fits its training cells better than new ones: more cells would help."
            if gap > 0.02
            else "Training and held-out R² agree: it generalises to new cells."
        )
    )


def describe_k_tradeoff(table: pd.DataFrame, shares: pd.DataFrame, selected: str, call: str) -> str:
    """What sparsity buys: for each SAE of a sweep ``table`` (sparsest first), the share of its concepts with
    ``call`` (a column of :func:`corelib.tl.concepts.summarize_calls`' ``shares``, e.g. "cell_type-specific")
    and its held-out R^2, then the ``selected`` SAE against the most specific one."""
    rows = table.assign(share=shares.loc[table.index, call]).sort_values(["k", "n_concepts"])
    listed = "; ".join(
        f"{name} (k = {int(r['k'])}) {r['share']:.1%} at R² {r['r2_heldout']:.3f}"
        for name, r in rows.iterrows()
    )
    best, chosen = rows["share"].idxmax(), rows.loc[selected]
    text = f"{call} concepts and held-out R², sparsest first: {listed}."
    if best == selected:
        return text + f" The selected {selected} has the most {call} concepts of them."
    return text + (
        f" The selected {selected} keeps k = {int(chosen['k'])} for its reconstruction, and pays in "
        f"specificity: {chosen['share']:.1%} of its concepts are {call}, against {rows.loc[best, 'share']:.1%} "
        f"for {best} (k = {int(rows.loc[best, 'k'])}). With more concepts active per cell, each concept is shared "
        "by more kinds of cells."
    )


# --------------------------------------------------------------------------------------------------------------
# Notebook 03: interpretation
# --------------------------------------------------------------------------------------------------------------
def describe_inputs(inputs: Inputs) -> str:
    """One line: cells, model genes (missing ones; the data's genes without a model), the SAE's name, its
    concepts and active concepts."""
    n_concepts, n_active = inputs.codes.shape[1], int((inputs.codes.getnnz(axis=0) > 0).sum())
    genes = (
        f"model genes ({inputs.n_missing} missing)"
        if inputs.encoder.has_model
        else "genes of the data (no model)"
    )
    return (
        f"{inputs.adata.n_obs} cells, {len(inputs.genes)} {genes}, "
        f"SAE {inputs.sae_name}: {n_concepts} concepts, {n_active} active"
    )


def describe_important_genes(counts: pd.DataFrame, threshold: float, relative_threshold: float) -> str:
    """What the important-gene counts of the concepts (:func:`corelib.runs.steps.interpret.gene_counts`'
    ``"concepts"`` table: ``activation``, ``n_important``, ``n_important_relative``) mean for this run: the
    share with no gene above the paper's absolute ``threshold`` beside the share with none above
    ``relative_threshold`` of the concept's own activation."""
    if not len(counts):
        return "No concept was attributed: no important genes to count."
    none_abs = float((counts["n_important"] == 0).mean())
    none_rel = float((counts["n_important_relative"] == 0).mean())
    text = (
        f"{none_abs:.0%} of the {len(counts)} attributed concepts have no gene scoring above {threshold:g}, and "
        f"{none_rel:.0%} none above {relative_threshold:.0%} of their own activation (median prototype "
        f"activation {counts['activation'].median():.2f}). "
    )
    if none_abs > none_rel:
        return text + (
            f"So for most concepts no single gene, set to its counterfactual's value, moves the concept by "
            f"{threshold:g}, yet several move it by more than {relative_threshold:.0%} of its activation: these "
            "concepts are driven by many genes a little each, not by a few markers. Read their top genes as a "
            "ranking, not as a list of 'important' genes."
        )
    return text + "Both definitions agree: the threshold's scale is not what decides here."


def describe_examples(examples: pd.DataFrame, gsea_units: pd.DataFrame) -> str:
    """How many attributed concepts carry a significant GSEA label (``gsea_units``' ``annotation`` is not
    "none"), and how to read the worked ``examples`` (:func:`corelib.runs.steps.interpret.worked_examples`)
    that carry none; "" when there is no example (nothing was attributed: the step said why)."""
    if examples.empty:
        return ""
    n_labelled = int((gsea_units["annotation"] != "none").sum())
    n_shown = int((examples["annotation"] != "none").sum())
    text = (
        f"{n_labelled} of {len(gsea_units)} attributed concepts carry a significant GSEA label; "
        f"{n_shown} of the {len(examples)} examples below do."
    )
    if n_shown < len(examples):
        text += (
            " An example with annotation 'none' shows its closest GO term, which did not pass the significance bar: "
            "it is not evidence of that process. Read such a concept by its top genes and its active cells instead."
        )
    return text


def _read_deletion_summary(summary: pd.DataFrame, pairs: str = "held-out", first: str = "attribution") -> str:
    """The reading of one set of pairs of a :func:`corelib.tl.deg.deletion_summary`, one sentence per order
    compared."""
    if pairs not in summary.index.get_level_values("pairs"):
        return f"No {pairs} pairs: no unit to compare."
    lines = []
    for second, s in summary.loc[pairs].to_dict("index").items():
        empty = f"; {s['n_empty']} units with an empty {second} list are left out" if s["n_empty"] else ""
        if not s["n_units"]:
            lines.append(f"On {pairs} pairs, no unit to compare the {first} and {second} orders on{empty}.")
            continue
        lines.append(
            f"On {pairs} pairs, the {first} order's curve falls faster than the {second} order's for "
            f"{s[f'fraction_{first}_lower']:.0%} of {s['n_units']} units (mean AUC {s[f'auc_{first}']:.3f} "
            f"vs {s[f'auc_{second}']:.3f}, Wilcoxon p = {s['wilcoxon_p']:.1e}){empty}."
        )
    return "\n".join(lines)


def describe_deletion(held_c: Selection, curves: pd.DataFrame, pairs: str = "held-out") -> str:
    """How many concepts have held-out pairs, then the reading of the curves on ``pairs``.

    Parameters
    ----------
    held_c
        The held-out pairs (:func:`corelib.tl.deg.held_out_pairs`), whose status says which concepts have them.
    curves
        From :func:`corelib.tl.deg.deletion_table`, read through :func:`corelib.tl.deg.deletion_summary`.
    pairs
        Which set of pairs to read: one sentence per order compared with the attribution order.
    """
    if not len(curves):
        return "No deletion curve was measured."
    n_held = int((held_c.status["status"] == ATTRIBUTED).sum())
    return (
        f"{n_held} of {len(held_c.status)} attributed concepts have held-out pairs (>= 2 N_p active cells).\n"
        + _read_deletion_summary(deletion_summary(curves), pairs)
    )


def describe_annotation(shares: pd.DataFrame, real: Mapping[str, Any], null: Mapping[str, Any]) -> str:
    """The reading of :func:`corelib.tl.annotation.annotation_shares`: the shares annotated, real vs permuted
    gene labels, in both modes, and whether concepts beat neurons beyond chance (calibrated)."""
    if not len(real["concepts"]):
        return "No unit has a GSEA label to compare with its null."
    cal, pap = shares["calibrated"], shares["paper"]
    excess = annotation_excess(shares, "calibrated")
    return (
        f"Calibrated: {cal.loc['concepts', 'real']:.0%} of {len(real['concepts'])} concepts and "
        f"{cal.loc['neurons', 'real']:.0%} of {len(real['neurons'])} neurons are annotated, against "
        f"{cal.loc['concepts', 'null']:.0%} and {cal.loc['neurons', 'null']:.0%} of {len(null['concepts'])} and "
        f"{len(null['neurons'])} with permuted gene labels. Paper thresholds: {pap.loc['concepts', 'real']:.0%} "
        f"and {pap.loc['neurons', 'real']:.0%}, against {pap.loc['concepts', 'null']:.0%} and "
        f"{pap.loc['neurons', 'null']:.0%} by chance. Beyond chance, concepts are "
        f"{'more' if excess['concepts'] > excess['neurons'] else 'not more'} often annotated than neurons "
        f"({excess['concepts']:+.0%} vs {excess['neurons']:+.0%} over the null)."
    )


def describe_ora(shares: pd.DataFrame) -> str:
    """The reading of :attr:`corelib.runs.steps.interpret.OraResult.shares`: real labels against permuted and
    expression-matched ones."""
    s = shares
    if s.isna().all(axis=None):
        return "No unit has an ORA label to compare with its nulls."
    return (
        f"ORA annotates {s.loc['concepts', 'real']:.0%} of concepts and {s.loc['neurons', 'real']:.0%} "
        f"of neurons; with permuted gene labels {s.loc['concepts', 'permuted genes']:.0%} and "
        f"{s.loc['neurons', 'permuted genes']:.0%}, permuted within expression bins "
        f"{s.loc['concepts', 'expression-matched']:.0%} and {s.loc['neurons', 'expression-matched']:.0%}."
    )


def describe_recovery() -> str:
    """What notebook 03 prints when the data has no planted program
    (:func:`corelib.runs.steps.interpret.recovery` returned None)."""
    return "No planted program in this dataset (uns['planted']): run params/planted.yaml to see recovery."


# --------------------------------------------------------------------------------------------------------------
# Notebooks 04, 05 and 07: stability, probes, claims
# --------------------------------------------------------------------------------------------------------------
def describe_stability(
    table: pd.DataFrame, method: str = "SAE", null: str = "SAE (random encoder)", close: str = "frac_ge_0.7"
) -> str:
    """What a :func:`corelib.tl.stability.stability_table` says about ``method`` across seeds: its mean matched
    cosine above its own chance level, the share of concepts that come back closely (``close``), and the same
    excess for the ``null`` (the random encoder), whose chance level differs (fewer concepts stay alive)."""
    rows = table.set_index(["method", "mode"])
    if (method, "seeds") not in rows.index:
        return f"{method} was not compared across seeds."
    r = rows.loc[(method, "seeds")]
    excess = r["mean_cosine_mean"] - r["chance_mean_cosine"]
    text = (
        f"{method} across seeds: mean matched cosine {r['mean_cosine_mean']:.3f} ± {r['mean_cosine_std']:.3f} "
        f"(chance {r['chance_mean_cosine']:.3f}, {excess:+.3f})"
    )
    if f"{close}_mean" in r:
        text += f"; {r[f'{close}_mean']:.1%} of its matched pairs reach cosine ≥ {close.split('_')[-1]}"
    if (null, "seeds") not in rows.index:
        return text + f". No {null} null was fitted."
    n = rows.loc[(null, "seeds")]
    null_excess = n["mean_cosine_mean"] - n["chance_mean_cosine"]
    text += (
        f". {null}: {n['mean_cosine_mean']:.3f} ± {n['mean_cosine_std']:.3f} (chance "
        f"{n['chance_mean_cosine']:.3f}, {null_excess:+.3f}). "
    )
    if excess <= null_excess:
        return (
            text
            + "The trained encoder's concepts are no further above chance than the null's: no stability from training."
        )
    return text + (
        f"The trained encoder's concepts are further above chance than the null's ({excess:+.3f} vs "
        f"{null_excess:+.3f}): training adds some stability"
        + (
            ", but few concepts come back closely when the SAE is retrained."
            if f"{close}_mean" in r and r[f"{close}_mean"] < 0.5
            else "."
        )
    )


def describe_cross_dataset(summary: Mapping[str, float], r2: pd.DataFrame, near: float = 0.02) -> str:
    """The reading of the cross-dataset comparison (:class:`corelib.runs.steps.CrossDatasetStudy`): the matched
    cosine of the two datasets' dictionaries against chance (within ``near`` of it reads as chance), and how
    well each SAE reconstructs the other dataset's held-out cells (``r2``: ``train_dataset``,
    ``test_dataset``, ``r2``). An empty ``summary`` (the comparison was skipped) says so."""
    if not summary:
        return "No cross-dataset comparison in this run (skipped above)."
    gap = summary["mean_cosine"] - summary["chance_mean_cosine"]
    text = (
        f"Across datasets the matched cosine is {summary['mean_cosine']:.3f}, against {summary['chance_mean_cosine']:.3f} "
        f"for random directions of the same shape ({gap:+.3f}); {summary['frac_ge_0.7']:.1%} of the pairs reach "
        "cosine ≥ 0.7. "
        + (
            "That is indistinguishable from chance: the two SAEs do not learn the same concepts one to one."
            if abs(gap) < near
            else "The two dictionaries align beyond chance."
        )
    )
    r2 = r2.set_index(["train_dataset", "test_dataset"])["r2"]
    for a, b in r2.index:
        if a != b:
            text += (
                f" The SAE trained on {a} reconstructs {b}'s held-out cells with R² {r2[(a, b)]:.3f} "
                f"({r2[(a, a)]:.3f} on its own)."
            )
    return text


def describe_classes(results: Mapping[str, Any]) -> str:
    """The classes a probe task (:func:`corelib.tl.probes.probe_features`) kept and those it dropped for too
    few cells; "" when the task was skipped (it printed why)."""
    kept, dropped = task_classes(results)
    if not kept:
        return ""
    gone = ", ".join(f"{c} ({n} cells)" for c, n in dropped.items()) or "none"
    return f"Classes kept: {', '.join(map(str, kept))}. Dropped for too few cells: {gone}."


def describe_phases(counts: Mapping[str, int], phase_N: pd.Series) -> str:
    """The cell-cycle genes found (:func:`corelib.tl.probe_labels.cell_cycle_phase`'s counts) and the cells per
    phase; "" when no phase was called (the scoring printed why)."""
    called = phase_N.value_counts()
    if not called.sum():
        return ""
    model = (
        f" (the model sees {counts['n_s_model']} and {counts['n_g2m_model']})"
        if "n_s_model" in counts
        else ""
    )
    return (
        f"The data have {counts['n_s_data']} of the {counts['n_s_list']} S and {counts['n_g2m_data']} of the "
        f"{counts['n_g2m_list']} G2M genes{model}. Cells per phase: "
        + ", ".join(f"{p} {n}" for p, n in called.items())
        + "."
    )


def describe_batch(info: Mapping[str, Any], scores: pd.DataFrame) -> str:
    """The reading of notebook 04's batch concepts (:class:`corelib.runs.steps.batch.BatchStudy`'s ``info`` and
    ``scores``): how many concepts the rule found; scib's batch and bio scores after suppressing them against
    the uncorrected embedding and random concepts (mean ± sd over seeds); the cell-type concepts' bio change
    (the null that must cost biology); Harmony beside it; and the verdict of the ``batch_suppression`` claim
    (:func:`corelib.tl.claims.batch_suppression`, judged as notebook 07 judges it). A skipped study gives ""
    (the step said why)."""
    if "skipped" in info:
        return ""
    batch, bio = BATCH_SCORE, BIO_SCORE
    base, found = scores.loc["uncorrected"], scores.loc["batch concepts"]
    random = scores[scores.index.str.startswith("random concepts")]
    n = info["n_batch_concepts"]
    text = (
        f"{n} of {info['n_concepts']} concepts mark a dataset within a cell type (AUROC ≥ {info['min_auroc']:.2f} "
        f"and above the permutation null's {info['null_auroc']:.3f}; the SAE's R² on both datasets is "
        f"{info['sae_r2']:.3f}). "
    )
    if n == 0:
        return text + "Nothing was suppressed, so the corrected embedding is the uncorrected one."
    claim = evaluate_claims(batch_suppression(scores)).loc["batch_suppression"]
    text += (
        f"Suppressing them moves scib's batch score {base[batch]:.3f} → {found[batch]:.3f} and its bio score "
        f"{base[bio]:.3f} → {found[bio]:.3f}; as many random concepts give batch "
        f"{format_mean_std(random[batch].mean(), random[batch].std())} over {len(random)} seeds. "
    )
    if "cell-type concepts" in scores.index:
        text += (
            f"Suppressing as many cell-type concepts moves bio by "
            f"{scores.loc['cell-type concepts', bio] - base[bio]:+.3f} (the null that must cost biology). "
        )
    if "Harmony" in scores.index:
        h = scores.loc["Harmony"]
        text += f"Harmony, for comparison: batch {h[batch]:.3f}, bio {h[bio]:.3f}. "
    return (
        text
        + f"The claim that suppression improves integration without losing biology {claim['verdict']}: "
        + f"{claim['reason']}."
    )


def describe_probes(summary: pd.DataFrame, tolerance: float = 0.03) -> str:
    """One sentence per task of a :func:`corelib.tl.probes.probe_summary` table indexed ``"<task> /
    <features>"``: concept vs neuron accuracy (mean ± std over splits) against chance (1 / number of classes,
    the splits are balanced)."""
    lines = []
    for task in dict.fromkeys(i.split(" / ")[0] for i in summary.index):
        c, n = summary.loc[f"{task} / concepts"], summary.loc[f"{task} / neurons"]
        gap = float(c["accuracy_mean"]) - float(n["accuracy_mean"])
        lines.append(
            f"{task}: concepts {float(c['accuracy_mean']):.3f} ± {float(c['accuracy_std']):.3f}, neurons "
            f"{float(n['accuracy_mean']):.3f} ± {float(n['accuracy_std']):.3f} (chance {1 / int(c['n_classes']):.3f});"
            f" concepts are {'within' if abs(gap) <= tolerance else 'not within'} {tolerance} of neurons ({gap:+.3f})."
        )
    return "\n".join(lines)


def describe_shown_attribution(
    from_03: Attribution | None, added: Attribution | None, shown: Sequence[int]
) -> str:
    """How the concepts a Fig. 5 table shows got their genes (:func:`corelib.runs.steps.probes.attribute_shown`):
    how many notebook 03 attributed, how many were attributed now and with which N_p and N_c (``added`` None:
    the run has no model to attribute with)."""
    if added is None:
        return absent(
            f"The genes of the {len(shown)} concepts the top units show (counterfactual attribution)"
        )
    shown = set(int(u) for u in shown)
    earlier = set() if from_03 is None else set(from_03.units[from_03.attributed].tolist())
    now = set(added.units[added.attributed].tolist())
    n_p, n_c = added.prototypes.shape[1], added.counterfactuals.shape[2]
    missing = len(shown - earlier - now)
    return (
        f"The top units show {len(shown)} concepts: notebook 03 attributed {len(shown & earlier)} of them "
        f"(a sample of its concepts), the other {len(shown & now)} are attributed by this notebook with the same engine and "
        f"settings (N_p = {n_p} prototypes, N_c = {n_c} counterfactuals)"
        + (f"; {missing} could not be (too few active or inactive cells)." if missing else ".")
    )


def describe_top_units(tables: Mapping[str, pd.DataFrame]) -> str:
    """What :func:`corelib.tl.probes.top_units` tables (``{"concepts": ..., "neurons": ...}``) say about Fig. 5:
    per feature set, how many top units have genes and how many name a marker of their class."""
    lines = []
    for name, t in tables.items():
        if "n_markers" not in t or not t["attributed"].any():
            lines.append(f"{name}: no attributed genes to compare with markers.")
            continue
        counted = t["n_markers"].dropna()
        lines.append(
            f"{name}: {int(t['attributed'].sum())} of {len(t)} top units have attributed genes; "
            f"{int((counted > 0).sum())} of {len(counted)} with a marker list have at least one marker of their "
            f"class among their top genes (mean {counted.mean():.1f} markers per unit)."
        )
    return "\n".join(lines)


def describe_random_reconstruction(
    reconstruction: pd.DataFrame, spectra: pd.DataFrame, run: str = "run", null: str = "random encoder"
) -> str:
    """Why the random encoder's SAEs reconstruct as well as they do: their held-out R^2 (``reconstruction``, a
    :func:`corelib.tl.claims.summarize` table with ``arm`` and ``mean``) beside how many directions each
    embedding uses (``spectra``, :func:`corelib.tl.spectrum.spectrum_table` indexed by the same arms)."""
    r2 = reconstruction.set_index("arm")["mean"]
    a, b = spectra.loc[run], spectra.loc[null]
    top = next(c for c in spectra.columns if c.startswith("top") and c != "top1_share")
    n_top = top.removeprefix("top").removesuffix("_share")
    text = (
        f"Held-out R²: {r2[run]:.3f} on the trained encoder, {r2[null]:.3f} on the random encoder. Effective rank "
        f"of the embedding (of {int(a['dim'])} dimensions): {a['effective_rank']:.1f} trained, "
        f"{b['effective_rank']:.1f} random; its first {n_top} directions hold {a[top]:.0%} and {b[top]:.0%} of the "
        "variance. "
    )
    if r2[null] > r2[run] and b["effective_rank"] < a["effective_rank"]:
        return text + (
            "The random encoder's cells spread along fewer directions, and a code of k concepts rewrites a "
            "low-rank embedding more easily: its higher R² says that its embedding is simpler, not that its "
            "concepts are better."
        )
    if r2[null] > r2[run]:
        return (
            text
            + "The random encoder reconstructs better without a simpler spectrum: the rank does not explain it."
        )
    return text + "The trained encoder reconstructs at least as well as the random one."


def summarize_verdicts(claims: pd.DataFrame) -> str:
    """The claims table in one sentence: how many claims get each verdict, and which (the report's takeaway)."""
    given = set(claims["verdict"])
    found = [v for v in VERDICTS if v in given] + sorted(given - set(VERDICTS))
    parts = []
    for verdict in found:
        names = claims.index[claims["verdict"] == verdict]
        word = verdict if len(names) == 1 else {"holds": "hold", "fails": "fail"}.get(verdict, verdict)
        parts.append(f"{len(names)} {word} ({', '.join(map(str, names))})")
    return f"Of this run's {len(claims)} claims, {'; '.join(parts)}."


def describe_claims(claims: pd.DataFrame) -> str:
    """One sentence per claim of :func:`corelib.tl.claims.evaluate_claims`'s table: value, comparison, null,
    verdict."""
    lines = []
    for name, r in claims.iterrows():
        lines.append(
            f"{name}: {r['statement']} — this run {format_mean_std(r['value'], r['std'])} (n={int(r['n'])}), "
            f"{r['comparison']} {format_mean_std(r['comparison_value'], r['comparison_std'])}, "
            f"null ({r['null']}) {format_mean_std(r['null_value'], r['null_std'])}; paper: {r['paper']}. "
            f"Verdict: {r['verdict'].upper()} ({r['reason']})."
        )
    return "\n".join(lines)
