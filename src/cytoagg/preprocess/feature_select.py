"""Feature selection as pycytominer 1.7.1 ``feature_select`` defines it, fit on the training plates' cells.

Operations (applied in the order given, each on the features the previous ones kept, like pycytominer):

- ``variance_threshold``: drop features with population variance <= ``min_variance`` (1e-6; sklearn
  ``VarianceThreshold``). In pycytominer 1.7.1 this name no longer means the freq_cut/unique_cut test;
- ``frequency_threshold``: drop features whose 2nd most common value is rarer than ``freq_cut`` (0.05)
  times the most common one, or whose distinct values are fewer than ``unique_cut`` (0.01) x cells
  (the test older pycytominer called ``variance_threshold``);
- ``correlation_threshold``: for every pair with Pearson correlation > ``corr_threshold`` (0.9; signed,
  as pycytominer: strong negative correlations are kept), drop the member whose summed absolute
  correlation with all features is larger;
- ``drop_na_columns``: drop features missing in more than ``na_cutoff`` (0.05) of the cells;
- ``blocklist``: drop pycytominer's default blocklist (or a given one).

+-inf counts as missing (NaN) everywhere (pycytominer: sklearn refuses it, pandas counts it as a value).
Statistics are computed in float64 over column or row batches of ~32 MB, so a float32 pool of
200,000 cells x 1,000 features (800 MB) is the largest thing in memory.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..io.columns import feature_columns, measurement_columns
from ..io.files import InputError, write_names
from ..io.parquet import open_parquet, parquet_columns, reading
from ..settings import Settings

logger = logging.getLogger(__name__)

OPERATIONS = ("variance_threshold", "frequency_threshold", "correlation_threshold", "drop_na_columns", "blocklist")
DEFAULT_OPERATIONS = OPERATIONS

_CHANNELS = ("AGP", "DNA", "ER", "Mito", "RNA")
# pycytominer 1.7.1's packaged default blocklist (data/default_blocklists.yaml, from Way 2019,
# doi:10.6084/m9.figshare.10255811), in its order; copied because pycytominer is only a test dependency.
DEFAULT_BLOCKLIST: tuple[str, ...] = tuple(
    [f"Nuclei_Correlation_{kind}_{a}_{b}" for kind in ("Manders", "RWC") for a in _CHANNELS for b in _CHANNELS
     if a != b]
    + [f"Nuclei_Granularity_{scale}_{c}" for scale in (14, 15, 16) for c in _CHANNELS]
)

_BATCH_BYTES = 32 * 2**20  # float64 working block for column/row batches


# --------------------------------------------------------------------------------------------------
# Operations on a cells x features matrix: each returns the indices (into ``cols``) to drop
# --------------------------------------------------------------------------------------------------


def _column_blocks(x: np.ndarray, cols: np.ndarray):
    """float64 copies of batches of columns, +-inf as NaN."""
    width = max(1, _BATCH_BYTES // (8 * max(len(x), 1)))
    for start in range(0, len(cols), width):
        block = np.array(x[:, cols[start:start + width]], dtype=np.float64)
        block[np.isinf(block)] = np.nan
        yield start, block


def _row_blocks(x: np.ndarray, cols: np.ndarray):
    height = max(1, _BATCH_BYTES // (8 * max(len(cols), 1)))
    for start in range(0, len(x), height):
        block = np.array(x[start:start + height][:, cols], dtype=np.float64)
        block[np.isinf(block)] = np.nan
        yield block


def low_variance(x: np.ndarray, cols: np.ndarray, min_variance: float = 1e-6) -> np.ndarray:
    """Features with population variance <= min_variance (or no finite value)."""
    var = np.empty(len(cols))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for start, block in _column_blocks(x, cols):
            var[start:start + block.shape[1]] = np.nanvar(block, axis=0)
    return np.flatnonzero(~(var > min_variance))


def low_frequency(x: np.ndarray, cols: np.ndarray, freq_cut: float = 0.05, unique_cut: float = 0.01) -> np.ndarray:
    """Features dominated by one value: 2nd/1st most common count < freq_cut, or distinct/cells < unique_cut."""
    if not (0 <= freq_cut <= 1 and 0 <= unique_cut <= 1):
        raise InputError(f"freq_cut and unique_cut must lie in [0, 1], got {freq_cut}, {unique_cut}")
    n = len(x)
    drop = []
    for start, block in _column_blocks(x, cols):
        block.sort(axis=0)  # NaN last
        for j in range(block.shape[1]):
            values = block[:, j]
            values = values[: np.count_nonzero(~np.isnan(values))]
            counts = np.diff(np.r_[0, np.flatnonzero(np.diff(values) != 0) + 1, len(values)])
            if len(counts) < 2:
                ratio = 0.0
            else:
                second, first = np.partition(counts, -2)[-2:]
                ratio = second / first
            if ratio < freq_cut or (len(counts) / n if n else np.nan) < unique_cut:
                drop.append(start + j)
    return np.asarray(drop, dtype=np.int64)


def correlation_matrix(x: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Pearson correlation of the columns, each pair on the cells where both are finite (as pandas ``corr``).

    Sums over row batches: for a pair (i, j), the sums of x_i, x_i^2 and x_i x_j over the cells where
    both are present give the pairwise-complete correlation; with no missing value it is np.corrcoef's.
    Constant or all-missing columns correlate NaN with everything.
    """
    d = len(cols)
    mean, varying = np.empty(d), np.empty(d, dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for start, block in _column_blocks(x, cols):
            mean[start:start + block.shape[1]] = np.nanmean(block, axis=0)
            varying[start:start + block.shape[1]] = np.nanmax(block, axis=0) > np.nanmin(block, axis=0)
    mean = np.nan_to_num(mean)  # centering only limits cancellation; the pairwise means are exact below
    sxy, sx, sxx, npair = np.zeros((d, d)), np.zeros((d, d)), np.zeros((d, d)), np.zeros((d, d))
    for block in _row_blocks(x, cols):
        present = ~np.isnan(block)
        xc = np.where(present, block - mean, 0.0)
        sxy += xc.T @ xc
        if present.all():
            sx += xc.sum(axis=0)[:, None]
            sxx += (xc * xc).sum(axis=0)[:, None]
            npair += len(xc)
        else:
            m = present.astype(np.float64)
            sx += xc.T @ m  # sx[i, j]: sum of x_i over the cells where i and j are present
            sxx += (xc * xc).T @ m
            npair += m.T @ m
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sxy - sx * sx.T / npair
        var = sxx - sx**2 / npair  # var[i, j]: of x_i over the cells where i and j are present
        corr = cov / np.sqrt(var * var.T)
    corr[(npair < 2) | (var <= 0) | (var.T <= 0)] = np.nan
    corr[~varying, :] = np.nan
    corr[:, ~varying] = np.nan
    return np.clip(corr, -1, 1)


def high_correlation(x: np.ndarray, cols: np.ndarray, threshold: float = 0.9) -> np.ndarray:
    """pycytominer's ``correlation_threshold``: of each pair above threshold, drop the more correlated overall.

    Features are ranked by summed |correlation| (pandas ``sort_values``, as pycytominer, so ties break
    the same way); for every pair (i > j) with r > threshold the member ranked later is dropped.
    """
    if not 0 <= threshold <= 1:
        raise InputError(f"corr_threshold must lie in [0, 1], got {threshold}")
    if len(cols) < 2:
        return np.zeros(0, dtype=np.int64)
    corr = correlation_matrix(x, cols)
    order = pd.Series(np.nansum(np.abs(corr), axis=0)).sort_values().index.to_numpy()
    rank = np.empty(len(cols), dtype=np.int64)
    rank[order] = np.arange(len(cols))
    with np.errstate(invalid="ignore"):
        i, j = np.nonzero(np.tril(corr > threshold, k=-1))
    return np.unique(np.where(rank[i] > rank[j], i, j))


def too_many_missing(x: np.ndarray, cols: np.ndarray, cutoff: float = 0.05) -> np.ndarray:
    """Features missing (NaN/inf) in more than ``cutoff`` of the cells."""
    if not 0 <= cutoff <= 1:
        raise InputError(f"na_cutoff must lie in [0, 1], got {cutoff}")
    missing = np.empty(len(cols))
    for start, block in _column_blocks(x, cols):
        missing[start:start + block.shape[1]] = np.isnan(block).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.flatnonzero(missing / len(x) > cutoff)


def load_blocklist(blocklist: Sequence[str] | str | os.PathLike | None) -> list[str]:
    """None: pycytominer's default; a path: a text file, one feature per line; else the names given."""
    if blocklist is None:
        return list(DEFAULT_BLOCKLIST)
    if isinstance(blocklist, (str, os.PathLike)):
        path = Path(blocklist)
        if not path.is_file():
            raise InputError(f"blocklist file not found: {path}")
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [str(f) for f in blocklist]


# --------------------------------------------------------------------------------------------------
# In-memory selection and the plate-level fit
# --------------------------------------------------------------------------------------------------


def select_features(data, features: Sequence[str] | None = None, operations: Sequence[str] = DEFAULT_OPERATIONS,
                    *, min_variance: float = 1e-6, freq_cut: float = 0.05, unique_cut: float = 0.01,
                    corr_threshold: float = 0.9, corr_method: str = "pearson", na_cutoff: float = 0.05,
                    blocklist=None, log: logging.Logger | None = None) -> list[str]:
    """Kept features (in input order) after ``operations`` on ``data``.

    ``data``: a DataFrame (``features`` default: its feature columns) or a cells x features matrix
    whose columns are ``features``.
    """
    log = log or logger
    if isinstance(operations, str):
        operations = [operations]
    unknown = [op for op in operations if op not in OPERATIONS]
    if unknown:
        raise InputError(f"unknown feature selection operation(s) {unknown}; choose from {list(OPERATIONS)}")
    if str(corr_method).lower() != "pearson":
        raise InputError(f"corr_method {corr_method!r} not supported; only 'pearson'")
    if isinstance(data, pd.DataFrame):
        features = feature_columns(data.columns) if features is None else list(features)
        missing = [f for f in features if f not in data.columns]
        if missing:
            raise InputError(f"{len(missing)} feature(s) not in the data, e.g. {missing[:5]}")
        x = data[features].to_numpy()
    else:
        x = np.asarray(data)
        if features is None or x.ndim != 2 or x.shape[1] != len(features):
            raise InputError(f"a matrix needs one feature name per column: shape {x.shape}, "
                             f"{None if features is None else len(features)} names")
        features = list(features)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)

    kept = np.arange(len(features))
    for op in operations:
        if op == "variance_threshold":
            drop = low_variance(x, kept, min_variance)
        elif op == "frequency_threshold":
            drop = low_frequency(x, kept, freq_cut, unique_cut)
        elif op == "correlation_threshold":
            drop = high_correlation(x, kept, corr_threshold)
        elif op == "drop_na_columns":
            drop = too_many_missing(x, kept, na_cutoff)
        else:
            blocked = set(load_blocklist(blocklist))
            drop = np.asarray([k for k, c in enumerate(kept) if features[c] in blocked], dtype=np.int64)
        dropped = [features[c] for c in kept[drop]]
        log.info("feature selection: %s dropped %d of %d features%s", op, len(dropped), len(kept),
                 f": {dropped}" if dropped else "")
        kept = np.delete(kept, drop)
    return [features[c] for c in kept]


@dataclass(frozen=True)
class FeatureSelectSettings(Settings):
    """Config ``feature_select:`` (its schema documents each field); ``blocklist``: ``dataset.blocklist``, or
    None for pycytominer's default blocklist."""

    operations: list[str]
    min_variance: float
    freq_cut: float
    unique_cut: float
    corr_threshold: float
    na_cutoff: float
    max_cells: int
    seed: int
    blocklist: list[str] | None


def fit_feature_selection(plates: list, out_txt, settings: FeatureSelectSettings,
                          log: logging.Logger | None = None, candidates: list[str] | None = None) -> list[str]:
    """Select features on the pooled cells of the (training) plates; write the kept list to ``out_txt``.

    Candidates are the features present in every plate, of ``candidates`` where given (``dataset.features: common``:
    those every configured plate has). More than ``max_cells`` cells: a seeded uniform sample of them. The list is
    written one feature per line, atomically.
    """
    log = log or logger
    plates = [Path(p) for p in plates]
    if not plates:
        raise InputError("feature selection needs at least one plate")
    per_plate = [measurement_columns(parquet_columns(p)) for p in plates]
    if candidates is not None:
        allowed = set(candidates)
        per_plate = [[f for f in names if f in allowed] for names in per_plate]
    shared = set.intersection(*(set(f) for f in per_plate))
    candidates = [f for f in per_plate[0] if f in shared]
    not_common = sorted(set().union(*per_plate) - shared)
    if not_common:
        lacking = {str(p): sorted(set(not_common) - set(f)) for p, f in zip(plates, per_plate)}
        log.warning("feature selection: %d feature(s) not in all %d plates left out: %s; missing per plate: %s",
                    len(not_common), len(plates), not_common, {p: m for p, m in lacking.items() if m})
    if not candidates:
        raise InputError(f"no feature column common to all plates: {[str(p) for p in plates]}")

    pool = pool_cells(plates, candidates, max_cells=settings.max_cells, seed=settings.seed, log=log)
    kept = select_features(pool, candidates, settings.operations, min_variance=settings.min_variance,
                           freq_cut=settings.freq_cut, unique_cut=settings.unique_cut,
                           corr_threshold=settings.corr_threshold, na_cutoff=settings.na_cutoff,
                           blocklist=settings.blocklist, log=log)
    if not kept:
        raise InputError(f"feature selection kept no feature (operations {list(settings.operations)})")
    write_names(kept, out_txt)
    log.info("feature selection: kept %d of %d features on %d cells of %d plates -> %s",
             len(kept), len(candidates), len(pool), len(plates), out_txt)
    return kept


def pool_cells(plates: Sequence, features: Sequence[str], *, max_cells: int = 200_000, seed: int = 0,
               log: logging.Logger | None = None) -> np.ndarray:
    """float32 cells x features of all plates; a seeded uniform sample of ``max_cells`` if there are more."""
    log = log or logger
    sizes = [open_parquet(p).metadata.num_rows for p in plates]
    total = sum(sizes)
    if total == 0:
        raise InputError(f"no cells in the plates {[str(p) for p in plates]}")
    if total > max_cells:
        rows = np.sort(np.random.default_rng(seed).choice(total, size=max_cells, replace=False))
        log.info("feature selection: sampled %d of %d cells (seed %d)", max_cells, total, seed)
    else:
        rows = np.arange(total)
    pool = np.empty((len(rows), len(features)), dtype=np.float32)
    filled, offset = 0, 0
    for path, size in zip(plates, sizes):
        pf = open_parquet(path)
        local = rows[(rows >= offset) & (rows < offset + size)] - offset
        first = 0
        for group in range(pf.num_row_groups):  # tiles of (row group x columns) bound the reader's memory
            n_group = pf.metadata.row_group(group).num_rows
            take = local[(local >= first) & (local < first + n_group)] - first
            width = max(1, _BATCH_BYTES // (12 * max(n_group, 1)))
            for c in range(0, len(features) if len(take) else 0, width):
                names = list(features[c:c + width])
                with reading(path):
                    tile = pf.read_row_group(group, columns=names, use_threads=False)
                for j, name in enumerate(names):
                    pool[filled:filled + len(take), c + j] = tile.column(name).to_numpy()[take]
            filled += len(take)
            first += n_group
        offset += size
    return pool


@dataclass(frozen=True)
class CovarianceSettings(Settings):
    """Config ``evaluate.cov_max_features``, and the cell sample of ``feature_select`` (max_cells, seed)."""

    cov_max_features: int
    max_cells: int
    seed: int


def fit_covariance_features(plates: list, features: list[str], out_txt, settings: CovarianceSettings,
                            log: logging.Logger | None = None) -> list[str]:
    """The mean_cov baseline's features, chosen on the training plates' cells; written one per line."""
    log = log or logger
    pool = pool_cells([Path(p) for p in plates], features, max_cells=settings.max_cells, seed=settings.seed, log=log)
    chosen = covariance_features(pool, features, features, settings.cov_max_features)
    write_names(chosen, out_txt)
    log.info("mean_cov: covariances of %d of the %d features", len(chosen), len(features))
    return chosen


def covariance_features(pool: np.ndarray, candidates: Sequence[str], kept: Sequence[str], k: int) -> list[str]:
    """The mean_cov baseline's features: of the kept features, the ``k`` most variable over the training plates'
    pooled cells (in the kept order). Chosen once, on the training plates, so every plate's profile has the same
    columns."""
    if len(kept) <= k:
        return list(kept)
    index = {f: j for j, f in enumerate(candidates)}
    variances = np.array([np.nanvar(pool[:, index[f]].astype(np.float64)) for f in kept])
    top = set(np.argsort(-variances, kind="stable")[:k].tolist())
    return [f for j, f in enumerate(kept) if j in top]
