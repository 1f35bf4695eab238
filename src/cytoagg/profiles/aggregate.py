"""Non-learned well profiles: the baselines the model must beat.

- ``mean``, ``median``: of each feature over the well's cells;
- ``mean_std``: the mean and the (population) standard deviation of each feature;
- ``mean_cov``: the mean, plus the within-well (population) covariance of at most ``evaluate.cov_max_features``
  features (the upper triangle, variances included), after Rohban et al. 2019 (Nat Commun 10:2082), who found
  that dispersion and covariance profiles added to the mean improve MoA retrieval by about 20%. The features
  are chosen once on the training plates (:func:`cytoagg.preprocess.feature_select.covariance_features`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..io.cells import PlateCells, load_plate_cells
from ..io.columns import Annotation
from ..io.files import InputError
from ..io.parquet import write_profiles

BASELINES = ("mean", "median", "mean_std", "mean_cov")


def aggregate_cells(cells: PlateCells, features: list[str], method: str,
                    covariance: list[str] | None = None) -> pd.DataFrame:
    """Per-well profile of ``method`` (see the module); ``covariance``: mean_cov's features."""
    starts = cells.offsets[:-1]
    counts = cells.counts[:, None]
    x = cells.x.astype(np.float64)
    if method == "mean":
        return pd.DataFrame(np.add.reduceat(x, starts, axis=0) / counts, columns=features)
    if method == "median":
        med = np.vstack([np.median(x[a:b], axis=0) for a, b in zip(starts, cells.offsets[1:])])
        return pd.DataFrame(med, columns=features)
    if method == "mean_std":
        mean = np.add.reduceat(x, starts, axis=0) / counts
        var = np.maximum(np.add.reduceat(x * x, starts, axis=0) / counts - mean**2, 0.0)
        return pd.DataFrame(np.hstack([mean, np.sqrt(var)]), columns=[*features, *(f"{f}__std" for f in features)])
    if method == "mean_cov":
        if not covariance:
            raise InputError("mean_cov needs the list of covariance features (covariance_features.txt)")
        missing = [f for f in covariance if f not in features]
        if missing:
            raise InputError(f"mean_cov: covariance feature(s) {missing[:5]} are not among the plate's features")
        mean = np.add.reduceat(x, starts, axis=0) / counts
        cols = [features.index(f) for f in covariance]
        i, j = np.triu_indices(len(cols))
        cov = np.empty((len(starts), len(i)))
        for w, (a, b) in enumerate(zip(starts, cells.offsets[1:])):
            centered = x[a:b, cols] - mean[w, cols]
            cov[w] = (centered.T @ centered / (b - a))[i, j]
        names = [f"{covariance[a]}__cov__{covariance[b]}" for a, b in zip(i, j)]
        return pd.DataFrame(np.hstack([mean, cov]), columns=[*features, *names])
    raise InputError(f"unknown baseline {method!r} (choose from {', '.join(BASELINES)})")


def aggregate_plate(normalized, features: list[str], outputs: dict, plate: str, annotation: Annotation,
                    covariance: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """Write one row per well for each baseline in ``outputs`` (method -> path): its metadata,
    ``Metadata_n_cells`` and the baseline profile. The plate is read once for every baseline."""
    unknown = [m for m in outputs if m not in BASELINES]
    if unknown:
        raise InputError(f"unknown baseline {unknown[0]!r} (choose from {', '.join(BASELINES)})")
    cells, wells, _ = load_plate_cells(normalized, features, plate, annotation)
    written = {}
    for method, out in outputs.items():
        df = pd.concat([wells.reset_index(drop=True), aggregate_cells(cells, features, method, covariance)], axis=1)
        write_profiles(df, out)
        written[method] = df
    return written
