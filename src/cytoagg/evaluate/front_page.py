"""The report's front page: the first thing a reader of ``snakemake --report`` sees is the verdict (the model
against the best non-learned profile, on plates and compounds it never saw) and the mAP-per-plate figure, each
method at its best profile pipeline. Written as reStructuredText, which Snakemake renders as the report's
description (the Snakefile's ``report:`` directive)."""

from __future__ import annotations

import base64

import numpy as np
import pandas as pd

from ..io.files import write_text
from .summarize import design_notes, is_nonlearned


def _cell(v) -> str:
    if isinstance(v, float):
        return "-" if not np.isfinite(v) else (f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:.3f}")
    return str(v)


def _list_table(rows: list[list[str]], header: list[str]) -> str:
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for row in [header, *rows]:
        lines.append("   * - " + row[0])
        lines += [f"     - {c}" for c in row[1:]]
    return "\n".join(lines) + "\n"


def _wrapped(data: str, width: int = 100) -> list[str]:
    """A long image URI on indented lines (docutils joins them, removing the whitespace; one line would exceed
    its line-length limit)."""
    return ["   " + data[i:i + width] for i in range(0, len(data), width)]


# Snakemake's report shows this page beside the rule graph, in a narrow column, and centers it vertically in the
# window (so a page taller than the window loses its top). The style below (raw HTML, which Snakemake's docutils
# passes through) puts the page first, at the top and wider, and the rule graph under it; where a browser lacks
# :has(), the report looks as it did.
LAYOUT = """.. raw:: html

   <style>
   div.items-center:has(#rulegraph) { align-items: flex-start; }
   div:has(> #rulegraph) { flex-direction: column; }
   div:has(> #rulegraph) .prose { max-width: 68rem; }
   </style>
"""
KEY_CATEGORY = "1. Key results"  # the report category of the key results (the verdict, the mAP-per-plate figure)


def front_page_text(verdict: pd.DataFrame, long: pd.DataFrame, figure_png: bytes, config_note: str = "") -> str:
    title = "cytoagg: learned well profiles against the field's profiles"
    text = [LAYOUT, title, "=" * len(title), ""]
    baselines = [m for m in dict.fromkeys(long["method"]) if is_nonlearned(m)]
    pipelines = list(dict.fromkeys(long["profile_pipeline"]))
    n_plates = long.groupby("plate_split")["plate"].nunique().to_dict()
    plates = ", ".join(f"{n} {'training' if s == 'train' else s} plate{'s' * (n != 1)}" for s, n in n_plates.items())
    text.append(
        "**What was compared.** The learned set model (CytoSummaryNet-style) against the non-learned well profiles a "
        f"profiling scientist already uses ({', '.join(baselines)}), each through the profile pipelines "
        f"({', '.join(pipelines)}), by how well a well retrieves its replicate wells (mAP) on {plates}. The verdict "
        "takes the best non-learned profile and the model at its best pipeline for each plate split x compound split; "
        "validation plates x validation compounds are plates and compounds the model never saw."
    )
    text.append("")
    for note in design_notes(long):
        text += [f"**Note:** {note}", ""]
    key = verdict[(verdict.plate_split == "validation") & (verdict.compound_split == "validation")]
    if len(key) and "ratio" in key.columns and np.isfinite(key["ratio"].iloc[0]):
        r = key.iloc[0]
        text += [
            f"**On held-out plates and compounds: {r['verdict']}.** The model ({r['model_pipeline']}) reaches mAP "
            f"{r['model_mAP']:.3f}; the best non-learned profile, {r['best_nonlearned']} ({r['best_nonlearned_pipeline']}), "
            f"{r['best_nonlearned_mAP']:.3f}: a ratio of {r['ratio']:.2f} (Wilcoxon p = {_cell(r['wilcoxon_p'])} over "
            f"{int(r['n_queries'])} query wells).",
            "",
        ]
    rows = []
    for _, r in verdict.iterrows():
        rows.append([
            r["plate_split"], r["compound_split"],
            f"{_cell(r.get('best_nonlearned_mAP'))} ({r.get('best_nonlearned', '-')} + {r.get('best_nonlearned_pipeline', '-')})",
            f"{_cell(r.get('model_mAP'))} ({r.get('model_pipeline', '-')})", _cell(r.get("ratio")),
            _cell(r.get("wilcoxon_p")), str(r.get("verdict", "-")),
            _cell(r.get("model_untrained_mAP", np.nan)), _cell(r.get("mlp_on_mean_mAP", np.nan)),
        ])
    if rows:
        text += ["Verdict", "-------", "", _list_table(rows, [
            "plate split", "compound split", "best non-learned mAP", "model mAP", "ratio", "p", "verdict",
            "untrained network", "network on well means"])]
    text += [
        "mAP per plate", "-------------", "",
        "Each method at its best profile pipeline (chosen on validation plates x validation compounds); "
        "the tables in the Tables category have every method through every pipeline.", "",
        ".. image:: data:image/png;base64,", *_wrapped(base64.b64encode(figure_png).decode()), "   :width: 100%", "",
        f"The key results are also first in the list of results (category \"{KEY_CATEGORY}\"), with their captions.",
        "",
    ]
    if config_note:
        text += [config_note, ""]
    return "\n".join(text) + "\n"


def write_front_page(verdict_csv, long_csv, figure_png, out_rst, config_note: str = "") -> None:
    verdict = pd.read_csv(verdict_csv)
    long = pd.read_csv(long_csv)
    with open(figure_png, "rb") as fh:
        figure = fh.read()
    write_text(front_page_text(verdict, long, figure, config_note), out_rst)
