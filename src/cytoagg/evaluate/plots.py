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


MAX_PLATES_AS_BARS = 24  # more plates: each method's mAP over the plates as a box, per plate split


def plate_labels(plates: list[str], width: int = 22) -> dict[str, str]:
    """Tick labels for plate names: a name longer than ``width`` keeps its start and end around an ellipsis
    (``BR00117010__20...Measurement1``), unless that would make two labels the same; then the full names."""
    keep = (width - 1) // 2
    short = {p: p if len(p) <= width else f"{p[:keep]}\u2026{p[-keep:]}" for p in plates}
    return short if len(set(short.values())) == len(plates) else {p: p for p in plates}


def plot_map_per_plate(long: pd.DataFrame, out) -> None:
    """mAP per plate for each method at its best pipeline, one panel per compound split that has queries (each
    titled): grouped bars per plate, or (more than MAX_PLATES_AS_BARS plates) each method's mAP over the plates of
    a split as a box with the plates as points. The legend is outside the panels, plate names slanted."""
    long = best_pipelines(long)
    parts = [p for p in ("train", "validation") if ((long.compound_split == p) & (long.n_queries > 0)).any()]
    order = ["model", "model_untrained", "mlp_on_mean"]
    methods = [m for m in order if m in set(long.method)] + sorted(set(long.method) - set(order))
    labels = long.drop_duplicates("method").set_index("method")["label"]
    n_plates = long.plate.nunique()
    if n_plates > MAX_PLATES_AS_BARS:
        _map_boxes(long, parts, methods, labels, out)
        return
    names = plate_labels(list(dict.fromkeys(long.plate)))
    slant = n_plates > 4 or max(map(len, names.values())) > 10
    n_panels = max(len(parts), 1)
    if n_plates <= 4:  # panels side by side
        fig, axes = plt.subplots(1, n_panels, figsize=(max(4.5, 0.3 * n_plates * len(methods) + 1.5) * n_panels, 4.2),
                                 squeeze=False, sharey=True)
        axes = axes[0]
    else:  # panels one above the other, as wide as the plates need (at most 14 inches)
        fig, axes = plt.subplots(n_panels, 1, figsize=(min(14.0, 0.2 * n_plates * len(methods) + 2.0), 4.0 * n_panels),
                                 squeeze=False)
        axes = axes[:, 0]
    for ax, part in zip(axes, parts):
        sub = long[long.compound_split == part]
        plates = list(dict.fromkeys(sub.sort_values(["plate_split", "plate"]).plate))
        width = 0.8 / len(methods)
        for i, m in enumerate(methods):
            vals = sub[sub.method == m].set_index("plate").reindex(plates)["mAP"]
            ax.bar(np.arange(len(plates)) + i * width, vals, width, label=labels[m], color=f"C{i}",
                   edgecolor="black" if m == "model" else "none", linewidth=0.8)
        split_of = sub.drop_duplicates("plate").set_index("plate")["plate_split"]
        ax.set_xticks(np.arange(len(plates)) + 0.4 - width / 2)
        ax.set_xticklabels([f"{names[p]}\n({split_of[p]})" for p in plates], fontsize=8,
                           rotation=35 if slant else 0, ha="right" if slant else "center",
                           rotation_mode="anchor" if slant else "default")
        ax.set_title(f"{'training' if part == 'train' else 'held-out (validation)'} compounds", fontsize=10)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", lw=0.4, alpha=0.5)
        if n_plates > 4 or ax is axes[0]:
            ax.set_ylabel("mAP (replicate retrieval)")
    _legend_outside(fig, axes[0])
    _save(fig, out)


def _legend_outside(fig, ax, handles=None, names=None) -> None:
    """The legend to the right of the panels, where it covers nothing."""
    if handles is None:
        handles, names = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
                   title="method (its best pipeline)", title_fontsize=8)
    fig.tight_layout()


def _map_boxes(long: pd.DataFrame, parts: list[str], methods: list[str], labels, out) -> None:
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(1, max(len(parts), 1), figsize=(max(4.5, 0.55 * len(methods) * 2 + 1.5) * max(len(parts), 1),
                                                             4.2), squeeze=False, sharey=True)
    rng = np.random.default_rng(0)
    for ax, part in zip(axes[0], parts):
        sub = long[(long.compound_split == part) & (long.n_queries > 0)]
        splits = [s for s in ("train", "validation") if (sub.plate_split == s).any()]
        for j, split in enumerate(splits):
            for i, m in enumerate(methods):
                vals = sub[(sub.method == m) & (sub.plate_split == split)]["mAP"].dropna().to_numpy()
                x = j * (len(methods) + 1) + i
                ax.boxplot(vals, positions=[x], widths=0.7, showfliers=False, patch_artist=True,
                           boxprops=dict(facecolor=f"C{i}", alpha=0.45), medianprops=dict(color="black"))
                ax.plot(x + rng.uniform(-0.2, 0.2, len(vals)), vals, ".", ms=2, color=f"C{i}")
        ax.set_xticks([j * (len(methods) + 1) + (len(methods) - 1) / 2 for j in range(len(splits))])
        ax.set_xticklabels([f"{s} plates ({sub[sub.plate_split == s].plate.nunique()})" for s in splits], fontsize=9)
        ax.set_title(f"{'training' if part == 'train' else 'held-out (validation)'} compounds", fontsize=10)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", lw=0.4, alpha=0.5)
    axes[0][0].set_ylabel("mAP per plate (replicate retrieval)")
    handles = [Patch(facecolor=f"C{i}", alpha=0.6) for i in range(len(methods))]
    _legend_outside(fig, axes[0][0], handles, [labels[m] for m in methods])
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


METHOD_LABELS = {"model": "model", "mean": "mean (BM)", "median": "median", "mean_std": "mean+std",
                 "filtered_mean": "filtered mean"}


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
    """Normalized singular value spectra (log scale) of each representation, effective ranks in the legend (below
    the panels, so it covers no curve)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
    names = {"pooled": "model, pooled (before head)", "head": "model, head output", "mean": "mean baseline (BM)"}
    for rep in summary["representation"]:
        row = summary[summary["representation"] == rep].iloc[0]
        s = spectra[spectra["representation"] == rep]
        a.plot(s["k"], s["p"], label=f"{names.get(rep, rep)}: effective rank {row['effective_rank']:.1f} of "
               f"{row['max_rank']}")
        b.plot(s["k"], np.cumsum(s["p"]), label=names.get(rep, rep))
    a.set_yscale("log")
    a.set_xscale("log")
    a.set_xlabel("singular value index k")
    a.set_ylabel("normalized singular value $p_k$")
    a.set_title("spectrum", fontsize=10)
    b.set_xscale("log")
    b.set_xlabel("singular value index k")
    b.set_ylabel("cumulative share of $p_k$")
    b.set_title("cumulative", fontsize=10)
    b.set_ylim(0, 1.02)
    n = int(summary["n_wells"].iloc[0])
    plates = str(summary["plates"].iloc[0])
    fig.suptitle(f"{n} wells of plate(s) {plates if len(plates) < 60 else plates[:57] + '...'} (rows unit length, "
                 "columns centered)", fontsize=9)
    handles, labels = a.get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.legend(handles, labels, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=len(labels),
               frameon=False)
    _save(fig, out)


SALIENCY_LABELS = {"contribution": "V0: contribution (share of the well)", "gradient": "V1: gradient of the loss"}


def plot_saliency_correlation(table: pd.DataFrame, out, top: int = 15) -> None:
    """Per saliency, the ``top`` features most positively and most negatively correlated with it across a
    well's cells (mean over every plate's wells: the table's ``all`` rows): Pearson bars, Spearman dots."""
    overall = table[table["plate"] == "all"].dropna(subset=["pearson"])
    names = [n for n in SALIENCY_LABELS if (overall["saliency"] == n).any()]
    height = max(3.0, 0.17 * min(2 * top, overall.groupby("saliency").size().max() if len(overall) else 1) + 1.2)
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(6.5 * max(len(names), 1), height), squeeze=False)
    for ax, name in zip(axes[0], names):
        t = overall[overall["saliency"] == name].sort_values("pearson", ascending=False)
        if len(t) > 2 * top:
            t = pd.concat([t.head(top), t.tail(top)])
        y = np.arange(len(t))[::-1]
        ax.barh(y, t["pearson"], color=np.where(t["pearson"] >= 0, "C0", "C3"), alpha=0.8, label="Pearson")
        ax.plot(t["spearman"], y, "k.", ms=4, label="Spearman")
        ax.set_yticks(y)
        ax.set_yticklabels(t["feature"], fontsize=7)
        ax.axvline(0, color="0.3", lw=0.8)
        if len(t) == 2 * top and len(overall[overall["saliency"] == name]) > 2 * top:
            ax.axhline(top - 0.5, color="0.6", lw=0.8, ls=":")
        ax.set_xlim(-1, 1)
        ax.set_xlabel(f"correlation across a well's cells (mean over {int(t['n_wells'].max())} wells)")
        ax.set_title(SALIENCY_LABELS[name], fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    if not names:
        axes[0][0].text(0.5, 0.5, "no correlations (no well with enough cells)", ha="center", va="center")
        axes[0][0].axis("off")
    _save(fig, out)


def plot_saliency_cells(examples: pd.DataFrame, out) -> None:
    """Per example well (rows) and saliency (columns): each cell's saliency against the saliency's most
    correlated feature; debris, where a debris table says which cells they are, as red crosses (and the well's
    AUROC of cells against debris in the title)."""
    from .saliency import well_auroc

    wells = list(dict.fromkeys(zip(examples["plate"], examples["well"])))
    names = [n for n in SALIENCY_LABELS if (examples["saliency"] == n).any()]
    fig, axes = plt.subplots(max(len(wells), 1), max(len(names), 1), figsize=(4.6 * max(len(names), 1), 3.0 * max(len(wells), 1)),
                             squeeze=False)
    for i, (plate, well) in enumerate(wells):
        for j, name in enumerate(names):
            ax = axes[i][j]
            g = examples[(examples["plate"] == plate) & (examples["well"] == well) & (examples["saliency"] == name)]
            debris = g["debris"].to_numpy() == 1.0
            ax.scatter(g["value"][~debris], g["score"][~debris], s=8, alpha=0.7, color="C0", label="cells")
            title = f"{plate} {well} ({g['perturbation'].iloc[0]}): {len(g)} objects, r = {g['pearson'].iloc[0]:.2f}"
            if debris.any():
                ax.scatter(g["value"][debris], g["score"][debris], s=12, marker="x", color="C3", label="debris")
                ax.legend(fontsize=7)
                title += f", AUROC cells vs debris {well_auroc(g['score'].to_numpy(), ~debris):.2f}"
            ax.set_xlabel(f"{g['feature'].iloc[0]} (normalized)", fontsize=8)
            ax.set_ylabel(SALIENCY_LABELS[name], fontsize=8)
            ax.set_title(title, fontsize=8)
    if not wells:
        axes[0][0].text(0.5, 0.5, "no well to show", ha="center", va="center")
        axes[0][0].axis("off")
    fig.tight_layout()
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


def saliency_correlation_figure(table_csv, out) -> None:
    plot_saliency_correlation(pd.read_csv(table_csv), out)


def saliency_cells_figure(saliency_files, normalized_files, table_csv, out, settings, debris_files=()) -> None:
    """``settings``: :class:`~cytoagg.evaluate.saliency.SaliencyFigureSettings`."""
    from .saliency import example_cells

    examples = example_cells(saliency_files, normalized_files, pd.read_csv(table_csv), settings.annotation,
                             settings.plot_wells, debris_files)
    plot_saliency_cells(examples, out)
