"""Per-plate mAP tables from the per-well AP tables of every plate, method and profile pipeline.

Three questions per plate x method x pipeline: how well replicates are retrieved (mAP, precision at R), how
many compounds are retrieved better than chance (``fraction_retrieved``: share of compounds whose
mAP beats random rankings, BH-corrected p < threshold, as copairs' ``mean_average_precision``), and
whether a method's gain over the mean baseline (through the same pipeline) is real (Wilcoxon signed-rank
test of the paired APs of the same queries). And the verdict: does the model, at its best pipeline, beat the
best non-learned profile at its best pipeline, on each plate split x compound split?
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..io.files import write_table, write_text
from ..io.parquet import read_parquet
from ..settings import Settings
from ..splits import CompoundSplit
from .significance import mean_average_precision, paired_test

HEADLINE_COLUMNS = {
    ("train", "model"): "Training mAP model",
    ("train", "bm"): "Training mAP BM",
    ("validation", "model"): "Validation mAP model",
    ("validation", "bm"): "Validation mAP BM",
}
BASELINE = "mean"  # the baseline every method is tested against in the long table (through the same pipeline)
MODEL = "model"
CONTROLS = ("model_untrained", "mlp_on_mean")  # the model's controls: neither the model nor a non-learned method
RAW = "raw"
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
    ap = _with_pipeline(ap)
    for (plate, method, pipeline), g in ap.groupby(["plate", "method", "profile_pipeline"], sort=True):
        scored = g[g["average_precision"].notna() & (g["n_positives"] > 0)]
        if scored.empty:
            continue
        m = mean_average_precision(scored, "perturbation", null_size=null_size, threshold=threshold, seed=seed, null_cache=cache)
        out = pd.DataFrame(
            {
                "compound": m["perturbation"].astype(str),
                "plate": plate,
                "method": method,
                "profile_pipeline": pipeline,
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
        return pd.DataFrame(columns=["compound", "plate", "method", "profile_pipeline", "mAP", "p_value",
                                     "corrected_p_value", "retrieved", "n_queries"])
    return pd.concat(parts, ignore_index=True)


def _with_pipeline(ap: pd.DataFrame) -> pd.DataFrame:
    """AP rows with a ``profile_pipeline`` column (``raw`` where the rows have none)."""
    return ap if "profile_pipeline" in ap.columns else ap.assign(profile_pipeline=RAW)


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
    ap = add_splits(_with_pipeline(ap), splits)
    if per_compound is not None and len(per_compound):
        retrieved = _with_pipeline(per_compound).set_index(["plate", "method", "profile_pipeline", "compound"])["retrieved"]
    else:
        retrieved = None
    rows = []
    for part in PARTS:
        sub = ap if part == "all" else ap[ap["compound_split"] == part]
        for (plate, pipeline), by_plate in sub.groupby(["plate", "profile_pipeline"], sort=True):
            for method, g in by_plate.groupby("method", sort=True):
                scored = g.dropna(subset=["average_precision"])
                compounds = scored.groupby("perturbation")["average_precision"].mean()
                p, diff, n_pairs = _paired_with_baseline(by_plate, method)
                row = {
                    "plate": plate,
                    "plate_split": splits.plate_split.get(plate, "unknown"),
                    "compound_split": part,
                    "method": method,
                    "profile_pipeline": pipeline,
                    "mAP": compounds.mean() if len(compounds) else np.nan,
                    "precision_at_R": scored["precision_at_r"].mean() if len(scored) else np.nan,
                    "n_queries": len(scored),
                    "n_skipped_queries": int(g["average_precision"].isna().sum()),
                    "n_compounds": len(compounds),
                }
                if retrieved is not None:
                    keys = pd.MultiIndex.from_arrays(
                        [[plate] * len(compounds), [method] * len(compounds), [pipeline] * len(compounds),
                         compounds.index.astype(str)]
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
        ["plate_split", "plate", "compound_split", "method", "profile_pipeline"],
        key=lambda s: s.map(_SPLIT_ORDER) if s.name == "plate_split" else (s.map(_pipeline_order) if s.name == "profile_pipeline" else s),
    ).reset_index(drop=True)


def _pipeline_order(pipeline: str) -> int:
    from ..profiles.pipelines import PIPELINES

    return PIPELINES.index(pipeline) if pipeline in PIPELINES else len(PIPELINES)


Key = tuple  # (method, profile_pipeline)


def split_means(long: pd.DataFrame, plate_split: str, part: str) -> pd.Series:
    """Mean over the plates of ``plate_split`` of each (method, pipeline)'s mAP on ``part``'s compounds."""
    cell = long[(long.plate_split == plate_split) & (long.compound_split == part) & (long.n_queries > 0)]
    return cell.groupby(["method", "profile_pipeline"])["mAP"].mean().dropna()


def is_nonlearned(method: str) -> bool:
    """The methods a profiling scientist already uses: every baseline (not the model, not its controls)."""
    return method != MODEL and method not in CONTROLS


def best(means: pd.Series, which) -> Key | None:
    """The (method, pipeline) of ``means`` with the highest mAP among the methods ``which`` accepts."""
    keep = means[[which(m) for m, _ in means.index]]
    return keep.idxmax() if len(keep) else None


def key_cell(long: pd.DataFrame) -> tuple[str, str] | None:
    """The cell the headline table chooses its two profiles on: held-out plates and compounds where the design has
    them (validation plates x validation compounds, else training plates x validation compounds, else training
    plates x training compounds)."""
    for cell in (("validation", "validation"), ("train", "validation"), ("train", "train")):
        if len(split_means(long, *cell)):
            return cell
    return None


def paired_tests(ap: pd.DataFrame, a: Key, b: Key, splits: Splits, by: str = "plate") -> pd.DataFrame:
    """Wilcoxon signed-rank test of profile ``a``'s APs against ``b``'s over the same query wells: one row per
    ``by`` (plate or plate_split) x compound split (train, validation, all)."""
    ap = add_splits(_with_pipeline(ap), splits)
    pick = lambda k: ap[(ap["method"] == k[0]) & (ap["profile_pipeline"] == k[1])]  # noqa: E731
    cols = ["plate", "well", "average_precision"]
    both = pick(a).merge(pick(b)[cols], on=["plate", "well"], suffixes=("", "_b"))
    both = both.dropna(subset=["average_precision", "average_precision_b"])
    rows = []
    for group, g in both.groupby(by, sort=False):
        for part in PARTS:
            sub = g if part == "all" else g[g["compound_split"] == part]
            p, diff, n = paired_test(sub["average_precision"], sub["average_precision_b"])
            rows.append({by: group, "compound_split": part, "wilcoxon_p": p, "mean_ap_difference": diff, "n_pairs": n})
    return pd.DataFrame(rows, columns=[by, "compound_split", "wilcoxon_p", "mean_ap_difference", "n_pairs"])


def _pick(g: pd.DataFrame, part: str, key: Key, col: str):
    if col not in g.columns:
        return np.nan
    v = g[(g.compound_split == part) & (g.method == key[0]) & (g.profile_pipeline == key[1])][col]
    return v.iloc[0] if len(v) else np.nan


def _p_of(tests: pd.DataFrame, by: str, group, part: str):
    v = tests[(tests[by] == group) & (tests.compound_split == part)]
    return v["wilcoxon_p"].iloc[0] if len(v) else np.nan


def headline_table(long: pd.DataFrame, model: Key, bm: Key, per_plate: pd.DataFrame | None = None,
                   pooled: pd.DataFrame | None = None, column: str = "mAP") -> pd.DataFrame:
    """The headline layout (CytoSummaryNet's tables): plate | Training mAP model | Training mAP BM | Validation mAP
    model | Validation mAP BM | PR model | PR BM, then Retrieved model | Retrieved BM (fraction of compounds
    retrieved better than chance) and the paired p-values of model vs BM for training and validation compounds.

    Training/Validation refer to the compound split; PR is precision at R and Retrieved is over all compounds.
    ``model`` and ``bm`` are (method, pipeline): the model and the benchmark (the best non-learned profile, see
    :func:`markdown_report`). Training plates come first, then validation plates, then a mean row per plate
    split (its p-values: the test over all queries of those plates). ``per_plate`` / ``pooled``:
    :func:`paired_tests` of model vs bm by plate / by plate split. ``column``: the score in the mAP columns
    (``baseline_corrected_mAP`` for the corrected table).
    """
    label = "mAP" if column == "mAP" else "corrected mAP"
    keys = {"model": model, "bm": bm}
    p_cols = ["Training p (model vs BM)", "Validation p (model vs BM)"]
    rows = []
    for plate, g in long.groupby("plate", sort=False):
        row = {"plate": plate, "plate split": g["plate_split"].iloc[0]}
        for (part, who), name in HEADLINE_COLUMNS.items():
            row[name.replace("mAP", label)] = _pick(g, part, keys[who], column)
        row["PR model"] = _pick(g, "all", model, "precision_at_R")
        row["PR BM"] = _pick(g, "all", bm, "precision_at_R")
        if "fraction_retrieved" in long.columns:
            row["Retrieved model"] = _pick(g, "all", model, "fraction_retrieved")
            row["Retrieved BM"] = _pick(g, "all", bm, "fraction_retrieved")
        for col, part in zip(p_cols, ("train", "validation")):
            row[col] = np.nan if per_plate is None else _p_of(per_plate, "plate", plate, part)
        rows.append(row)
    wide = pd.DataFrame(rows)
    means = []
    for split in ("train", "validation"):
        sel = wide[wide["plate split"] == split]
        if sel.empty:
            continue
        row = {"plate": f"mean ({split} plates)", "plate split": split,
               **sel.drop(columns=["plate", "plate split", *p_cols]).mean()}
        for col, part in zip(p_cols, ("train", "validation")):
            row[col] = np.nan if pooled is None else _p_of(pooled, "plate_split", split, part)
        means.append(row)
    return pd.concat([wide, pd.DataFrame(means)], ignore_index=True)


def verdict_table(long: pd.DataFrame, ap: pd.DataFrame, splits: Splits) -> pd.DataFrame:
    """Per plate split x compound split: the best non-learned profile (method + pipeline, by the mean over that
    cell's plates of their mAP), the model at its best pipeline, their ratio, and a two-sided Wilcoxon test over
    the same queries (all query wells of the cell's plates); the controls at their best pipelines beside them."""
    rows = []
    for plate_split in ("train", "validation"):
        for part in ("train", "validation"):
            means = split_means(long, plate_split, part)
            if not len(means):
                continue
            nonlearned = best(means, is_nonlearned)
            model = best(means, lambda m: m == MODEL)
            row = {"plate_split": plate_split, "compound_split": part,
                   "n_plates": int(long[(long.plate_split == plate_split)]["plate"].nunique())}
            if nonlearned is not None:
                row |= {"best_nonlearned": nonlearned[0], "best_nonlearned_pipeline": nonlearned[1],
                        "best_nonlearned_mAP": means[nonlearned]}
            if model is not None:
                row |= {"model_pipeline": model[1], "model_mAP": means[model]}
            for control in CONTROLS:
                c = best(means, lambda m, c=control: m == c)
                if c is not None:
                    row |= {f"{control}_pipeline": c[1], f"{control}_mAP": means[c]}
            if model is not None and nonlearned is not None:
                row["ratio"] = means[model] / means[nonlearned] if means[nonlearned] > 0 else np.nan
                tests = paired_tests(ap, model, nonlearned, splits, by="plate_split")
                sel = tests[(tests.plate_split == plate_split) & (tests.compound_split == part)]
                row["wilcoxon_p"] = sel["wilcoxon_p"].iloc[0] if len(sel) else np.nan
                row["mean_ap_difference"] = sel["mean_ap_difference"].iloc[0] if len(sel) else np.nan
                row["n_queries"] = int(sel["n_pairs"].iloc[0]) if len(sel) else 0
                row["verdict"] = _verdict(row["ratio"], row["wilcoxon_p"])
            rows.append(row)
    return pd.DataFrame(rows)


def _verdict(ratio: float, p: float, alpha: float = 0.05) -> str:
    if not np.isfinite(ratio):
        return "no verdict"
    if np.isfinite(p) and p < alpha:
        return "model better" if ratio > 1 else "model worse"
    return "no significant difference"


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


def design_notes(long: pd.DataFrame) -> list[str]:
    """What the design cannot measure, said before any number: no held-out compounds, plates or a single plate."""
    notes = []
    scored = long[long["n_queries"] > 0]
    if not (scored["compound_split"] == "validation").any():
        notes.append("no validation compound (compounds.validation holds none out of training): every number below "
                     "is on compounds the model was trained on, and the model is its last evaluated epoch, not one "
                     "selected on held-out compounds.")
    if not (scored["plate_split"] == "validation").any():
        notes.append("no validation plate (plates.validation is empty): every number below is on plates the model "
                     "was trained on.")
    if long["plate"].nunique() == 1:
        notes.append("a single plate: every number below is in-sample for that plate's batch effects.")
    return notes


def _label(key: Key) -> str:
    return key[0] if key[1] == RAW else f"{key[0]} + {key[1]}"


def headline_keys(long: pd.DataFrame) -> tuple[Key, Key, tuple[str, str] | None]:
    """The model at its best pipeline and BM, the best non-learned profile, both chosen on :func:`key_cell`."""
    cell = key_cell(long)
    if cell is None:
        return (MODEL, RAW), (BASELINE, RAW), None
    means = split_means(long, *cell)
    return best(means, lambda m: m == MODEL) or (MODEL, RAW), best(means, is_nonlearned) or (BASELINE, RAW), cell


def markdown_report(long: pd.DataFrame, ap: pd.DataFrame, splits: Splits, threshold: float = 0.05) -> str:
    """``map_per_plate.md``: the headline table, and the baseline-corrected one when the APs have it."""
    model, bm, cell = headline_keys(long)
    per_plate = paired_tests(ap, model, bm, splits, by="plate")
    pooled = paired_tests(ap, model, bm, splits, by="plate_split")
    where = f"{cell[0]} plates x {cell[1]} compounds" if cell else "no cell with queries"
    p_fmt = {c: format_p for c in ("Training p (model vs BM)", "Validation p (model vs BM)")}
    text = (
        "# Replicate retrieval mAP per plate\n\n"
        f"**model: {_label(model)}. BM: {_label(bm)}**, the best non-learned profile (of every baseline through every "
        f"profile pipeline); both profiles chosen on {where}. tables/verdict.md compares them on every plate split x "
        "compound split; tables/map_per_plate.csv has every method through every pipeline.\n\n"
        "Training/Validation mAP: compounds used / held out in training; PR: precision at R over all compounds. "
        "Retrieved: fraction of compounds whose mAP beats random rankings "
        f"(permutation p-value, BH-corrected per plate, method and pipeline, < {threshold:g}). "
        "p (model vs BM): two-sided Wilcoxon signed-rank test of the model's AP against BM's over the same "
        "query wells (mean rows: over all query wells of those plates).\n\n"
        + "".join(f"**Note:** {note}\n\n" for note in design_notes(long))
        + to_markdown(headline_table(long, model, bm, per_plate, pooled), formats=p_fmt)
    )
    if "baseline_corrected_mAP" in long.columns:
        text += (
            "\n## Baseline-corrected mAP\n\n"
            "Not the plain mAP: each well's AP minus its random-ranking baseline (n_positives / n_candidates), "
            "clipped at 0 (CytoSummaryNet's correction), then averaged like the mAP.\n\n"
            + to_markdown(headline_table(long, model, bm, per_plate, pooled, column="baseline_corrected_mAP"),
                          formats=p_fmt)
        )
    if "moa_mAP" in long.columns:
        sel = long[(long.compound_split == "all") & (long.profile_pipeline == model[1])]
        moa = sel.pivot_table(index=["plate_split", "plate"], columns="method", values="moa_mAP")
        moa = moa.reset_index().sort_values("plate_split", key=lambda s: s.map(_SPLIT_ORDER))
        text += (
            f"\n## MoA retrieval mAP (all compounds, pipeline {model[1]})\n\n"
            "Positives: wells of other compounds with the same MoA; the query's own replicates are not ranked.\n\n"
            + to_markdown(moa.rename(columns={"plate_split": "plate split"}))
        )
    return text


def verdict_markdown(verdict: pd.DataFrame, long: pd.DataFrame) -> str:
    """``verdict.md``: the verdict table, with the question it answers first."""
    text = (
        "# Verdict: the learned profile against the best non-learned profile\n\n"
        "For each plate split x compound split: the best non-learned profile (every baseline through every profile "
        "pipeline, by the mean over the cell's plates of their mAP) and the model at its best pipeline, their ratio, "
        "and a two-sided Wilcoxon signed-rank test of their APs over the same query wells. The controls (the "
        "untrained network and the network trained on well means) are shown at their best pipelines. The cell that "
        "counts is validation plates x validation compounds: plates and compounds the model never saw.\n\n"
        + "".join(f"**Note:** {note}\n\n" for note in design_notes(long))
    )
    if verdict.empty:
        return text + "No plate split x compound split has queries: no verdict.\n"
    show = verdict.copy()
    for who in ("best_nonlearned", "model_untrained", "mlp_on_mean"):
        if f"{who}_mAP" in show.columns:
            pipe = show.get(f"{who}_pipeline")
            name = show[who] if who == "best_nonlearned" else who
            show[f"{who}_mAP"] = [f"{v:.3f} ({n} + {p})" if isinstance(v, float) and np.isfinite(v) else "-"
                                  for v, n, p in zip(show[f"{who}_mAP"], np.broadcast_to(name, len(show)), pipe)]
    if "model_mAP" in show.columns:
        show["model_mAP"] = [f"{v:.3f} ({p})" for v, p in zip(show["model_mAP"], show["model_pipeline"])]
    cols = [c for c in ("plate_split", "compound_split", "best_nonlearned_mAP", "model_mAP", "ratio", "wilcoxon_p",
                        "n_queries", "verdict", "model_untrained_mAP", "mlp_on_mean_mAP") if c in show.columns]
    names = {"plate_split": "plate split", "compound_split": "compound split",
             "best_nonlearned_mAP": "best non-learned mAP", "model_mAP": "model mAP", "wilcoxon_p": "p",
             "n_queries": "queries", "model_untrained_mAP": "untrained network mAP",
             "mlp_on_mean_mAP": "network on well means mAP"}
    return text + to_markdown(show[cols].rename(columns=names), formats={"p": format_p})


def summarize_plates(ap_files: dict[str, list], out_csv, out_md, out_compounds, out_verdict_csv, out_verdict_md,
                     settings: SummarizeSettings) -> pd.DataFrame:
    """The summarize step: every profile's per-well AP files (``profile_key(method, pipeline)`` or a method name ->
    files) -> ``out_csv`` (the long mAP table), ``out_md`` (the headline tables), ``out_compounds`` (per compound,
    with p-values) and the verdict (csv and md)."""
    from ..profiles.pipelines import KEY_SEPARATOR, split_key

    frames = []
    for key, files in ap_files.items():
        method, pipeline = split_key(key) if KEY_SEPARATOR in key else (key, RAW)
        frames += [read_parquet(f).assign(method=method, profile_pipeline=pipeline) for f in files]
    ap = pd.concat(frames, ignore_index=True)
    per_compound = ap_per_compound(
        add_splits(ap, settings.splits), null_size=settings.null_size, threshold=settings.significance_threshold,
        seed=settings.seed,
    )
    long = map_per_plate(ap, settings.splits, per_compound=per_compound)
    verdict = verdict_table(long, ap, settings.splits)
    write_table(long, out_csv)
    write_table(per_compound, out_compounds)
    write_table(verdict, out_verdict_csv)
    write_text(verdict_markdown(verdict, long), out_verdict_md)
    write_text(markdown_report(long, ap, settings.splits, settings.significance_threshold), out_md)
    return long
