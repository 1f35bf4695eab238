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


def front_page_text(verdict: pd.DataFrame, long: pd.DataFrame, figure_png: bytes) -> str:
    title = "cytoagg: learned well profiles against the field's profiles"
    text = [title, "=" * len(title), ""]
    baselines = [m for m in dict.fromkeys(long["method"]) if is_nonlearned(m)]
    pipelines = list(dict.fromkeys(long["profile_pipeline"]))
    text.append(
        "The learned set model (CytoSummaryNet-style) is compared with the non-learned well profiles a profiling "
        f"scientist already uses ({', '.join(baselines)}), each through the profile pipelines ({', '.join(pipelines)}), "
        "by replicate-retrieval mAP. The verdict takes the best non-learned profile and the model at its best "
        "pipeline for each plate split x compound split; validation plates x validation compounds are plates and "
        "compounds the model never saw."
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
    ]
    return "\n".join(text) + "\n"


def write_front_page(verdict_csv, long_csv, figure_png, out_rst) -> None:
    verdict = pd.read_csv(verdict_csv)
    long = pd.read_csv(long_csv)
    with open(figure_png, "rb") as fh:
        figure = fh.read()
    write_text(front_page_text(verdict, long, figure), out_rst)
