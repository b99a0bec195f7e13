"""Claims: verdicts from measurements (against a brute-force reading of the rule) and the claims page."""

import re

import numpy as np
import pandas as pd
import pytest

import corelib as cl
from corelib.tl.claims import CLAIMS, evaluate_claims, measurements_frame


def _arms(claim: str, arms: dict[str, list[float]]) -> pd.DataFrame:
    return pd.concat(
        [measurements_frame(claim, arm, values) for arm, values in arms.items()], ignore_index=True
    )


def _two_se_beats(a: list[float], b: list[float]) -> bool:
    """Brute force: mean difference beyond twice its standard error (sample stds)."""
    a, b = np.array(a), np.array(b)
    var = [x.var(ddof=1) / len(x) if len(x) > 1 else 0.0 for x in (a, b)]
    se = np.sqrt(sum(var))
    return a.mean() - b.mean() > 2 * se


@pytest.mark.parametrize(
    ("run", "neurons", "null", "expected"),
    [
        ([0.30, 0.32, 0.31], [0.10], [0.02, 0.03, 0.01], "holds"),
        ([0.30, 0.32, 0.31], [0.40], [0.02, 0.03, 0.01], "fails"),  # below the comparison
        ([0.30, 0.32, 0.31], [0.10], [0.40, 0.42, 0.41], "fails"),  # below the null
        ([0.30, 0.40, 0.20], [0.10], [0.28, 0.18, 0.26], "at the margin"),  # above, within the noise
        ([0.30, 0.40, 0.20], [0.10], [0.32, 0.38, 0.33], "at the margin"),  # below, within the noise
        ([0.0, 0.0, 0.0], [0.0], [0.0, 0.0, 0.0], "no power"),  # nothing detected anywhere
    ],
)
def test_greater_claims_follow_the_two_standard_error_rule(run, neurons, null, expected):
    table = evaluate_claims(
        _arms("gsea_annotation", {"run": run, "neurons": neurons, "permuted genes": null})
    )
    row = table.loc["gsea_annotation"]
    assert row["verdict"] == expected, row["reason"]
    assert row["value"] == pytest.approx(np.mean(run)) and row["std"] == pytest.approx(np.std(run, ddof=1))
    if expected == "holds":
        assert _two_se_beats(run, neurons) and _two_se_beats(run, null)
    if expected == "at the margin":
        assert not _two_se_beats(run, null) and not _two_se_beats(null, run)
    if expected == "fails":
        assert _two_se_beats(neurons, run) or _two_se_beats(null, run)


def test_less_claims_are_mirrored():
    deletion = {"run": [0.5, 0.52, 0.48], "DEG order": [0.9, 0.92, 0.91], "random order": [0.97, 0.98, 0.99]}
    assert evaluate_claims(_arms("deletion", deletion)).loc["deletion", "verdict"] == "holds"
    deletion["run"] = [0.95, 0.93, 0.94]  # above the DEG curve
    assert evaluate_claims(_arms("deletion", deletion)).loc["deletion", "verdict"] == "fails"


def test_within_and_threshold_rules_and_missing_arms():
    m = pd.concat(
        [
            _arms("probes", {"run": [0.90, 0.91], "neurons": [0.95], "random encoder": [0.5]}),
            _arms("reconstruction", {"run": [0.94, 0.93], "threshold": [0.95]}),
        ]
    )
    table = evaluate_claims(m)
    assert table.loc["probes", "verdict"] == "fails"  # 0.045 apart > 0.03
    assert table.loc["reconstruction", "verdict"] == "fails"
    assert (
        table.loc[["gsea_annotation", "deletion", "stability", "cell_type_specific"], "verdict"]
        == "not measured"
    ).all()
    assert list(table.index) == list(CLAIMS)


@pytest.mark.parametrize("noise", [-1e-7, 0.0, 1e-7])
def test_float_noise_cannot_flip_a_verdict(noise):
    """Replicates that agree exactly (SE 0) and differ from the comparison by float noise only: the verdict
    is the same whatever the sign of the noise (another thread count or processor)."""
    m = pd.concat(
        [
            _arms("deletion", {"run": [0.5 + noise] * 3, "DEG order": [0.5], "random order": [0.9] * 3}),
            _arms("probes", {"run": [0.90 + noise] * 2, "neurons": [0.93], "random encoder": [0.5]}),
            _arms("reconstruction", {"run": [0.95 + noise] * 2, "threshold": [0.95]}),
        ]
    )
    table = evaluate_claims(m)
    assert (table.loc[["deletion", "probes", "reconstruction"], "verdict"] == "at the margin").all()
    assert table["reason"].str.len().gt(0).all()


def test_within_rule_margin_follows_the_spread():
    near = {"run": [0.90, 0.91, 0.90], "neurons": [0.93], "random encoder": [0.5]}  # |gap| 0.027 ~ 0.03
    assert evaluate_claims(_arms("probes", near)).loc["probes", "verdict"] == "at the margin"
    near["run"] = [0.925, 0.926, 0.925]
    assert evaluate_claims(_arms("probes", near)).loc["probes", "verdict"] == "holds"


def test_unknown_claims_and_columns_are_named():
    with pytest.raises(ValueError, match="Unknown claims"):
        evaluate_claims(measurements_frame("telepathy", "run", [1.0]))
    with pytest.raises(ValueError, match="lacks columns"):
        evaluate_claims(pd.DataFrame({"claim": ["probes"], "value": [1.0]}))


def test_the_report_shows_a_planted_failing_claim_as_failing(tmp_path):
    run = cl.runs.open_run(tmp_path / "run")
    index = cl.runs.pipeline.write_index(run, ["01_embed"])
    assert "Not measured yet" in index.read_text()  # no claims table yet, and the page says why

    planted = pd.concat(
        [
            _arms("gsea_annotation", {"run": [0.05, 0.06, 0.04], "neurons": [0.3], "permuted genes": [0.01]}),
            _arms(
                "stability", {"run": [0.7, 0.71, 0.72], "chance": [0.4, 0.4, 0.4], "random encoder": [0.5]}
            ),
        ]
    )
    run.write_table("claims", evaluate_claims(planted))
    page = cl.runs.pipeline.write_index(run, ["01_embed"]).read_text()
    rows = {
        m.group(2): m.group(1)
        for m in re.finditer(r"<tr class='([a-z-]+)'><td><b>[^<]*</b><br><small>([a-z_]+),", page)
    }
    assert rows["gsea_annotation"] == "fails" and rows["stability"] == "holds"
    assert rows["deletion"] == "not-measured"
    assert "0.050 ± 0.010" in page  # the run's value with its spread
    assert "neurons: 0.300" in page and "permuted genes: 0.010" in page


class _Signed:
    """Stands for an Attribution: its expression-signed scores (genes x units)."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.signed, self._frame = True, frame

    def frame(self, kind: str) -> pd.DataFrame:
        return self._frame


def test_ora_annotation_matches_the_gene_sets_under_the_organism_setting():
    """Notebook 07's organism reaches the ORA of its claims: mouse genes under organism mouse match the human
    sets by case without the warning that the human setting gives them."""
    import warnings

    claims = cl.tl.claims
    genes = [f"Gene{i}" for i in range(400)]
    scores = pd.DataFrame(np.linspace(1, -1, 400)[:, None], index=genes, columns=[0])
    sets = {"TOP": [g.upper() for g in genes[:20]], "MID": [g.upper() for g in genes[200:220]]}
    attributions = {(claims.RUN, 0): _Signed(scores)}
    mean = pd.Series(np.random.default_rng(0).random(400), index=genes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = claims.ora_annotation(attributions, _Signed(scores), mean, gene_sets=sets, organism="mouse")
    shares = table.set_index("arm")["value"]
    assert shares[claims.RUN] == 1.0 and shares["neurons"] == 1.0
    with pytest.warns(UserWarning, match="set organism: mouse"):
        claims.ora_annotation(attributions, None, mean, gene_sets=sets)
