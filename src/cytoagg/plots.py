"""Report figures (matplotlib, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .io import atomic_path  # noqa: E402


def _save(fig, out) -> None:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_map_per_plate(long: pd.DataFrame, out) -> None:
    """Grouped bars: mAP per plate for each method, one panel per compound split."""
    parts = [p for p in ("train", "validation") if (long.compound_split == p).any()]
    methods = list(dict.fromkeys(["model", *sorted(long.method.unique())]))
    methods = [m for m in methods if m in set(long.method)]
    fig, axes = plt.subplots(1, len(parts), figsize=(6 * len(parts), 4), squeeze=False, sharey=True)
    for ax, part in zip(axes[0], parts):
        sub = long[long.compound_split == part]
        plates = list(dict.fromkeys(sub.sort_values(["plate_split", "plate"]).plate))
        width = 0.8 / len(methods)
        for i, m in enumerate(methods):
            vals = sub[sub.method == m].set_index("plate").reindex(plates)["mAP"]
            ax.bar(np.arange(len(plates)) + i * width, vals, width, label=m)
        split_of = sub.drop_duplicates("plate").set_index("plate")["plate_split"]
        ax.set_xticks(np.arange(len(plates)) + 0.4 - width / 2)
        ax.set_xticklabels([f"{p}\n({split_of[p]})" for p in plates], fontsize=8)
        ax.set_title(f"{part} compounds")
        ax.set_ylabel("mAP")
        ax.set_ylim(0, 1)
    axes[0][-1].legend(fontsize=8)
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
