"""Params files: reading one (:func:`load_params`), the values each notebook receives from it
(:func:`notebook_parameters`) and their types (:func:`check_types`). The pipeline (:mod:`corelib.runs.pipeline`)
and a notebook run by hand (:mod:`corelib.runs.by_hand`) both read params files through this module.

Parameter types: every value of a params file is checked against the type its notebook declares.

A notebook declares a parameter by its default in the ``parameters`` cell, and the default says the type
(:func:`infer`): ``10`` an int (a bool or ``"10"`` is not one), ``0.95`` a number, ``"pbmc3k"`` a str, ``[0]`` a
list of ints, ``{...}`` a mapping whose known keys have the types of their defaults. Where the default does
not show the type (None, or one of several accepted types) :data:`DECLARED` gives it, and ``model_options`` are
those of the chosen model (:data:`MODEL_OPTIONS`, for :data:`corelib.encoders.MODELS`).

:func:`check_types` runs before the run directory is created and before the data pre-flight, so a
``"3"`` for an int, a string for a list (``metadata_keys: cell_type``, else read letter by letter) or
``epochs: "5"`` (else a second, equal-looking cache key) stops the run at once, all problems in one error.
Values are never converted.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from corelib.datasets import BUNDLED_PREFIX, DATASETS, resolve_bundled
from corelib.encoders import MODELS

#: Keys every params file may set at top level; notebooks declare the ones they use.
COMMON_KEYS: dict[str, str] = {
    "run_name": "name of the run; the run directory defaults to runs/<run_name>",
    "run_dir": "explicit run directory (overrides runs/<run_name>)",
    "overwrite": "recompute and replace results made from other inputs (instead of stopping)",
    "seed": "random seed for everything stochastic",
    "device": "auto | cpu | cuda",
    "dask": "Dask cluster for per-concept work: {n_workers: 2} or {scheduler_address: tcp://...}; null: none",
    "dataset": "bundled dataset name (pbmc3k, pbmc68k_reduced) or path to an .h5ad file",
    "counts_layer": ".h5ad only: layer holding raw counts (null: .X)",
    "gene_symbols_key": ".h5ad only: var column holding gene symbols when var_names are Ensembl ids",
    "duplicate_symbols": ".h5ad only: genes sharing a symbol: suffix (LYZ-1, warned) | sum (their counts added)",
    "drop_empty_cells": ".h5ad only: drop the cells without a single count (printed) instead of stopping",
    "organism": "human | mouse: species of the gene symbols; mouse maps the human gene resources by case",
    "label_key": "obs column with cell-type labels",
    "metadata_keys": "obs columns used to characterise concepts",
    "batch_key": "obs column holding each cell's batch: notebook 03 marks the concepts that mark a batch (explorer, "
    "atlas); null: none",
    "model": "encoder: scvi | scgpt | pca | precomputed (an embedding already in obsm, no model)",
    "embedding_key": "model precomputed only: the obsm key holding the cells' embedding (e.g. X_geneformer)",
    "model_path": "pretrained model directory, or bundled:<name> (bundled:pbmc3k_scvi, the demo's scVI); null: "
    "train/fit one on the data and cache it",
    "trust_pickle": "allow loading pickle-based checkpoints (scvi-tools model.pt) from model_path",
    "random_init": "use the model architecture with random weights (the control)",
    "model_options": "model-specific options (e.g. scVI epochs, n_latent; PCA n_comps)",
}

#: The numbered notebooks and the params recipes ship inside the package (``notebooks/`` and ``params/`` at the
#: repository root link to them), so an installed corelib runs the pipeline too.
NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
PARAMS_DIR = Path(__file__).resolve().parents[1] / "params"

#: Params whose values are file paths; relative ones are resolved by :func:`load_params`.
PATH_KEYS = frozenset({"dataset", "model_path", "stability_dataset"})


@dataclass(frozen=True)
class Kind:
    """A parameter's declared type.

    Attributes
    ----------
    name
        As messages write it (``"int"``, ``"list of str"``, ``"str or None"``).
    accepts
        Whether a value is of this type (a mapping's keys are checked against ``fields`` apart).
    example
        A valid value, shown in messages (the notebook's default when it has one).
    fields
        A mapping's known keys and their kinds.
    options_of
        What ``fields`` are the options of (``"model scvi"``); set, other keys are errors.
    """

    name: str
    accepts: Callable[[Any], bool]
    example: Any = None
    fields: Mapping[str, Kind] = field(default_factory=dict)
    options_of: str | None = None


def _instance(*types: type) -> Callable[[Any], bool]:
    """An ``isinstance`` test in which a bool is no int (YAML's ``true`` for a count is a mistake)."""
    return lambda value: isinstance(value, types) and (bool in types or not isinstance(value, bool))


ANY = Kind("anything", lambda value: True)
BOOL = Kind("bool", _instance(bool))
INT = Kind("int", _instance(int))
FLOAT = Kind("float", _instance(int, float))
STR = Kind("str", _instance(str))
MAPPING = Kind("mapping", _instance(Mapping))


def optional(kind: Kind, example: Any) -> Kind:
    """``kind`` or None, with a valid ``example`` that is not None."""
    return Kind(f"{kind.name} or None", lambda value: value is None or kind.accepts(value), example)


def list_of(item: Kind, example: Any = None) -> Kind:
    """A list whose elements are of ``item``'s kind (:data:`ANY`: a list of anything)."""
    name = "list" if item is ANY else f"list of {item.name}"
    return Kind(name, lambda value: isinstance(value, list) and all(map(item.accepts, value)), example)


def infer(default: Any) -> Kind:
    """The type a notebook default declares; None declares nothing (:data:`ANY`).

    A list's elements have their kind when all have the same one (``[0]``: a list of int); a dict is a mapping
    whose keys that the default holds have the kinds of its values, other keys free.
    """
    if isinstance(default, list):
        kinds = {kind.name: kind for kind in map(infer, default)}
        kind = list_of(kinds.popitem()[1] if len(kinds) == 1 else ANY)
    elif isinstance(default, dict):
        kind = replace(MAPPING, fields={key: infer(value) for key, value in default.items()})
    else:
        scalars = ((bool, BOOL), (int, INT), (float, FLOAT), (str, STR))  # bool first: a bool is an int
        kind = next((kind for cls, kind in scalars if isinstance(default, cls)), ANY)
    return replace(kind, example=default)


#: Parameters whose default does not show their type: None defaults (counts_layer: None means .X, yet a
#: layer is a str) and defaults that are one of several accepted types (min_r2: None selects by c/d alone).
DECLARED: dict[str, Kind] = {
    "run_dir": optional(STR, "runs/demo"),
    "device": Kind(
        "one of auto, cpu, cuda, cuda:<index>",
        lambda value: isinstance(value, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", value) is not None,
        "auto",
    ),
    "model": Kind(
        f"one of {', '.join(MODELS)}", lambda value: isinstance(value, str) and value in MODELS, "scvi"
    ),
    "dask": optional(MAPPING, {"n_workers": 2}),
    "counts_layer": optional(STR, "counts"),
    "gene_symbols_key": optional(STR, "gene_symbols"),
    "model_path": optional(STR, "models/scvi"),
    "embedding_key": optional(STR, "X_geneformer"),
    "batch_key": optional(STR, "batch"),
    "max_concepts": optional(INT, 100),
    "min_active_cells": optional(INT, 10),
    "min_r2": optional(FLOAT, 0.95),
    "selected_sae": optional(STR, "c500_k8_s0"),
    "sae_name": optional(STR, "c500_k8_s0"),
    "null_units": optional(INT, 50),
    "gene_sets": Kind(
        "str or list of str",
        lambda value: STR.accepts(value) or list_of(STR).accepts(value),
        "GO_Biological_Process_2023",
    ),
    "stability_dataset": optional(STR, "pbmc3k"),
    "stability_counts_layer": optional(STR, "counts"),
    "stability_epochs": optional(INT, 100),
}

#: The type of every model option (:data:`corelib.encoders.MODELS` says which model takes which).
MODEL_OPTIONS: dict[str, Kind] = {
    "epochs": optional(INT, 50),
    "early_stopping": replace(BOOL, example=True),
    "n_latent": replace(INT, example=50),
    "n_layers": replace(INT, example=1),
    "n_hidden": replace(INT, example=128),
    "batch_size": replace(INT, example=128),
    "threads": optional(INT, 2),
    "gene_id_column": optional(STR, "feature_id"),
    "max_seq_len": optional(INT, 1200),
    "embsize": replace(INT, example=512),
    "nheads": replace(INT, example=8),
    "d_hid": replace(INT, example=512),
    "nlayers": replace(INT, example=12),
    "n_comps": replace(INT, example=50),
    "max_cells": optional(INT, 50_000),
}


def notebook_defaults(notebook: str | os.PathLike) -> dict[str, Any]:
    """The defaults of a notebook's ``parameters`` cell, as papermill reads them (Python literals).

    Read with ``json`` and ``ast``: every notebook calls this at start-up, and importing papermill (nbformat,
    jsonschema) costs about a second there; ``tests/test_params.py`` checks it against ``papermill``.
    """
    cells = json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not tagged:
        return {}
    source = tagged[0]["source"]
    tree = ast.parse(source if isinstance(source, str) else "".join(source))
    return {
        target.id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    }


def check_types(params: Mapping[str, Any], defaults: Mapping[str, Mapping[str, Any]]) -> None:
    """Check every value that a notebook will receive against the type it declares.

    Parameters
    ----------
    params
        A params file as :func:`load_params` returns it.
    defaults
        ``{notebook name: {parameter: default}}`` (:func:`notebook_defaults`).

    Raises
    ------
    ValueError
        One line per wrong value, ``<where> <name>: got <value> (<type>), expected <type>; e.g. <valid>``,
        where is ``top-level`` or the notebook whose section sets it; unknown model options too.
    """
    problems = dict.fromkeys(
        line
        for notebook, declared in defaults.items()
        for line in _notebook_problems(params, notebook, declared)
    )
    if problems:
        raise ValueError(
            "The params file sets values of the wrong type; nothing was run:\n- "
            + "\n- ".join(problems)
            + "\nWrite each as its example shows. In YAML 5 is an int and '5' a str, [a, b] a list; 1.0e-3 is a "
            "float but 1e-3 a str (the dot is needed)."
        )


def _notebook_problems(params: Mapping[str, Any], notebook: str, declared: Mapping[str, Any]) -> list[str]:
    """The wrong values one notebook would receive: its own section's, else the top-level ones."""
    own = params["notebooks"].get(notebook) or {}
    values = {**params, **own}
    kinds = {name: DECLARED.get(name) or infer(default) for name, default in declared.items()}
    model = values.get("model", declared.get("model"))
    if "model_options" in kinds and DECLARED["model"].accepts(model):  # the notebook that builds the encoder
        fields = {name: MODEL_OPTIONS[name] for name in MODELS[model]}
        kinds["model_options"] = replace(kinds["model_options"], fields=fields, options_of=f"model {model}")
    return [
        line
        for name, kind in kinds.items()
        if name in values
        for line in _problems(notebook if name in own else "top-level", [name], values[name], kind)
    ]


def _problems(where: str, path: list[str], value: Any, kind: Kind) -> list[str]:
    """Lines for a value of the wrong kind, or for a mapping's wrong values and unknown keys."""
    name = ".".join(path)
    if not kind.accepts(value):
        got = "None" if value is None else f"{value!r} ({type(value).__name__})"
        return [f"{where} {name}: got {got}, expected {kind.name}; e.g. {_example(path, kind.example)}"]
    if not kind.fields or not isinstance(value, Mapping):
        return []
    lines = [
        line
        for key, item in value.items()
        if key in kind.fields
        for line in _problems(where, [*path, key], item, kind.fields[key])
    ]
    if kind.options_of:
        lines += [
            f"{where} {name}.{key}: {kind.options_of} has no option {key!r}; remove it or use one of "
            f"{', '.join(kind.fields)}."
            for key in value
            if key not in kind.fields
        ]
    return lines


def _example(path: list[str], example: Any) -> str:
    """``path`` set to ``example`` as YAML on one line: ``n_prototypes: 10``, ``model_options: {epochs: 50}``."""
    for key in reversed(path):
        example = {key: example}
    return yaml.safe_dump(example, default_flow_style=True, width=float("inf")).strip()[1:-1]


def load_params(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a params file.

    Relative paths in it (the :data:`PATH_KEYS` values, at top level or in a notebook's section) are made
    absolute with :func:`resolve_path`, so that they mean the same whatever folder the notebooks run in.

    Parameters
    ----------
    path
        A YAML file with the common keys at top level and an optional ``notebooks`` mapping.

    Returns
    -------
    The parameters as a dict (``notebooks`` always present).
    """
    path = shipped_recipe(Path(path))
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ValueError(
            f"{path}, {where}: not valid YAML ({getattr(err, 'problem', err)}); check the indentation, the "
            "': ' after each key and the brackets there."
        ) from None
    if params is None:
        raise ValueError(
            f"Params file {path} is empty (or only comments): nothing says which data and model to run. Copy a "
            "recipe from params/ (e.g. params/demo.yaml) and edit it."
        )
    if not isinstance(params, dict):
        raise ValueError(
            f"{path} must hold a mapping of parameter names to values, not {type(params).__name__}."
        )
    unknown = sorted(set(params) - set(COMMON_KEYS) - {"notebooks"})
    if unknown:
        raise ValueError(
            f"{path}: unknown top-level keys {_names(unknown)}. Common keys are {_names(COMMON_KEYS)}; notebook-specific "
            "values go under 'notebooks: {<notebook name>: {...}}'."
        )
    params.setdefault("notebooks", {})
    if not isinstance(params["notebooks"], dict):
        raise ValueError(
            f"{path}: 'notebooks' must map notebook names (e.g. 01_embed) to parameter mappings."
        )
    for section in [params, *(s for s in params["notebooks"].values() if isinstance(s, dict))]:
        for key in PATH_KEYS & section.keys():
            section[key] = resolve_path(section[key], path.parent)
    return params


def shipped_recipe(path: Path) -> Path:
    """``path``, or the recipe of that name shipped with corelib when ``path`` is ``params/<name>.yaml`` and
    no such file is here (an installed corelib run from another folder); says so when it substitutes one."""
    if path.exists():
        return path
    shipped = PARAMS_DIR / path.name
    if path.parent in (Path("params"), Path(".")) and shipped.exists():
        print(f"{path} is not in {Path.cwd()}: using the recipe shipped with corelib, {shipped}.")
        return shipped
    names = ", ".join(f"params/{p.name}" for p in sorted(PARAMS_DIR.glob("*.yaml")))
    raise FileNotFoundError(f"Params file {path} not found; the recipes shipped with corelib are {names}.")


def resolve_path(value: Any, base: str | os.PathLike) -> Any:
    """A path from a params file, made absolute.

    Parameters
    ----------
    value
        The value of a :data:`PATH_KEYS` entry. None and the bundled dataset names (``pbmc3k``,
        ``pbmc68k_reduced``) are not paths and are returned as they are; so is an absolute path.
        ``bundled:<name>`` names a pretrained encoder shipped with corelib: its folder, checked
        (:func:`corelib.datasets.pretrained`).
    base
        The params file's folder: a relative path names a file there when one exists, else it is relative to
        the current working directory.
    """
    if not isinstance(value, str) or value in DATASETS:
        return value
    if value.startswith(BUNDLED_PREFIX):
        return resolve_bundled(value)
    path = Path(value).expanduser()
    beside = Path(base) / path
    return str((beside if beside.exists() else path).absolute())


def notebook_parameters(params: dict[str, Any], name: str, declared: set[str]) -> dict[str, Any]:
    """The values to inject into one notebook: common keys and its own section, restricted to ``declared``."""
    own = params["notebooks"].get(name) or {}
    undeclared = sorted(set(own) - declared)
    if undeclared:
        raise ValueError(
            f"params for notebook {name} set {_names(undeclared)}, which its parameters cell does not declare "
            f"(declared: {_names(declared)})."
        )
    values = {k: v for k, v in params.items() if k in declared and k != "notebooks"}
    values.update(own)
    return values


def _names(names: Iterable[Any]) -> str:
    """Sorted names as plain comma-separated text for messages (no Python list reprs)."""
    return ", ".join(sorted(map(str, names)))
