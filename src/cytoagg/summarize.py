"""Per-plate mAP tables from the per-well AP tables of every plate and method."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .splits import split_compounds

SEED_COLUMNS = {
    ("train", "model"): "Training mAP model",
    ("train", "mean"): "Training mAP BM",
    ("validation", "model"): "Validation mAP model",
    ("validation", "mean"): "Validation mAP BM",
}


def map_per_plate(ap: pd.DataFrame, plate_split: dict[str, str], validation_compounds, split_seed: int = 0) -> pd.DataFrame:
    """Long table: one row per plate x method x compound split (plus ``all``).

    ``ap``: per-well AP rows (columns plate, perturbation, method, average_precision, precision_at_r);
    rows with NaN AP are queries skipped for lack of a replicate. mAP = mean over compounds of the
    mean AP of their wells; precision_at_R = mean over queries.
    """
    ap = ap.copy()
    split = split_compounds(ap["perturbation"].unique(), validation_compounds, split_seed)
    ap["compound_split"] = ap["perturbation"].map(split)
    rows = []
    for part in ("train", "validation", "all"):
        sub = ap if part == "all" else ap[ap["compound_split"] == part]
        for (plate, method), g in sub.groupby(["plate", "method"], sort=True):
            scored = g.dropna(subset=["average_precision"])
            per_compound = scored.groupby("perturbation")["average_precision"].mean()
            rows.append(
                {
                    "plate": plate,
                    "plate_split": plate_split.get(plate, "unknown"),
                    "compound_split": part,
                    "method": method,
                    "mAP": per_compound.mean() if len(per_compound) else np.nan,
                    "precision_at_R": scored["precision_at_r"].mean() if len(scored) else np.nan,
                    "n_queries": len(scored),
                    "n_skipped_queries": int(g["average_precision"].isna().sum()),
                    "n_compounds": len(per_compound),
                }
            )
    out = pd.DataFrame(rows)
    order = {"train": 0, "validation": 1, "unknown": 2}
    return out.sort_values(
        ["plate_split", "plate", "compound_split", "method"], key=lambda s: s.map(order) if s.name == "plate_split" else s
    ).reset_index(drop=True)


def seed_table(long: pd.DataFrame) -> pd.DataFrame:
    """The seed layout: plate | Training mAP model | Training mAP BM | Validation mAP model | Validation mAP BM | PR model | PR BM.

    Training/Validation refer to the compound split; PR is precision at R over all compounds. BM is the mean baseline.
    """
    rows = []
    for plate, g in long.groupby("plate", sort=False):
        row = {"plate": plate, "plate split": g["plate_split"].iloc[0]}
        for (part, method), name in SEED_COLUMNS.items():
            v = g[(g.compound_split == part) & (g.method == method)]["mAP"]
            row[name] = v.iloc[0] if len(v) else np.nan
        for method, name in (("model", "PR model"), ("mean", "PR BM")):
            v = g[(g.compound_split == "all") & (g.method == method)]["precision_at_R"]
            row[name] = v.iloc[0] if len(v) else np.nan
        rows.append(row)
    wide = pd.DataFrame(rows)
    means = [
        {"plate": f"mean ({s} plates)", "plate split": s, **wide[wide["plate split"] == s].drop(columns=["plate", "plate split"]).mean()}
        for s in ("train", "validation")
        if (wide["plate split"] == s).any()
    ]
    return pd.concat([wide, pd.DataFrame(means)], ignore_index=True)


def to_markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    cols = list(df.columns)
    fmt = lambda v: f"{v:.{digits}f}" if isinstance(v, (float, np.floating)) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"
