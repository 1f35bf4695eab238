"""Non-learned well profiles: the baselines the model must beat.

- ``mean``, ``median``: of each feature over the well's cells;
- ``mean_std``: the mean and the (population) standard deviation of each feature;
- ``mean_cov``: the mean, plus the within-well (population) covariance of at most ``evaluate.cov_max_features``
  features (the upper triangle, variances included), after Rohban et al. 2019 (Nat Commun 10:2082), who found
  that dispersion and covariance profiles added to the mean improve MoA retrieval by about 20%. The features
  are chosen once on the training plates (:func:`cytoagg.preprocess.feature_select.covariance_features`);
- ``filtered_mean``: the mean of the cells in a quantile range of one feature (``evaluate.filtered_mean``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ..io.cells import PlateCells, load_plate_cells
from ..io.columns import Annotation
from ..io.files import InputError
from ..io.parquet import parquet_columns, write_profiles
from ..settings import Settings

logger = logging.getLogger(__name__)

BASELINES = ("mean", "median", "mean_std", "mean_cov", "filtered_mean")


@dataclass(frozen=True)
class FilteredMean(Settings):
    """Config ``evaluate.filtered_mean``: ``filtered_mean`` is the mean of the cells whose ``feature`` lies between
    its ``lower_quantile`` and ``upper_quantile`` on the plate (both ends included)."""

    feature: str
    lower_quantile: float
    upper_quantile: float


@dataclass(frozen=True)
class AggregateSettings(Settings):
    """The metadata columns and config ``evaluate.filtered_mean``."""

    annotation: Annotation
    filtered_mean: FilteredMean


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


def filtered_mean(cells: PlateCells, values: np.ndarray, features: list[str], setting: FilteredMean) -> tuple[pd.DataFrame, np.ndarray]:
    """The mean of each well's cells whose filter value (``values``, one per cell of ``cells``) lies in the
    plate's quantile range ``[q(lower_quantile), q(upper_quantile)]``: quantiles of every cell of the plate
    (all wells, controls too; numpy's linear interpolation), both ends included.

    Returns the profiles (NaN for a well with no cell in the range) and the cells kept per well.
    """
    lo, hi = np.quantile(values.astype(np.float64), [setting.lower_quantile, setting.upper_quantile])
    keep = (values >= lo) & (values <= hi)
    kept = np.add.reduceat(keep.astype(np.int64), cells.offsets[:-1])
    sums = np.add.reduceat(np.where(keep[:, None], cells.x.astype(np.float64), 0.0), cells.offsets[:-1], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.DataFrame(sums / kept[:, None], columns=features), kept


def aggregate_plate(normalized, features: list[str], outputs: dict, plate: str, annotation: Annotation,
                    covariance: list[str] | None = None, filtered: FilteredMean | None = None) -> dict[str, pd.DataFrame]:
    """Write one row per well for each baseline in ``outputs`` (method -> path): its metadata,
    ``Metadata_n_cells`` and the baseline profile. The plate is read once for every baseline.

    ``filtered_mean`` (settings ``filtered``) reads its filter feature from the same normalized plate, whether
    or not it is one of ``features``. Its ``Metadata_n_cells`` counts the cells kept; a well with none in the
    range is left out, and a warning names it. Cells whose filter value is not finite are not in
    ``filtered_mean`` but stay in the other baselines (the plate is then read a second time).
    """
    unknown = [m for m in outputs if m not in BASELINES]
    if unknown:
        raise InputError(f"unknown baseline {unknown[0]!r} (choose from {', '.join(BASELINES)})")
    extra = []
    if "filtered_mean" in outputs:
        if filtered is None:
            raise InputError("filtered_mean needs the evaluate.filtered_mean settings")
        _check_filter(normalized, filtered)
        extra = [] if filtered.feature in features else [filtered.feature]
    separate = bool(extra) and not _all_finite(normalized, filtered.feature)
    cells, wells, _ = load_plate_cells(normalized, features if separate else [*features, *extra], plate, annotation)
    written = {}
    for method, out in outputs.items():
        if method == "filtered_mean":
            fcells, fwells = load_plate_cells(normalized, [*features, *extra], plate, annotation)[:2] if separate else (cells, wells)
            values = fcells.x[:, [*features, *extra].index(filtered.feature)]
            df = _filtered_mean_table(_first(fcells, len(features)), fwells, values, features, filtered, annotation)
        else:
            df = pd.concat([wells.reset_index(drop=True), aggregate_cells(_first(cells, len(features)), features, method, covariance)], axis=1)
        write_profiles(df, out)
        written[method] = df
    return written


def _filtered_mean_table(cells, wells, values, features, setting: FilteredMean, annotation: Annotation) -> pd.DataFrame:
    profile, kept = filtered_mean(cells, values, features, setting)
    df = pd.concat([wells.reset_index(drop=True), profile], axis=1)
    df["Metadata_n_cells"] = kept.astype(str)
    empty = kept == 0
    if empty.any():
        logger.warning(
            "%s: filtered_mean: %d well(s) have no cell with %s in its quantile range [%g, %g] and are left out: %s",
            cells.plate, int(empty.sum()), setting.feature, setting.lower_quantile, setting.upper_quantile,
            ", ".join(map(str, df[annotation.well_col].to_numpy()[empty][:10])),
        )
    return df.loc[~empty].reset_index(drop=True)


def _first(cells: PlateCells, n_features: int) -> PlateCells:
    """``cells`` with only their first ``n_features`` features (no copy when that is all of them)."""
    if cells.x.shape[1] == n_features:
        return cells
    return PlateCells(cells.plate, cells.x[:, :n_features], cells.offsets, cells.wells, cells.perturbations)


def _check_filter(normalized, setting: FilteredMean) -> None:
    if not 0 <= setting.lower_quantile < setting.upper_quantile <= 1:
        raise InputError(
            f"evaluate.filtered_mean: lower_quantile ({setting.lower_quantile}) must be below upper_quantile "
            f"({setting.upper_quantile}), both in [0, 1]"
        )
    if setting.feature not in parquet_columns(normalized):
        raise InputError(
            f"{normalized}: evaluate.filtered_mean.feature {setting.feature!r} is not a column of the plate "
            "(set another feature, or leave filtered_mean out of evaluate.baselines)"
        )


def _all_finite(path, column: str) -> bool:
    values = pq.read_table(path, columns=[column]).column(0).to_numpy(zero_copy_only=False)
    return bool(np.isfinite(values.astype(np.float64)).all())
