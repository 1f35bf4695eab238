"""The model-capacity toy data: classes with the same mean and different covariance.

Each class is an ellipse in ``dims`` dimensions; a *sample* of a class (the toy's "well") is ``points``
points drawn from it. The ellipses (``classes``):
- ``random``: a random axis ratio and orientation per class;
- ``rotated``: the CytoSummaryNet paper's own toy classes (its ``LearnCovarianceExperiment.py``), in 2
  dimensions: one ellipse, the points ``z @ A`` with ``A = [[1, .5], [.5, 1]]`` (so the covariance is ``A @ A``,
  variances 2.25 and 0.25 along its axes), class k rotated by ``k * pi / n_classes``. The mean of every class is zero, so
the mean of a sample carries no class information: the mean baseline retrieves at chance, and a
set model can only win by learning second moments.

Variants (as in the seed experiments):
- ``covariance``: the ellipses as drawn;
- ``covariance_standardized``: each feature of each sample scaled to unit variance after the
  rotation, so only the correlation (not the scale) differs between classes;
- ``sphering``: each class's points (all its samples together) ZCA-sphered with regularization
  ``epsilon`` before they are split into samples; small epsilon whitens the covariance away.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..settings import Settings

VARIANTS = ("covariance", "covariance_standardized", "sphering")
CLASSES = ("random", "rotated")


@dataclass(frozen=True)
class ToySpec(Settings):
    """One toy run: config ``experiment:`` (its schema documents each field), with one ``epsilon`` of its
    ``epsilons`` (sphering only; the other variants ignore it)."""

    variant: str
    classes: str
    dims: int
    n_classes: int
    n_train_classes: int
    samples_per_class: int
    points: int
    epsilon: float
    seed: int

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"experiment.variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.classes not in CLASSES:
            raise ValueError(f"experiment.classes must be one of {CLASSES}, got {self.classes!r}")
        if self.classes == "rotated" and self.dims != 2:
            raise ValueError(f"experiment.classes 'rotated' (the paper's ellipses) is 2-dimensional: set experiment.dims to 2, not {self.dims}")
        if not 0 < self.n_train_classes < self.n_classes:
            raise ValueError("experiment.n_train_classes must be between 1 and n_classes - 1")


def class_covariances(spec: ToySpec) -> np.ndarray:
    """(n_classes, dims, dims): ``random``: ellipses of different axis ratios and orientations, all of trace
    ``dims``; ``rotated``: one ellipse (covariance ``A @ A``, ``A = [[1, .5], [.5, 1]]``) turned by pi / n_classes
    from one class to the next."""
    if spec.classes == "rotated":
        a = np.array([[1.0, 0.5], [0.5, 1.0]])
        angles = np.pi * np.arange(spec.n_classes) / spec.n_classes
        rot = np.stack([[np.cos(angles), -np.sin(angles)], [np.sin(angles), np.cos(angles)]]).transpose(2, 0, 1)
        return rot @ (a @ a) @ rot.transpose(0, 2, 1)
    rng = np.random.default_rng(spec.seed)
    covs = []
    for _ in range(spec.n_classes):
        q, _ = np.linalg.qr(rng.normal(size=(spec.dims, spec.dims)))
        axes = np.exp(rng.uniform(-1.2, 1.2, spec.dims))
        axes *= spec.dims / axes.sum()
        covs.append(q @ np.diag(axes) @ q.T)
    return np.stack(covs)


def zca_sphere(x: np.ndarray, epsilon: float) -> np.ndarray:
    """ZCA whitening with regularization: ``(x - mean) U diag(1/sqrt(l + eps)) U^T``."""
    xc = x - x.mean(axis=0)
    cov = xc.T @ xc / (len(x) - 1)
    vals, vecs = np.linalg.eigh(cov)
    return xc @ (vecs @ np.diag(1.0 / np.sqrt(vals + epsilon)) @ vecs.T)


def _standardize(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=0)) / x.std(axis=0)


def generate(spec: ToySpec, draw: int = 0) -> pd.DataFrame:
    """All points of every class: ``Metadata_Well`` (the sample), ``Metadata_class``, ``Metadata_split``, features.

    ``draw`` selects an independent draw of points from the same classes (0: training, 1: held-out).
    """
    covs = class_covariances(spec)
    rng = np.random.default_rng([spec.seed, draw + 1])
    frames = []
    for k, cov in enumerate(covs):
        chol = np.linalg.cholesky(cov)
        x = rng.normal(size=(spec.samples_per_class * spec.points, spec.dims)) @ chol.T
        if spec.variant == "sphering":
            x = zca_sphere(x, spec.epsilon)
        for s in range(spec.samples_per_class):
            part = x[s * spec.points : (s + 1) * spec.points]
            if spec.variant == "covariance_standardized":
                part = _standardize(part)
            df = pd.DataFrame(part, columns=[f"Cells_Toy_Feature{j + 1}" for j in range(spec.dims)])
            df.insert(0, "Metadata_Well", f"C{k:02d}S{s}")
            df.insert(1, "Metadata_class", f"class{k:02d}")
            df.insert(2, "Metadata_split", "train" if k < spec.n_train_classes else "validation")
            frames.append(df)
    return pd.concat(frames, ignore_index=True)


def validation_classes(spec: ToySpec) -> list[str]:
    return [f"class{k:02d}" for k in range(spec.n_train_classes, spec.n_classes)]


def write_toy_data(spec: ToySpec, plate: str, out_train, out_validation, out_features, out_figure) -> None:
    """Training classes' samples, held-out classes' samples (the evaluation set), the feature list, a figure;
    ``plate``: the run's name, written as the samples' plate."""
    from ..io.files import write_names
    from ..io.parquet import write_profiles

    df = generate(spec)
    df.insert(0, "Metadata_Plate", plate)
    write_profiles(df[df.Metadata_split == "train"], out_train)
    write_profiles(df[df.Metadata_split == "validation"], out_validation)
    write_names([c for c in df.columns if not c.startswith("Metadata_")], out_features)
    plot_classes(df, spec, out_figure)


def plot_classes(df: pd.DataFrame, spec: ToySpec, out) -> None:
    """One panel per class: its first sample's points (first two features), training classes first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io.files import atomic_path

    classes = sorted(df.Metadata_class.unique())
    ncol = (len(classes) + 1) // 2
    fig, axes = plt.subplots(2, ncol, figsize=(2.2 * ncol, 4.6), squeeze=False, sharex=True, sharey=True)
    for ax, k in zip(axes.flat, classes):
        sample = df[(df.Metadata_class == k)].groupby("Metadata_Well").head(spec.points).iloc[: spec.points]
        x = sample.filter(like="Cells_").to_numpy()
        ax.scatter(x[:, 0], x[:, 1 % x.shape[1]], s=1, alpha=0.4, color="C0" if sample.Metadata_split.iloc[0] == "train" else "C1")
        ax.set_title(f"{k} ({sample.Metadata_split.iloc[0]})", fontsize=8)
        lim = np.percentile(np.abs(df.filter(like="Cells_").to_numpy()[:, :2]), 99.5)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(classes):]:
        ax.axis("off")
    title = f"{spec.variant}" + (f", epsilon {spec.epsilon:g}" if spec.variant == "sphering" else "")
    fig.suptitle(f"{title}: equal means, different covariances (blue: training classes, orange: held out)", fontsize=9)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def summarize_runs(ap: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``ap``: per-sample AP rows with columns run, method, well, perturbation, average_precision, precision_at_r.

    Returns (per-sample table, one row per run: model and mean mAP / precision at R).
    """
    wide = ap.pivot_table(
        index=["run", "well", "perturbation"], columns="method", values=["average_precision", "precision_at_r"]
    )
    wide.columns = [f"{m} {'AP' if v == 'average_precision' else 'P@R'}" for v, m in wide.columns]
    per_sample = wide.reset_index().rename(columns={"well": "sample", "perturbation": "class"})
    per_sample = per_sample[["run", "sample", "class", "model AP", "model P@R", "mean AP", "mean P@R"]]
    summary = per_sample.groupby("run", sort=False)[["model AP", "model P@R", "mean AP", "mean P@R"]].mean().reset_index()
    summary.columns = ["run", "model mAP", "model precision at R", "mean mAP", "mean precision at R"]
    summary.insert(1, "n samples", per_sample.groupby("run", sort=False).size().to_numpy())
    return per_sample, summary


def summarize_toy(ap_files: list, out_md, out_csv) -> pd.DataFrame:
    """The toy summary step: each run's per-sample AP table (the evaluate step's; the run is its plate) ->
    ``out_csv`` (per sample, model and mean) and ``out_md``."""
    from ..evaluate.summarize import to_markdown
    from ..io.files import write_table, write_text
    from ..io.parquet import read_parquet

    ap = pd.concat([read_parquet(f) for f in ap_files], ignore_index=True)
    ap = ap[ap["method"].isin(["model", "mean"])]
    ap.insert(0, "run", ap["plate"])
    per_sample, summary = summarize_runs(ap)
    write_table(per_sample, out_csv)
    write_text(
        "# Toy classes: equal means, different covariances\n\n"
        "Held-out classes only; each sample queries the other held-out samples (cosine similarity).\n\n"
        + to_markdown(summary) + "\n## Per sample\n\n" + to_markdown(per_sample),
        out_md,
    )
    return summary
