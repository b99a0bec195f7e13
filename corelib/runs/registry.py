"""The steps of a run, in order: each has a name, the notebook that runs it, its folder and its inputs.

One table that the rest of :mod:`corelib.runs` reads: :data:`~corelib.runs.layout.LAYOUT` puts each step's
outputs under its folder, :meth:`~corelib.runs.layout.RunDir.require` names the step (and the notebook to rerun)
that writes a missing or damaged file, the pre-flight reads each step's settings by its notebook's name (the
``notebooks:`` section of a params file), and the pipeline checks that the notebooks it runs are these.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """One step of a run.

    Attributes
    ----------
    name
        Short name used in messages, e.g. ``"interpret"``.
    notebook
        The notebook that runs it (also its section under ``notebooks:`` in a params file).
    folder
        Its outputs' folder in the run directory.
    does
        What it computes, in a line.
    needs
        The steps whose outputs it reads.
    """

    name: str
    notebook: str
    folder: str
    does: str
    needs: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"step {self.name!r} (notebook {self.notebook})"


STEPS: tuple[Step, ...] = (
    Step("embed", "01_embed", "01_embed", "load the cells, embed them with the model, UMAP"),
    Step("sae", "02_sae_scale_sweep", "02_sae", "train Top-K SAEs at several scales, pick one", ("embed",)),
    Step(
        "interpret",
        "03_interpret_concepts",
        "03_interpret",
        "metadata calls, counterfactual attribution, DEG baseline, deletion curves, GSEA and ORA",
        ("embed", "sae"),
    ),
    Step(
        "stability",
        "04_stability",
        "04_stability",
        "SAEs across seeds, halves and datasets; PCA/ICA/NMF baselines",
        ("embed", "sae"),
    ),
    Step(
        "probes",
        "05_downstream_probes",
        "05_probes",
        "linear probes on concepts and neurons; attribution of the concepts they show that interpret did not attribute",
        ("embed", "sae", "interpret"),
    ),
    Step(
        "explorer",
        "06_concept_explorer",
        "06_explorer",
        "concept cards, expert labels, the blinded study, the atlas",
        ("embed", "sae", "interpret", "stability"),
    ),
    Step(
        "claims",
        "07_claims",
        "07_claims",
        "every headline claim over SAE seeds, beside its comparison and its null",
        ("embed", "sae", "interpret"),
    ),
)

#: Steps by name.
BY_NAME: dict[str, Step] = {step.name: step for step in STEPS}
#: Folders of the run directory written by a step that is not the folder's own (the explorer's atlas).
EXTRA_FOLDERS: dict[str, str] = {"atlas": "explorer"}
#: The step writing each folder of the run directory.
BY_FOLDER: dict[str, Step] = {s.folder: s for s in STEPS} | {f: BY_NAME[n] for f, n in EXTRA_FOLDERS.items()}


def step(name: str) -> Step:
    """The step called ``name``; a KeyError lists the steps."""
    if name not in BY_NAME:
        raise KeyError(f"No step {name!r}; the steps are {', '.join(BY_NAME)}.")
    return BY_NAME[name]


def writer(path: str) -> Step | None:
    """The step that writes a run-relative ``path`` (a :data:`~corelib.runs.layout.LAYOUT` value), None for
    the run's own files (``params.yaml``, ``index.html``, ``notebooks/``...)."""
    return BY_FOLDER.get(path.split("/")[0])
