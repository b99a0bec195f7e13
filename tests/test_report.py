"""corelib.explorer.atlas: the static atlas (self-contained, escaped, searchable), checked in headless Chromium.

The Chromium test needs Debian's ``chromium`` (``apt-get install -y chromium``; ``.ci/run`` installs it) and
skips with that message where it is missing. Set ``ATLAS_SCREENSHOT_DIR`` to keep its screenshot.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import GENES, N_CONCEPTS, SKIPPED_CONCEPT, chromium, make_run

import corelib as cl
from corelib.runs.report import claims_section, run_summary


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("run"))
    cl.explorer.save_label(
        run,
        "C3",
        rater="ann",
        interpretable="yes",
        confidence=5,
        kind="cell type",
        label="monocytes <b>LYZ</b>",
        description="a & b",
    )
    # a finished blinded study's answers show on the cards of the units behind the tokens
    study = cl.explorer.make_study(run, n_concepts=2, n_neurons=1, seed=0)
    token = next(t for t, (kind, _) in study.key.items() if kind == "concept")
    for item in study.tokens:
        cl.explorer.save_label(
            run,
            item,
            rater="bob",
            interpretable="partly",
            confidence=2,
            kind="tissue",
            label="study label" if item == token else "another answer",
            study=study.id,
        )
    return run, cl.tl.units.unit_name(*study.key[token])


@pytest.fixture(scope="module")
def run(labelled):
    return labelled[0]


@pytest.fixture(scope="module")
def atlas(run) -> Path:
    return cl.explorer.atlas.write_atlas(run, progress=False)


def _cards(page: str) -> dict[str, str]:
    """Card id -> its HTML."""
    return dict(re.findall(r'<section class="cx-card" id="([^"]+)"(.*?)</section>', page, flags=re.S))


def test_atlas_has_a_card_per_attributed_concept(labelled, atlas):
    run, study_unit = labelled
    assert atlas == run.path("atlas") and atlas.is_file()
    page = atlas.read_text()
    cards = _cards(page)
    assert sorted(cards) == sorted(f"C{u}" for u in range(N_CONCEPTS) if u != SKIPPED_CONCEPT)
    data = cl.explorer.load_run_data(run)
    for name, body in cards.items():
        card = cl.explorer.concept_card(data, cl.tl.units.parse_unit(name)[1])
        bars = re.findall(r'<g class="cx-gene-bar"><title>([^<]*)</title><text[^>]*>([^<]*)</text>', body)
        assert [gene for _, gene in bars] == card.genes["gene"].tolist()  # same genes, same order as the card
        for (tip, _), desc in zip(bars, card.genes["description"], strict=True):
            assert cl.explorer.html.esc(desc) in tip
        assert f"{card.n_important} genes above" in body
        assert (
            cl.explorer.html.esc(
                cl.explorer.gsea_label(card.annotation) or "no GSEA label: no gene set passed"
            )
            in body
        )
    assert "monocytes &lt;b&gt;LYZ&lt;/b&gt;" in cards["C3"] and "a &amp; b" in cards["C3"]
    assert "study label" in cards[study_unit]
    assert sum("study label" in body for body in cards.values()) == 1


def test_atlas_is_self_contained(atlas):
    page = atlas.read_text()
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', page)
    assert "@import" not in page and "url(" not in page
    assert page.count("data:image/png;base64,") == N_CONCEPTS - 1


def test_text_from_data_is_escaped(run):
    card = cl.explorer.concept_card(run, 0)
    evil = "<script>alert('x')</script>"
    genes = card.genes.copy()
    genes.loc[0, "description"] = evil
    genes.loc[1, "gene"] = '"><img src=x onerror=alert(1)>'
    comp = {"cell_type": pd.Series({"<i>B</i>": 1.0})}
    card = cl.explorer.CardData(**{**card.__dict__, "genes": genes, "composition": comp})
    labels = pd.DataFrame(
        [
            {
                "rater": "<u>r</u>",
                "label": evil,
                "description": evil,
                "interpretable": "yes",
                "confidence": 3,
                "kind": "tissue",
            }
        ]
    )
    html = cl.explorer.html.card_html(card, labels=labels)
    assert "<script" not in html and "<img src=x" not in html and "<i>B</i>" not in html and "<u>" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    page = cl.explorer.html.atlas_html([html], title="<title>")
    assert page.count("<script>") == 1  # only the atlas's own search script


def _chromium_run(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium with no network side-traffic (no sync, updates, background requests)."""
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_atlas_in_headless_chromium(atlas, tmp_path):
    exe = chromium()
    url = atlas.resolve().as_uri() + "#q=C3"
    dom = _chromium_run(exe, tmp_path / "profile", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    cards = re.findall(r'<section class="cx-card" id="([^"]+)"[^>]*?(hidden="")?>', dom.stdout)
    visible = [name for name, hidden in cards if not hidden]
    assert visible == ["C3"], "the search from the address should leave only card C3"
    assert len(cards) == N_CONCEPTS - 1
    assert "1 of 11 cards" in dom.stdout
    c3 = _cards(dom.stdout)["C3"]
    assert c3.count('class="cx-gene-bar"') == 20
    assert GENES[3] in c3

    # every word must match: a gene (all 20 of these few genes are on every card) and C3's label
    gene_dom = _chromium_run(
        exe, tmp_path / "profile", "--dump-dom", atlas.resolve().as_uri() + "#q=lyz%20monocytes"
    )
    shown = [
        n
        for n, hidden in re.findall(
            r'<section class="cx-card" id="([^"]+)"[^>]*?(hidden="")?>', gene_dom.stdout
        )
        if not hidden
    ]
    assert shown == ["C3"]

    shot_dir = Path(os.environ.get("ATLAS_SCREENSHOT_DIR", tmp_path))
    shot_dir.mkdir(parents=True, exist_ok=True)
    shot = shot_dir / "atlas_C3.png"
    res = _chromium_run(exe, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,1000", url)
    assert res.returncode == 0, res.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    _assert_not_blank(shot)


def _assert_not_blank(path: Path) -> None:
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert np.std(img[..., :3]) > 0.05, "the screenshot is blank"


def test_atlas_search_covers_each_cards_top_attributed_and_deg_genes(run, atlas):
    """Issue 25: search read only each card's top 5 genes (S100A8, LYZ, NKG7 found no card in the demo)."""
    page = atlas.read_text()
    for unit in (0, 1):
        card = cl.explorer.concept_card(run, unit)
        found = re.search(rf'id="{card.name}" data-name="[^"]*" data-search="([^"]*)"', page).group(1)
        words = set(found.split())
        assert {g.lower() for g in card.genes["gene"]} <= words
        if "gene" in card.deg:
            assert {g.lower() for g in card.deg["gene"].head(20)} <= words


def test_the_report_names_the_dataset_model_and_sae(tmp_path):
    """Issue 25: index.html did not say which data, model and SAE its claims are about."""
    run = make_run(tmp_path / "run")
    assert run_summary(run) == f"<p>SAE <b>{run.read_json('sae_selected')['sae']}</b>.</p>"
    run.write_json("embed_summary", {"dataset": "pbmc3k", "model": "scvi", "dim": 50})
    run.write_json("sae_selected", {"sae": "c500_k32_s0", "n_concepts": 500, "k": 32, "r2_heldout": 0.9206})
    assert run_summary(run) == (
        "<p>dataset <b>pbmc3k</b>, model <b>scvi</b> (50 dimensions), SAE <b>c500_k32_s0</b> (500 concepts, k 32, "
        "held-out R<sup>2</sup> 0.921).</p>"
    )


def test_the_report_shows_the_claims_forest_plot_inline(tmp_path):
    """Issue 25: index.html had no figure. The forest plot is an inline SVG (no file, nothing loaded)."""
    run = make_run(tmp_path / "run")
    assert "<svg" not in claims_section(run)  # no claims table yet: no figure
    claim = cl.tl.claims.CLAIMS["stability"]
    measurements = pd.concat(
        [
            cl.tl.claims.measurements_frame("stability", "run", [0.45, 0.46, 0.44]),
            cl.tl.claims.measurements_frame("stability", claim.comparison, [0.397, 0.397, 0.398]),
            cl.tl.claims.measurements_frame("stability", claim.null, [0.40, 0.39, 0.41]),
        ]
    )
    claims = cl.tl.claims.evaluate_claims(measurements)
    run.write_table("claims", claims)
    section = claims_section(run)
    svg = re.search(r"<figure><svg .*?</svg><figcaption>.*?</figcaption></figure>", section, flags=re.S)
    assert svg is not None and section.index("<b>In short.</b>") < svg.start() < section.index("<table>")
    assert not re.search(r"""\b(src|href)=["']?(https?:|//)""", section)  # opens offline
    assert "<?xml" not in section and "<!DOCTYPE" not in section  # a fragment of the page, not a file
    # the figure is the table's: one row per claim, drawn from the same file
    ax = cl.pl.claims_forest(run.read_table("claims"))
    assert len(ax.get_yticks()) == len(cl.tl.claims.CLAIMS)
    assert claims_section(run) == section  # the same bytes each time (no date in the SVG)
