"""Per-plate mAP tables from the per-well AP tables of every plate and method.

Three questions per plate x method: how well replicates are retrieved (mAP, precision at R), how
many compounds are retrieved better than chance (``fraction_retrieved``: share of compounds whose
mAP beats random rankings, BH-corrected p < threshold, as copairs' ``mean_average_precision``), and
whether a method's gain over the mean baseline is real (Wilcoxon signed-rank test of the paired APs
of the same queries).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..io.files import write_table, write_text
from ..io.parquet import MODEL_PRECISION_KEY, PRECISION_KEY, merged_provenance
from ..settings import Settings
from ..splits import CompoundSplit
from .significance import mean_average_precision, paired_test

HEADLINE_COLUMNS = {
    ("train", "model"): "Training mAP model",
    ("train", "mean"): "Training mAP BM",
    ("validation", "model"): "Validation mAP model",
    ("validation", "mean"): "Validation mAP BM",
}
BASELINE = "mean"  # BM: the baseline every method is tested against
PARTS = ("train", "validation", "all")
_SPLIT_ORDER = {"train": 0, "validation": 1, "unknown": 2}


@dataclass(frozen=True)
class Splits(Settings):
    """Which plates were trained on (config ``plates:``, plate -> train | validation) and which compounds
    were held out of training (config ``compounds:``)."""

    plate_split: dict
    compounds: CompoundSplit


@dataclass(frozen=True)
class SummarizeSettings(Settings):
    """The splits and config ``evaluate:``'s null_size, significance_threshold and seed."""

    splits: Splits
    null_size: int
    significance_threshold: float
    seed: int


def add_splits(ap: pd.DataFrame, splits: Splits) -> pd.DataFrame:
    """``ap`` with ``plate_split`` (train/validation/unknown) and ``compound_split`` (train/validation) columns."""
    ap = ap.copy()
    split = splits.compounds.of(ap["perturbation"].astype(str).unique())
    ap["compound_split"] = ap["perturbation"].astype(str).map(split)
    ap["plate_split"] = ap["plate"].astype(str).map(lambda p: splits.plate_split.get(p, "unknown"))
    return ap


def ap_per_compound(
    ap: pd.DataFrame, *, null_size: int = 10000, threshold: float = 0.05, seed: int = 0
) -> pd.DataFrame:
    """One row per compound x plate x method: its mAP and permutation p-value, BH-corrected per plate x method.

    Each plate x method's table is what ``copairs.map.mean_average_precision(ap, ["perturbation"],
    null_size, threshold, seed)`` returns for it. Compounds without a scored query (no replicate)
    are left out. Columns: compound, plate, method, mAP, p_value, corrected_p_value, retrieved
    (corrected p < threshold), n_queries, then plate_split, compound_split and, when present,
    moa / moa_mAP / baseline_corrected_mAP (means over the compound's wells).
    """
    cache: dict = {}
    parts = []
    for (plate, method), g in ap.groupby(["plate", "method"], sort=True):
        scored = g[g["average_precision"].notna() & (g["n_positives"] > 0)]
        if scored.empty:
            continue
        m = mean_average_precision(scored, "perturbation", null_size=null_size, threshold=threshold, seed=seed, null_cache=cache)
        out = pd.DataFrame(
            {
                "compound": m["perturbation"].astype(str),
                "plate": plate,
                "method": method,
                "mAP": m["mean_average_precision"],
                "p_value": m["p_value"],
                "corrected_p_value": m["corrected_p_value"],
                "retrieved": m["below_corrected_p"],
                "n_queries": m["n_queries"],
            }
        )
        first = g.drop_duplicates("perturbation")
        first = first.set_index(first["perturbation"].astype(str))
        for col in ("plate_split", "compound_split", "moa"):
            if col in g.columns:
                out[col] = first.loc[out["compound"], col].to_numpy()
        by_compound = g.assign(compound=g["perturbation"].astype(str)).groupby("compound")
        for col, name in (("moa_average_precision", "moa_mAP"), ("baseline_corrected_ap", "baseline_corrected_mAP")):
            if col in g.columns:
                out[name] = by_compound[col].mean().reindex(out["compound"]).to_numpy()
        parts.append(out)
    if not parts:
        return pd.DataFrame(columns=["compound", "plate", "method", "mAP", "p_value", "corrected_p_value", "retrieved", "n_queries"])
    return pd.concat(parts, ignore_index=True)


def _paired_with_baseline(g: pd.DataFrame, method: str):
    """Test ``method`` against the mean baseline on the queries scored by both (matched by plate and well)."""
    if method == BASELINE:
        return np.nan, np.nan, 0
    cols = ["plate", "well", "average_precision"]
    a = g[(g["method"] == method)][cols].dropna()
    b = g[(g["method"] == BASELINE)][cols].dropna()
    both = a.merge(b, on=["plate", "well"], suffixes=("", "_bm"))
    return paired_test(both["average_precision"], both["average_precision_bm"])


def map_per_plate(ap: pd.DataFrame, splits: Splits, *, per_compound: pd.DataFrame | None = None) -> pd.DataFrame:
    """Long table: one row per plate x method x compound split (plus ``all``).

    ``ap``: per-well AP rows (columns plate, well, perturbation, method, average_precision,
    precision_at_r, n_positives); rows with NaN AP are queries skipped for lack of a replicate.
    mAP = mean over compounds of the mean AP of their wells; precision_at_R = mean over queries.
    With ``per_compound`` (:func:`ap_per_compound`): ``n_retrieved`` and ``fraction_retrieved``,
    the share of the split's compounds retrieved better than chance. ``wilcoxon_p_vs_mean``: paired
    two-sided test of the method's AP against the mean baseline's over the same queries, with
    ``mean_ap_difference_vs_mean`` (positive: the method ranks replicates higher). When the AP
    tables have them: ``moa_mAP`` / ``moa_precision_at_R`` (MoA retrieval, averaged the same way)
    and ``baseline_corrected_mAP`` (not the plain mAP: AP - n_positives / n_candidates, clipped at 0).
    """
    ap = add_splits(ap, splits)
    if per_compound is not None and len(per_compound):
        retrieved = per_compound.set_index(["plate", "method", "compound"])["retrieved"]
    else:
        retrieved = None
    rows = []
    for part in PARTS:
        sub = ap if part == "all" else ap[ap["compound_split"] == part]
        for plate, by_plate in sub.groupby("plate", sort=True):
            for method, g in by_plate.groupby("method", sort=True):
                scored = g.dropna(subset=["average_precision"])
                compounds = scored.groupby("perturbation")["average_precision"].mean()
                p, diff, n_pairs = _paired_with_baseline(by_plate, method)
                row = {
                    "plate": plate,
                    "plate_split": splits.plate_split.get(plate, "unknown"),
                    "compound_split": part,
                    "method": method,
                    "mAP": compounds.mean() if len(compounds) else np.nan,
                    "precision_at_R": scored["precision_at_r"].mean() if len(scored) else np.nan,
                    "n_queries": len(scored),
                    "n_skipped_queries": int(g["average_precision"].isna().sum()),
                    "n_compounds": len(compounds),
                }
                if retrieved is not None:
                    keys = pd.MultiIndex.from_arrays(
                        [[plate] * len(compounds), [method] * len(compounds), compounds.index.astype(str)]
                    )
                    hit = retrieved.reindex(keys).fillna(False).astype(bool)
                    row["n_retrieved"] = int(hit.sum())
                    row["fraction_retrieved"] = hit.mean() if len(hit) else np.nan
                row["wilcoxon_p_vs_mean"] = p
                row["mean_ap_difference_vs_mean"] = diff
                if "moa_average_precision" in g.columns:
                    moa = g.dropna(subset=["moa_average_precision"])
                    per = moa.groupby("perturbation")["moa_average_precision"].mean()
                    row["moa_mAP"] = per.mean() if len(per) else np.nan
                    row["moa_precision_at_R"] = moa["moa_precision_at_r"].mean() if len(moa) else np.nan
                    row["moa_n_queries"] = len(moa)
                if "baseline_corrected_ap" in g.columns:
                    per = scored.groupby("perturbation")["baseline_corrected_ap"].mean()
                    row["baseline_corrected_mAP"] = per.mean() if len(per) else np.nan
                rows.append(row)
    out = pd.DataFrame(rows)
    return out.sort_values(
        ["plate_split", "plate", "compound_split", "method"],
        key=lambda s: s.map(_SPLIT_ORDER) if s.name == "plate_split" else s,
    ).reset_index(drop=True)


def pooled_tests(ap: pd.DataFrame, splits: Splits) -> pd.DataFrame:
    """Model vs mean baseline over all queries of all plates of a split: one row per plate split x compound split."""
    ap = add_splits(ap, splits)
    rows = []
    for ps, g in ap.groupby("plate_split", sort=False):
        for part in PARTS:
            sub = g if part == "all" else g[g["compound_split"] == part]
            p, diff, n = _paired_with_baseline(sub, "model")
            rows.append({"plate_split": ps, "compound_split": part, "wilcoxon_p_vs_mean": p, "mean_ap_difference_vs_mean": diff, "n_pairs": n})
    return pd.DataFrame(rows)


def _pick(g: pd.DataFrame, part: str, method: str, col: str):
    if col not in g.columns:
        return np.nan
    v = g[(g.compound_split == part) & (g.method == method)][col]
    return v.iloc[0] if len(v) else np.nan


def headline_table(long: pd.DataFrame, pooled: pd.DataFrame | None = None, column: str = "mAP") -> pd.DataFrame:
    """The headline layout (CytoSummaryNet's tables): plate | Training mAP model | Training mAP BM | Validation mAP model | Validation mAP BM | PR model | PR BM,

    then Retrieved model | Retrieved BM (fraction of compounds retrieved better than chance) and the
    paired p-values of model vs BM for training and validation compounds. Training/Validation refer
    to the compound split; PR is precision at R and Retrieved is over all compounds. BM is the mean
    baseline. Training plates come first, then validation plates, then a mean row per plate split
    (its p-values: the test over all queries of those plates, from ``pooled``). ``column``: the
    score in the mAP columns (``baseline_corrected_mAP`` for the corrected table).
    """
    label = "mAP" if column == "mAP" else "corrected mAP"
    rows = []
    for plate, g in long.groupby("plate", sort=False):
        row = {"plate": plate, "plate split": g["plate_split"].iloc[0]}
        for (part, method), name in HEADLINE_COLUMNS.items():
            row[name.replace("mAP", label)] = _pick(g, part, method, column)
        row["PR model"] = _pick(g, "all", "model", "precision_at_R")
        row["PR BM"] = _pick(g, "all", "mean", "precision_at_R")
        if "fraction_retrieved" in long.columns:
            row["Retrieved model"] = _pick(g, "all", "model", "fraction_retrieved")
            row["Retrieved BM"] = _pick(g, "all", "mean", "fraction_retrieved")
        row["Training p (model vs BM)"] = _pick(g, "train", "model", "wilcoxon_p_vs_mean")
        row["Validation p (model vs BM)"] = _pick(g, "validation", "model", "wilcoxon_p_vs_mean")
        rows.append(row)
    wide = pd.DataFrame(rows)
    p_cols = ["Training p (model vs BM)", "Validation p (model vs BM)"]
    means = []
    for s in ("train", "validation"):
        sel = wide[wide["plate split"] == s]
        if sel.empty:
            continue
        row = {"plate": f"mean ({s} plates)", "plate split": s, **sel.drop(columns=["plate", "plate split", *p_cols]).mean()}
        for col, part in zip(p_cols, ("train", "validation")):
            v = pooled[(pooled.plate_split == s) & (pooled.compound_split == part)] if pooled is not None else []
            row[col] = v["wilcoxon_p_vs_mean"].iloc[0] if len(v) else np.nan
        means.append(row)
    return pd.concat([wide, pd.DataFrame(means)], ignore_index=True)


def format_p(p) -> str:
    """A p-value for a table: 3 significant digits, '-' when there is none."""
    if p is None or (isinstance(p, float) and np.isnan(p)):
        return "-"
    return f"{p:.3g}" if p >= 1e-3 else f"{p:.2e}"


def to_markdown(df: pd.DataFrame, digits: int = 3, formats: dict | None = None) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency); ``formats``: column -> callable(value) -> str."""
    cols = list(df.columns)
    formats = formats or {}
    fmt = lambda v: f"{v:.{digits}f}" if isinstance(v, (float, np.floating)) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += [
        "| " + " | ".join(formats.get(c, fmt)(v) for c, v in zip(cols, row)) + " |" for row in df.itertuples(index=False)
    ]
    return "\n".join(lines) + "\n"


def precision_note(provenance: dict[str, str]) -> str:
    """The line a summary gives on the arithmetic of the model profiles (from their files' key-value metadata);
    empty when they do not record it."""
    if PRECISION_KEY not in provenance:
        return ""
    trained = provenance.get(MODEL_PRECISION_KEY)
    return (
        f"Model profiles computed in {provenance[PRECISION_KEY]}"
        + (f", by a model trained in {trained}" if trained else "")
        + " (`train.precision`).\n\n"
    )


def markdown_report(long: pd.DataFrame, pooled: pd.DataFrame | None = None, threshold: float = 0.05,
                    provenance: dict[str, str] | None = None) -> str:
    """``map_per_plate.md``: the headline table, and the baseline-corrected one when the APs have it.
    ``provenance``: the model AP files' key-value metadata (the line on the model's arithmetic)."""
    p_fmt = {c: format_p for c in ("Training p (model vs BM)", "Validation p (model vs BM)")}
    text = (
        "# Replicate retrieval mAP per plate\n\n"
        "Training/Validation mAP: compounds used / held out in training; PR: precision at R over all compounds; "
        "BM: mean-aggregation baseline. Retrieved: fraction of compounds whose mAP beats random rankings "
        f"(permutation p-value, BH-corrected per plate and method, < {threshold:g}). "
        "p (model vs BM): two-sided Wilcoxon signed-rank test of the model's AP against BM's over the same "
        "query wells (mean rows: over all query wells of those plates).\n\n" + precision_note(provenance or {})
        + to_markdown(headline_table(long, pooled), formats=p_fmt)
    )
    if "baseline_corrected_mAP" in long.columns:
        text += (
            "\n## Baseline-corrected mAP\n\n"
            "Not the plain mAP: each well's AP minus its random-ranking baseline (n_positives / n_candidates), "
            "clipped at 0 (CytoSummaryNet's correction), then averaged like the mAP.\n\n"
            + to_markdown(headline_table(long, pooled, column="baseline_corrected_mAP"), formats=p_fmt)
        )
    if "moa_mAP" in long.columns:
        moa = long[long.compound_split == "all"].pivot_table(index=["plate_split", "plate"], columns="method", values="moa_mAP")
        moa = moa.reset_index().sort_values("plate_split", key=lambda s: s.map(_SPLIT_ORDER))
        text += (
            "\n## MoA retrieval mAP (all compounds)\n\n"
            "Positives: wells of other compounds with the same MoA; the query's own replicates are not ranked.\n\n"
            + to_markdown(moa.rename(columns={"plate_split": "plate split"}))
        )
    return text


def summarize_plates(ap_files: dict[str, list], out_csv, out_md, out_compounds, settings: SummarizeSettings) -> pd.DataFrame:
    """The summarize step: every method's per-well AP files (method -> files) -> ``out_csv`` (the long mAP
    table), ``out_md`` (the headline tables) and ``out_compounds`` (per compound, with p-values)."""
    ap = pd.concat(
        [pd.read_parquet(f).assign(method=m) for m, files in ap_files.items() for f in files], ignore_index=True
    )
    per_compound = ap_per_compound(
        add_splits(ap, settings.splits), null_size=settings.null_size, threshold=settings.significance_threshold,
        seed=settings.seed,
    )
    long = map_per_plate(ap, settings.splits, per_compound=per_compound)
    write_table(long, out_csv)
    write_table(per_compound, out_compounds)
    provenance = merged_provenance(ap_files.get("model", []))
    write_text(markdown_report(long, pooled_tests(ap, settings.splits), settings.significance_threshold, provenance),
               out_md)
    return long
