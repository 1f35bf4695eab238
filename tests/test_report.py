"""The report: its front page, its captions as Snakemake renders them (Jinja, then docutils), what degenerate designs
make them say, and the figures' layout (long plate names, legends outside the panels, many plates)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import jinja2
import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import yaml
from docutils.core import publish_parts

from cytoagg.evaluate.front_page import front_page_text
from cytoagg.evaluate.plots import plate_labels, plot_effective_rank, plot_map_per_plate
from cytoagg.evaluate.sampling_sweep import summarize_sampling_sweep
from cytoagg.evaluate.summarize import config_design_notes, design_notes
from helpers import REPO, splits

CAPTIONS = REPO / "workflow" / "report"
DEMO = yaml.safe_load((REPO / "config.yaml").read_text())


def long_table(plates: dict[str, str], compound_splits=("train", "validation", "all"), seed=0) -> pd.DataFrame:
    """map_per_plate.csv's layout: plate x method x pipeline x compound split."""
    rng = np.random.default_rng(seed)
    rows = [dict(plate=p, plate_split=s, compound_split=c, method=m, profile_pipeline=pipe, mAP=rng.uniform(0.1, 0.6),
                 n_queries=40)
            for p, s in plates.items() for c in compound_splits for m in ("model", "model_untrained", "mean", "median")
            for pipe in ("raw", "negcon_mad")]
    return pd.DataFrame(rows)


def verdict_table(long: pd.DataFrame) -> pd.DataFrame:
    cells = long[["plate_split", "compound_split"]].drop_duplicates()
    cells = cells[cells.compound_split != "all"]
    return cells.assign(best_nonlearned="mean", best_nonlearned_pipeline="raw", best_nonlearned_mAP=0.3,
                        model_pipeline="raw", model_mAP=0.4, ratio=4 / 3, wilcoxon_p=0.01, n_queries=40,
                        verdict="model better", model_untrained_mAP=0.2)


def render_caption(name: str, config: dict, **params) -> str:
    """A caption as Snakemake's report renders it: Jinja with `snakemake` (config, params), then docutils; an RST
    error fails (halt_level 2: warnings too)."""
    text = jinja2.Environment().from_string((CAPTIONS / name).read_text()).render(
        snakemake=SimpleNamespace(config=config, params=SimpleNamespace(**params)))
    return publish_parts(text, writer="html", settings_overrides={"halt_level": 2})["body"]


# ------------------------------------------------------------------------------------------------- front page


def test_front_page_says_what_was_compared_and_leads_with_the_verdict():
    long = long_table({"P1": "train", "P2": "train", "P3": "validation"})
    text = front_page_text(verdict_table(long), long, b"\x89PNG fake", "**Config:** mine.yaml (over the schema defaults)")
    html = publish_parts(text, writer="html", settings_overrides={"halt_level": 2})["html_body"]
    assert text.index("<style>") < text.index("cytoagg: learned well profiles")  # the layout fix comes first
    assert "What was compared." in html and "on 2 training plates, 1 validation plate" in html
    assert html.index("On held-out plates and compounds: model better") < html.index("mAP per plate")
    assert "Note:" not in html and "mine.yaml" in html and "1. Key results" in html


@pytest.mark.parametrize("plates, compound_splits, expected", [
    ({"P1": "train", "P2": "train"}, ("train", "validation", "all"), ["no validation plate"]),
    ({"P1": "train", "P2": "validation"}, ("train", "all"), ["no validation compound"]),
    ({"P1": "train"}, ("train", "all"), ["no validation compound", "no validation plate", "a single plate"]),
])
def test_degenerate_designs_are_said_on_the_front_page_and_in_the_captions(plates, compound_splits, expected):
    long = long_table(plates, compound_splits)
    html = publish_parts(front_page_text(verdict_table(long), long, b"png"), writer="html")["html_body"]
    for note in expected:
        assert f"Note: {note}" in html.replace("<strong>", "").replace("</strong>", "")
    assert len(design_notes(long)) == len(expected)
    # the tables' captions in the report, written before the tables exist, foretell the same notes from the config
    train = [p for p, s in plates.items() if s == "train"]
    validation = [p for p, s in plates.items() if s == "validation"]
    compounds = 0.25 if "validation" in compound_splits else 0
    notes = config_design_notes(train, validation, compounds)
    assert notes == "".join(f"**Note:** {n}\n\n" for n in design_notes(long))
    for caption in ("verdict.rst", "map_table.rst"):
        rendered = render_caption(caption, DEMO, design_notes=notes)
        for note in expected:
            assert f"<strong>Note:</strong> {note}" in rendered


def test_captions_render_and_follow_the_config():
    no_holdout = {**DEMO, "compounds": {**DEMO["compounds"], "validation": 0},
                  "plates": {"train": ["P1", "P2"], "validation": []}}
    for caption in sorted(CAPTIONS.glob("*.rst")):
        for config in (DEMO, no_holdout):
            render_caption(caption.name, config, design_notes="")
    demo, degenerate = (render_caption("map_per_plate.rst", c) for c in (DEMO, no_holdout))
    assert "held-out validation compounds, one panel" in demo and "no panel of held-out compounds" not in demo
    assert "There is no panel of held-out compounds" in degenerate and "(right)" not in degenerate
    assert "training plates (there\nis no validation plate)" in render_caption("effective_rank.rst", no_holdout)
    assert "last evaluated epoch" in render_caption("training_curve.rst", no_holdout)


def test_sampling_sweep_table_says_so_too(tmp_path):
    ap = pd.DataFrame({"plate": "P1", "well": ["A01", "A02", "A03", "A04"], "perturbation": ["a", "a", "b", "b"],
                       "method": "model", "cells_sampled": "all", "seed": -1, "n_cells_used": 10,
                       "average_precision": [1.0, 0.5, 1.0, 0.5], "precision_at_r": [1.0, 0.0, 1.0, 0.0]})
    ap.to_parquet(tmp_path / "P1.parquet")
    summarize_sampling_sweep([tmp_path / "P1.parquet"], tmp_path / "s.csv", tmp_path / "s.md",
                             splits({"P1": "train"}, validation=[]))
    md = (tmp_path / "s.md").read_text()
    assert "no validation compound" in md and "no validation plate" in md and "a single plate" in md


# ------------------------------------------------------------------------------------------------- figures


def test_long_plate_names_are_shortened_only_while_they_stay_distinct():
    names = [f"BR0011701{i}__2020-11-08T19_57_47-Measurement1" for i in range(3)]
    short = plate_labels(names)
    assert len(set(short.values())) == 3 and all(len(v) <= 22 for v in short.values())
    same_ends = ["plate_A_2020-11-08T19_57_47-Measurement1_x", "plate_A_2021-01-01T00_00_00-Measurement1_x"]
    assert plate_labels(same_ends) == {n: n for n in same_ends}  # shortened alike: the full names
    assert plate_labels(["P1", "P2"]) == {"P1": "P1", "P2": "P2"}


def _figure(draw, tmp_path) -> tuple[np.ndarray, object]:
    """Draw a figure, keeping it open for its layout; returns the PNG's pixels and the figure."""
    import matplotlib.pyplot as plt

    kept = {}
    original = plt.close
    plt.close = lambda fig=None: kept.setdefault("fig", fig)
    try:
        draw(tmp_path / "figure.png")
    finally:
        plt.close = original
    kept["fig"].canvas.draw()  # lay the figure out again at its own size (savefig's tight box is temporary)
    return mpimg.imread(tmp_path / "figure.png"), kept["fig"]


def _tick_labels_apart(ax, renderer, dpi) -> bool:
    """Upright labels: their boxes do not overlap. Slanted ones are parallel strips: apart when the distance between
    neighbouring ticks, across the slant, exceeds a label's height (its lines at 1.2 x the font size)."""
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    angle = np.deg2rad(labels[0].get_rotation()) if labels else 0.0
    if angle == 0:
        boxes = [t.get_window_extent(renderer) for t in labels]
        return not any(_overlaps(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    x = np.sort([ax.transData.transform((t.get_position()[0], 0))[0] for t in labels])
    height = max(t.get_fontsize() * 1.2 * (t.get_text().count("\n") + 1) for t in labels) * dpi / 72
    return bool((np.diff(x) * np.sin(angle) > height).all())


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("n_plates", [3, 8, 40])
def test_map_figure_keeps_labels_apart_and_the_legend_off_the_bars(n_plates, tmp_path):
    plates = {f"BR{i:08d}__2020-11-08T19_57_{i % 60:02d}-Measurement1": "train" if i < n_plates * 3 // 4 else "validation"
              for i in range(n_plates)}
    pixels, fig = _figure(lambda out: plot_map_per_plate(long_table(plates), out), tmp_path)
    assert pixels.shape[1] <= 2000  # at most 14 inches (+ the legend) at 110 dpi, however many plates
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0].get_window_extent(renderer)
    for ax in fig.axes:
        assert not _overlaps(legend, ax.get_window_extent(renderer))  # beside the panels, never on the bars
        assert _tick_labels_apart(ax, renderer, fig.dpi)
    if n_plates > 24:
        assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["train plates (30)", "validation plates (10)"]
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_effective_rank_figure_labels_and_legend_do_not_overlap(tmp_path):
    summary = pd.DataFrame({"representation": ["pooled", "head", "mean"], "effective_rank": [61.8, 21.6, 16.6],
                            "max_rank": [128, 64, 24], "n_wells": 208, "plates": "P3"})
    spectra = pd.concat([pd.DataFrame({"representation": r, "k": np.arange(1, n + 1),
                                       "p": np.sort(np.random.default_rng(0).dirichlet(np.ones(n)))[::-1]})
                         for r, n in (("pooled", 128), ("head", 64), ("mean", 24))])
    _, fig = _figure(lambda out: plot_effective_rank(summary, spectra, out), tmp_path)
    renderer = fig.canvas.get_renderer()
    texts = [fig.legends[0].get_window_extent(renderer)]
    for ax in fig.axes:
        texts += [ax.xaxis.label.get_window_extent(renderer), ax.yaxis.label.get_window_extent(renderer)]
        texts += [ax.get_window_extent(renderer)]
    assert not any(_overlaps(a, b) for i, a in enumerate(texts) for b in texts[i + 1:])
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_front_page_figure_of_a_real_layout(tmp_path):
    """The figure the front page embeds is the one the report shows (same file), so one check of the PNG."""
    long = long_table({"P1": "train", "P2": "validation"})
    plot_map_per_plate(long, tmp_path / "m.png")
    assert Path(tmp_path / "m.png").stat().st_size > 10_000


def test_the_report_needs_nothing_beyond_the_base_install():
    """`snakemake --report` needs pygments: a dependency of the package itself, so README command 1's
    `pip install -e .` gives it (pytest brings pygments too, so the test run alone would not show a gap)."""
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.replace(" ", "").lower().startswith("pygments") for d in deps)
