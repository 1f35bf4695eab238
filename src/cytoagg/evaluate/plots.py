"""Report figures (matplotlib, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..io.columns import Annotation  # noqa: E402
from ..io.files import atomic_path  # noqa: E402
from ..io.parquet import read_parquet  # noqa: E402


def _save(fig, out) -> None:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def best_pipelines(long: pd.DataFrame) -> pd.DataFrame:
    """The long table's rows of each method at its best pipeline (chosen on the headline's key cell)."""
    from .summarize import key_cell, split_means

    if "profile_pipeline" not in long.columns:
        return long.assign(label=long["method"])
    cell = key_cell(long)
    means = split_means(long, *cell) if cell else pd.Series(dtype=float)
    chosen = {m: means.xs(m, level="method").idxmax() for m in means.index.get_level_values("method").unique()}
    for m in set(long.method) - set(chosen):
        chosen[m] = "raw"
    keep = long[[chosen[m] == p for m, p in zip(long.method, long.profile_pipeline)]]
    return keep.assign(label=[m if p == "raw" else f"{m} ({p})" for m, p in zip(keep.method, keep.profile_pipeline)])


def plot_map_per_plate(long: pd.DataFrame, out) -> None:
    """Grouped bars: mAP per plate for each method at its best pipeline, one panel per compound split."""
    long = best_pipelines(long)
    parts = [p for p in ("train", "validation") if ((long.compound_split == p) & (long.n_queries > 0)).any()]
    order = ["model", "model_untrained", "mlp_on_mean"]
    methods = [m for m in order if m in set(long.method)] + sorted(set(long.method) - set(order))
    labels = long.drop_duplicates("method").set_index("method")["label"]
    n_plates = long.plate.nunique()
    fig, axes = plt.subplots(1, max(len(parts), 1), figsize=(max(6, 1.1 * n_plates * len(methods) / 3) * len(parts), 4.6),
                             squeeze=False, sharey=True)
    for ax, part in zip(axes[0], parts):
        sub = long[long.compound_split == part]
        plates = list(dict.fromkeys(sub.sort_values(["plate_split", "plate"]).plate))
        width = 0.8 / len(methods)
        for i, m in enumerate(methods):
            vals = sub[sub.method == m].set_index("plate").reindex(plates)["mAP"]
            ax.bar(np.arange(len(plates)) + i * width, vals, width, label=labels[m], color=f"C{i}",
                   edgecolor="black" if m == "model" else "none", linewidth=0.8)
        split_of = sub.drop_duplicates("plate").set_index("plate")["plate_split"]
        ax.set_xticks(np.arange(len(plates)) + 0.4 - width / 2)
        ax.set_xticklabels([f"{p}\n({split_of[p]})" for p in plates], fontsize=8, rotation=30 if n_plates > 6 else 0,
                           ha="right" if n_plates > 6 else "center")
        ax.set_title(f"{part} compounds")
        ax.set_ylabel("mAP")
        ax.set_ylim(0, 1)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(names)),
               frameon=False)
    _save(fig, out)


def plot_training_curve(history: pd.DataFrame, out) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot(history.epoch, history.loss)
    a.set_xlabel("epoch")
    a.set_ylabel("training loss")
    for col in ("train_mAP", "val_mAP"):
        if col in history:
            h = history.dropna(subset=[col])
            b.plot(h.epoch, h[col], marker=".", label=col.replace("_mAP", " compounds"))
    b.set_xlabel("epoch")
    b.set_ylabel("mAP (training plates)")
    b.legend()
    _save(fig, out)


def plot_cells_per_well(n_cells: pd.DataFrame, out) -> None:
    """``n_cells``: columns plate, n_cells (one row per well)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(n_cells["n_cells"], bins=40)
    ax.set_xlabel("cells per well")
    ax.set_ylabel("wells")
    ax.set_title(f"{len(n_cells)} wells, {n_cells.plate.nunique()} plates; median {np.median(n_cells.n_cells):.0f} cells")
    _save(fig, out)


METHOD_LABELS = {"model": "model", "mean": "mean (BM)", "median": "median", "mean_std": "mean+std"}


def _method_order(methods) -> list[str]:
    known = [m for m in METHOD_LABELS if m in set(methods)]
    return known + sorted(set(methods) - set(known))


def plot_pr_curves(curves: pd.DataFrame, out, plate: str = "") -> None:
    """One panel per group (compound kind, or compound split): precision vs recall of its query, per method.

    ``curves``: the output of :func:`cytoagg.evaluate.pr_curves`.
    """
    groups = list(dict.fromkeys(curves["group"]))
    ncol = min(len(groups), 4)
    nrow = -(-len(groups) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.3 * nrow), squeeze=False, sharex=True, sharey=True)
    for ax, group in zip(axes.flat, groups):
        g = curves[curves["group"] == group]
        for i, method in enumerate(_method_order(g["method"].unique())):
            m = g[g["method"] == method]
            ap = m["average_precision"].iloc[0]
            hits = m[m["recall"].diff().fillna(m["recall"]) > 0]  # the ranks where a positive comes
            ax.plot(np.r_[0, hits["recall"]], np.r_[hits["precision"].iloc[0], hits["precision"]], marker="o", ms=3,
                    markevery=list(range(1, len(hits) + 1)), color=f"C{i}", label=f"{METHOD_LABELS.get(method, method)} (AP {ap:.2f})", lw=1.6 if method == "model" else 1.0)
        first = g.iloc[0]
        ax.set_title(f"{group}\n{first['perturbation']} ({first['well']})", fontsize=9)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=7, loc="upper right")
    for ax in axes[-1]:
        ax.set_xlabel("recall")
    for ax in axes[:, 0]:
        ax.set_ylabel("precision")
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    if plate:
        fig.suptitle(f"plate {plate}: one query well per group (the model's median-AP query); "
                     "markers: precision when each replicate is retrieved", fontsize=9, y=1.07)
    _save(fig, out)


def plot_map_vs_cells(compact: pd.DataFrame, n_cells: pd.DataFrame, out) -> None:
    """mAP vs cells sampled per well (one panel per plate split; mean over plates, +- sd over seeds), and
    the histogram of cells per well with the sample sizes marked.

    ``compact``: the compact table of :func:`cytoagg.sampling_sweep.summarize_sweep`;
    ``n_cells``: columns plate, n_cells (one row per well).
    """
    splits = [s for s in ("train", "validation", "unknown") if (compact["plate_split"] == s).any()]
    fig, axes = plt.subplots(1, len(splits) + 1, figsize=(4.6 * (len(splits) + 1), 3.8), squeeze=False)
    axes = axes[0]
    sampled = compact[compact["cells_sampled"] != "all"]
    sizes = sorted({int(v) for v in sampled["cells_sampled"]})
    x_all = max(sizes) * 1.6 if sizes else 1.0
    styles = {"validation": "-", "train": "--", "all": ":"}
    for ax, split in zip(axes, splits):
        sub = compact[compact["plate_split"] == split]
        for method in _method_order(sub["method"].unique()):
            for part in ("validation", "train"):
                g = sub[(sub["method"] == method) & (sub["compound_split"] == part)]
                if g.empty:
                    continue
                s = g[g["cells_sampled"] != "all"].assign(n=lambda d: d["cells_sampled"].astype(int)).sort_values("n")
                color = f"C{_method_order(sub['method'].unique()).index(method)}"
                ax.errorbar(s["n"], s["mAP"], yerr=s["mAP_sd"].fillna(0), ls=styles[part], marker="o", ms=3,
                            color=color, capsize=2, label=f"{METHOD_LABELS.get(method, method)}, {part} compounds")
                a = g[g["cells_sampled"] == "all"]
                if len(a):
                    ax.plot([x_all], a["mAP"], marker="*", ms=9, color=color, ls="none")
        ticks = sizes + [x_all]
        ax.set_xscale("log")
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(s) for s in sizes] + ["all"], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("cells sampled per well (star: all cells)")
        ax.set_ylabel("mAP")
        ax.set_title(f"{split} plates")
        ax.legend(fontsize=7)
    ax = axes[-1]
    ax.hist(n_cells["n_cells"], bins=40, color="0.6")
    for s in sizes:
        ax.axvline(s, color="C3", lw=0.8, ls="--")
    ax.set_xlabel("cells per well (dashed: sample sizes)")
    ax.set_ylabel("wells")
    ax.set_title(f"{len(n_cells)} wells; median {np.median(n_cells['n_cells']):.0f} cells")
    _save(fig, out)


def plot_effective_rank(summary: pd.DataFrame, spectra: pd.DataFrame, out) -> None:
    """Normalized singular value spectra (log scale) of each representation, effective ranks in the legend."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = {"pooled": "model, pooled (before head)", "head": "model, head output", "mean": "mean baseline (BM)"}
    for rep in summary["representation"]:
        row = summary[summary["representation"] == rep].iloc[0]
        s = spectra[spectra["representation"] == rep]
        a.plot(s["k"], s["p"], label=f"{names.get(rep, rep)}: {row['effective_rank']:.1f} of {row['max_rank']}")
        b.plot(s["k"], np.cumsum(s["p"]), label=names.get(rep, rep))
    a.set_yscale("log")
    a.set_xscale("log")
    a.set_xlabel("singular value index k")
    a.set_ylabel("normalized singular value p_k")
    a.legend(fontsize=8, title="effective rank", title_fontsize=8)
    b.set_xscale("log")
    b.set_xlabel("k")
    b.set_ylabel("cumulative share")
    b.set_ylim(0, 1.02)
    n = int(summary["n_wells"].iloc[0])
    fig.suptitle(f"{n} wells of plates {summary['plates'].iloc[0]} (rows unit length, columns centered)", fontsize=9)
    _save(fig, out)


# --- one function per figure of the report: read the figure's inputs, draw it (each is one CLI subcommand) ---


def cells_per_well(profile_files, annotation: Annotation) -> pd.DataFrame:
    """plate, n_cells: one row per well of the given per-well profile files (``Metadata_n_cells``)."""
    frames = [read_parquet(f, [annotation.plate_col, "Metadata_n_cells"]) for f in profile_files]
    df = pd.concat(frames).rename(columns={annotation.plate_col: "plate", "Metadata_n_cells": "n_cells"})
    return df.astype({"n_cells": int})


def map_per_plate_figure(table_csv, out) -> None:
    plot_map_per_plate(pd.read_csv(table_csv), out)


def training_figure(training_log_csv, out) -> None:
    plot_training_curve(pd.read_csv(training_log_csv), out)


def cells_per_well_figure(profile_files, out, annotation: Annotation) -> None:
    plot_cells_per_well(cells_per_well(profile_files, annotation), out)


def pr_curve_figure(profiles: dict, out, settings) -> None:
    """``profiles``: method -> one plate's profile file; ``settings``: :class:`~cytoagg.evaluate.retrieval.PrCurveSettings`."""
    from .retrieval import pr_curves

    plot_pr_curves(pr_curves(profiles, settings), out, plate=settings.plate)


def sampling_sweep_figure(table_csv, profile_files, out, annotation: Annotation) -> None:
    from .sampling_sweep import compact_sweep

    compact = compact_sweep(pd.read_csv(table_csv, dtype={"cells_sampled": str}))
    plot_map_vs_cells(compact, cells_per_well(profile_files, annotation), out)


def effective_rank_figure(summary_csv, spectra_csv, out) -> None:
    plot_effective_rank(pd.read_csv(summary_csv), pd.read_csv(spectra_csv), out)
