"""Per-plate normalization of single-cell profiles, as pycytominer 1.7.1 ``normalize`` defines it, streamed.

Methods (fit on all cells or on the cells a ``samples`` query selects, applied to every cell):

- ``standardize``: (x - mean) / std, population std (sklearn ``StandardScaler``);
- ``robustize``: (x - median) / IQR(25-75) (sklearn ``RobustScaler``);
- ``mad_robustize``: (x - median) / (1.4826 * MAD + epsilon), epsilon 1e-18 by default;
- ``spherize``: whitening (``ZCA``, ``PCA``, ``ZCA-cor``, ``PCA-cor``) as pycytominer's ``Spherize``,
  epsilon 1e-6 added to the singular values.

Statistics are computed in float64 and the output is float32. A plate is never held in memory:
per-feature statistics (exact median and MAD included) come from batches of whole feature columns,
the spherize projection from a QR factor accumulated over blocks of rows, and the output is written
block by block into a temporary file renamed only when complete. Batches are sized from
``memory_mb``; measured peak RSS is the interpreter's ~120 MB plus about ``memory_mb`` (200,000 cells
x 500 features: 363 MB at memory_mb=256, 685 MB at 1024).

Differences from pycytominer, on purpose:

- a feature constant on the fit cells (or with zero spread: std, IQR or MAD 0) or with no finite
  value is dropped, with a warning naming it; pycytominer divides by epsilon (huge values) or by 1;
- NaN is ignored by the statistics and stays NaN; +-inf is treated as NaN, in the fit and in the output;
- spherize fits on the fit cells with every (kept) feature finite; pycytominer's SVD fails on NaN;
- a rank-deficient spherize fit raises ``InputError``: pycytominer's rank check never fires
  (operator precedence) and it divides by epsilon instead;
- PCA components get a fixed sign (largest loading positive); an SVD's signs are arbitrary;
- PCA components are named ``Cells_PC1``, ``Cells_PC2``, ... (pycytominer: ``PC1``...), so that
  ``feature_columns`` still finds them;
- a ``samples`` query sees the metadata columns only.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse

from .columns import feature_columns, is_metadata, metadata_columns
from .io import ROW_GROUP_SIZE, InputError, atomic_path

_LOG = logging.getLogger(__name__)

METHODS = ("standardize", "robustize", "mad_robustize", "spherize")
SPHERIZE_METHODS = ("ZCA", "PCA", "ZCA-cor", "PCA-cor")
DEFAULT_EPSILON = {"mad_robustize": 1e-18, "spherize": 1e-6}  # pycytominer's defaults
MAD_TO_STD = 1.4826  # MAD * 1.4826 estimates the std of a normal distribution
PCA_COLUMN_PREFIX = "Cells_PC"

_MB = 2**20
# Memory model (bytes per float value held at once), used to size batches from memory_mb.
_ARRAY_SHARE = 0.6  # of memory_mb for arrays; the rest covers Arrow's pool, metadata and the interpreter
_TILE_SHARE = 0.15  # of the array share for the Parquet tile being decoded
_BYTES_PER_TILE_VALUE = 12  # a decoded float32 column chunk with the reader's buffers
_BYTES_PER_STAT_VALUE = 48  # a whole column: Arrow, float64, median workspace, |x - median|
_BYTES_PER_ROW_VALUE = {"transform": 24, "qr": 32}  # float64 in and out, float32 out; QR stacking copies
_BYTES_PER_METADATA_VALUE = 64


# --------------------------------------------------------------------------------------------------
# Fitted parameters and the in-memory core
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NormalizerParams:
    """A fitted normalizer: ``y = ((x[:, kept] - center) / scale) @ rotation`` (rotation: spherize only)."""

    method: str
    kept: np.ndarray  # indices of the input features kept (the others were constant/all-NaN on the fit cells)
    center: np.ndarray
    scale: np.ndarray
    rotation: np.ndarray | None
    n_fit: int  # cells the statistics were computed on
    spherize_method: str | None = None

    @property
    def n_out(self) -> int:
        return len(self.kept)


def check_method(method: str, epsilon: float | None = None, spherize_method: str = "ZCA",
                 spherize_center: bool = True) -> tuple[str, float | None]:
    """Validate the settings; return the method (lower case, like pycytominer) and the epsilon to use."""
    method = str(method).lower()
    if method not in METHODS:
        raise InputError(f"unknown normalization method {method!r}; choose one of {list(METHODS)}")
    if method == "spherize":
        if spherize_method not in SPHERIZE_METHODS:
            raise InputError(f"unknown spherize_method {spherize_method!r}; choose one of {list(SPHERIZE_METHODS)}")
        if spherize_method.endswith("-cor") and not spherize_center:
            raise InputError(f"spherize_method {spherize_method!r} requires spherize_center=True")
    if epsilon is None:
        return method, DEFAULT_EPSILON.get(method)
    if method not in DEFAULT_EPSILON:
        raise InputError(f"epsilon applies only to {sorted(DEFAULT_EPSILON)}, not to method {method!r}")
    return method, float(epsilon)


def fit_normalizer(x_fit: np.ndarray, method: str = "mad_robustize", epsilon: float | None = None,
                   spherize_method: str = "ZCA", spherize_center: bool = True) -> NormalizerParams:
    """Fit a normalizer on the reference cells ``x_fit`` (cells x features)."""
    method, epsilon = check_method(method, epsilon, spherize_method, spherize_center)
    return _fit(_ArraySource(x_fit), None, method, epsilon, spherize_method, spherize_center)


def apply_normalizer(x: np.ndarray, params: NormalizerParams) -> np.ndarray:
    """Normalize cells ``x`` (cells x input features) -> float64 (cells x kept features)."""
    return transform_kept(_as_float64(x[:, params.kept]), params)


def transform_kept(x: np.ndarray, params: NormalizerParams) -> np.ndarray:
    """Normalize float64 cells x kept features (in place, except for the spherize rotation)."""
    x -= params.center
    x /= params.scale
    return x if params.rotation is None else x @ params.rotation


def center_wells(y: np.ndarray, wells: Sequence) -> np.ndarray:
    """Subtract from each cell its well's mean (NaN ignored; a well's all-NaN feature stays NaN)."""
    codes, uniques = pd.factorize(np.asarray(wells, dtype=object), use_na_sentinel=False)
    sums, counts = _well_sums(y, codes, len(uniques))
    return y - _well_means(sums, counts)[codes]


# --------------------------------------------------------------------------------------------------
# Sources of feature values: a matrix in memory or a Parquet file read in batches
# --------------------------------------------------------------------------------------------------


def _as_float64(x) -> np.ndarray:
    """float64 copy with +-inf as NaN (missing)."""
    x = np.array(x, dtype=np.float64)
    x[np.isinf(x)] = np.nan
    return x


class _ArraySource:
    """All cells in memory: every 'batch' is the whole matrix."""

    def __init__(self, x: np.ndarray):
        self.x = np.asarray(x)
        if self.x.ndim != 2:
            raise InputError(f"expected a cells x features matrix, got shape {self.x.shape}")
        self.n_rows, self.n_features = self.x.shape

    def column_batches(self, rows=None, columns=None):
        columns = np.arange(self.n_features) if columns is None else np.asarray(columns)
        x = self.x if rows is None else self.x[rows]
        yield columns, _as_float64(x[:, columns])

    def row_blocks(self, columns, use="transform", metadata=()):
        yield 0, _as_float64(self.x[:, columns]), None


class _ParquetSource:
    """A Parquet plate read in pieces that fit ``memory_mb``.

    Parquet stores a row group column by column, so every read is a tile (row group x some columns):
    whole columns for the statistics, blocks of rows for the transform. A row group too large for
    the memory is read once per block of its rows (more reading, same memory).
    """

    def __init__(self, pf: pq.ParquetFile, features: list[str], memory_mb: float):
        self.pf, self.features = pf, features
        self.budget = memory_mb * _MB * _ARRAY_SHARE
        self.n_rows, self.n_features = pf.metadata.num_rows, len(features)
        self.n_column_batches = 0  # counted over all passes, for the summary
        self.n_row_batches = 0
        self.max_rereads = 1  # most times a row group was read in one pass over rows

    def column_batches(self, rows=None, columns=None):
        """(feature indices, float64 fit cells x those features) for batches of whole columns."""
        columns = np.arange(self.n_features) if columns is None else np.asarray(columns)
        width = max(1, int(self.budget // (_BYTES_PER_STAT_VALUE * max(self.n_rows, 1))))
        n = self.n_rows if rows is None else int(rows.sum())
        for start in range(0, len(columns), width):
            chunk = columns[start:start + width]
            names = [self.features[i] for i in chunk]
            table = self.pf.read(columns=names, use_threads=False)
            x = np.empty((n, len(chunk)))
            for j, name in enumerate(names):
                col = table.column(name).to_numpy()
                x[:, j] = col if rows is None else col[rows]
            del table
            x[np.isinf(x)] = np.nan
            self.n_column_batches += 1
            yield chunk, x

    def row_blocks(self, columns, use="transform", metadata=()):
        """(first row, float64 cells x ``columns``, Arrow table of ``metadata``) for consecutive row blocks."""
        names = [self.features[i] for i in columns]
        bytes_per_row = _BYTES_PER_ROW_VALUE[use] * len(names) + _BYTES_PER_METADATA_VALUE * len(metadata)
        start = 0
        for group in range(self.pf.num_row_groups):
            n_group = self.pf.metadata.row_group(group).num_rows
            tile_width = max(1, int(self.budget * _TILE_SHARE // (_BYTES_PER_TILE_VALUE * max(n_group, 1))))
            block = int(np.clip(self.budget * (1 - _TILE_SHARE) // max(bytes_per_row, 1), 1, max(n_group, 1)))
            self.max_rereads = max(self.max_rereads, -(-n_group // block))
            for first in range(0, n_group, block):
                m = min(block, n_group - first)
                x = np.empty((m, len(names)))
                for t in range(0, len(names), tile_width):
                    tile = self.pf.read_row_group(group, columns=names[t:t + tile_width], use_threads=False)
                    for j, name in enumerate(names[t:t + tile_width]):
                        x[:, t + j] = tile.column(name).slice(first, m).to_numpy()
                    del tile
                x[np.isinf(x)] = np.nan
                meta = self.pf.read_row_group(group, columns=list(metadata)).slice(first, m) if metadata else None
                self.n_row_batches += 1
                yield start + first, x, meta
            start += n_group


def _metadata_row_groups(pf: pq.ParquetFile, columns: Sequence[str]) -> Iterator[pa.Table]:
    for group in range(pf.num_row_groups):
        yield pf.read_row_group(group, columns=list(columns))


# --------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------


def _fit(source, rows, method, epsilon, spherize_method, spherize_center) -> NormalizerParams:
    if method == "spherize":
        return _fit_spherize(source, rows, spherize_method, spherize_center, epsilon)
    return _fit_columnwise(source, rows, method, epsilon)


def _fit_columnwise(source, rows, method, epsilon) -> NormalizerParams:
    d = source.n_features
    center, scale, usable = np.zeros(d), np.ones(d), np.zeros(d, dtype=bool)
    for cols, x in source.column_batches(rows):
        center[cols], scale[cols], usable[cols] = columnwise_stats(x, method, epsilon)
    n_fit = source.n_rows if rows is None else int(rows.sum())
    kept = np.flatnonzero(usable)
    return NormalizerParams(method, kept, center[kept], scale[kept], None, n_fit)


def columnwise_stats(x: np.ndarray, method: str, epsilon: float | None):
    """Center, scale and usability of each column of the fit cells ``x`` (float64, NaN = missing).

    Unusable: no finite value, a single distinct value, or zero spread (std, IQR or MAD).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        usable = varies(x)
        if method == "standardize":
            center = np.nanmean(x, axis=0)
            spread = np.nanstd(x, axis=0)
            scale = spread
        elif method == "robustize":
            center = np.nanmedian(x, axis=0)
            q25, q75 = np.nanpercentile(x, [25, 75], axis=0)
            spread = q75 - q25
            scale = spread
        elif method == "mad_robustize":
            center = np.nanmedian(x, axis=0)
            spread = MAD_TO_STD * np.nanmedian(np.abs(x - center), axis=0)
            scale = spread + epsilon
        else:
            raise InputError(f"no column-wise statistics for method {method!r}")
    usable &= spread > 0
    return center, np.where(usable, scale, 1.0), usable


def varies(x: np.ndarray) -> np.ndarray:
    """Columns with at least two distinct finite values (False for constant and all-NaN columns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmax(x, axis=0) > np.nanmin(x, axis=0) if len(x) else np.zeros(x.shape[1], dtype=bool)


def _fit_spherize(source, rows, spherize_method, center, epsilon) -> NormalizerParams:
    """Three passes: usable features + complete cells, their mean/std, the QR factor of the scaled cells."""
    d = source.n_features
    fit = np.ones(source.n_rows, dtype=bool) if rows is None else rows.copy()
    usable = np.zeros(d, dtype=bool)
    incomplete = np.zeros(int(fit.sum()), dtype=bool)
    for cols, x in source.column_batches(fit):
        usable[cols] = varies(x)
        incomplete |= ~np.isfinite(x[:, usable[cols]]).all(axis=1)
    fit[fit] = ~incomplete  # cells used: fit cells with every usable feature finite
    n = int(fit.sum())
    if n < 2:
        raise InputError(f"spherize needs at least 2 fit cells with all features finite, found {n}")

    kept = np.flatnonzero(usable)
    if not len(kept):  # nothing to whiten; the caller reports it
        return NormalizerParams("spherize", kept, np.zeros(0), np.ones(0), np.zeros((0, 0)), n, spherize_method)
    mean, std = np.zeros(len(kept)), np.ones(len(kept))
    position = {c: i for i, c in enumerate(kept)}
    for cols, x in source.column_batches(fit, kept):
        idx = [position[c] for c in cols]
        mean[idx], std[idx] = x.mean(axis=0), x.std(axis=0)
    nonzero = std > 0  # a feature can be constant on the complete cells only
    kept, mean, std = kept[nonzero], mean[nonzero], std[nonzero]

    loc = mean if center else np.zeros(len(kept))
    scale = std if spherize_method.endswith("-cor") else np.ones(len(kept))
    qr = _QRFactor(len(kept))
    for start, x, _ in source.row_blocks(kept, use="qr"):
        qr.add((x[fit[start:start + len(x)]] - loc) / scale)
    rotation = spherize_rotation(qr.r, n, center, spherize_method, epsilon)
    return NormalizerParams("spherize", kept, loc, scale, rotation, n, spherize_method)


class _QRFactor:
    """R of a tall matrix given in row blocks (R^T R = X^T X).

    Same singular values and vectors as X, without forming X^T X, which would square the condition
    number and blur the small singular values that whitening divides by.
    """

    def __init__(self, d: int):
        self.r = np.zeros((0, d))

    def add(self, block: np.ndarray) -> None:
        if len(block):
            self.r = np.linalg.qr(np.vstack([self.r, block]), mode="r")


def spherize_rotation(r: np.ndarray, n: int, center: bool, spherize_method: str, epsilon: float) -> np.ndarray:
    """pycytominer's ``Spherize`` matrix W from the R factor of the centered (and, -cor, scaled) fit cells."""
    d = r.shape[1]
    _, sigma, vt = np.linalg.svd(r, full_matrices=True)
    vt = _fix_signs(vt)
    full_rank = min(d, n - 1 if center else n)
    tol = (sigma.max() if sigma.size else 0.0) * max(n, d) * np.finfo(np.float64).eps  # numpy's matrix_rank
    rank = int((sigma > tol).sum())
    if rank < full_rank:
        raise InputError(
            f"spherize: the {n} fit cells x {d} features have rank {rank} < {full_rank}: some features are "
            "linear combinations of others; select features first or use another method"
        )
    if n <= d:  # fewer cells than features: the null space gets the last non-zero singular value
        sigma = np.concatenate([sigma[:full_rank], np.repeat(sigma[full_rank - 1], d - full_rank)])
    w = (vt / (sigma + epsilon)[:, None]).T * np.sqrt(n - 1)
    if spherize_method.startswith("ZCA"):
        w = w @ vt
    return w


def _fix_signs(vt: np.ndarray) -> np.ndarray:
    """Flip each right singular vector so its largest-magnitude loading is positive (as sklearn's svd_flip)."""
    signs = np.sign(vt[np.arange(len(vt)), np.argmax(np.abs(vt), axis=1)])
    signs[signs == 0] = 1.0
    return vt * signs[:, None]


# --------------------------------------------------------------------------------------------------
# Well means
# --------------------------------------------------------------------------------------------------


def _well_sums(y: np.ndarray, codes: np.ndarray, n_wells: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-well sums and counts of the finite values of ``y`` (cells x features)."""
    finite = np.isfinite(y)
    onehot = scipy.sparse.csr_matrix(
        (np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(n_wells, len(codes))
    )
    return onehot @ np.where(finite, y, 0.0), onehot @ finite.astype(np.float64)


def _well_means(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


# --------------------------------------------------------------------------------------------------
# The plate
# --------------------------------------------------------------------------------------------------


def normalize_plate(src, out, *, method: str = "mad_robustize", samples: str = "all",
                    epsilon: float | None = None, spherize_method: str = "ZCA", spherize_center: bool = True,
                    well_center: bool = False, well_col: str = "Metadata_Well", memory_mb: float = 1024,
                    log: logging.Logger | None = None) -> dict:
    """Normalize one plate's cells (Parquet ``src`` -> Parquet ``out``) within about ``memory_mb`` of RAM.

    Statistics come from the cells ``samples`` selects ("all" or a pandas query on the metadata, e.g.
    ``"Metadata_broad_sample == 'DMSO'"``) and are applied to every cell; ``well_center`` then
    subtracts each well's mean. ``Metadata_*`` columns pass through unchanged; columns that are
    neither metadata nor features (CellProfiler bookkeeping) are left out, so that readers taking
    every non-metadata column as a feature see only normalized ones. Returns a summary.
    """
    log = log or _LOG
    method, epsilon = check_method(method, epsilon, spherize_method, spherize_center)
    if not memory_mb or memory_mb <= 0:
        raise InputError(f"memory_mb must be positive, got {memory_mb!r}")
    pf = pq.ParquetFile(src)
    names = pf.schema_arrow.names
    features = feature_columns(names)
    if not features:
        raise InputError(f"{src}: no feature columns (Cells_/Cytoplasm_/Nuclei_*) found")
    if well_center and well_col not in names:
        raise InputError(f"{src}: well column {well_col!r} not found; needed for well_center")

    others = [c for c in names if not is_metadata(c) and c not in set(features)]
    if others:
        log.warning("%s: %d column(s) neither metadata nor feature left out of the output: %s",
                    src, len(others), others)
    fit_rows = _query_rows(pf, samples, src)
    source = _ParquetSource(pf, features, memory_mb)
    if method == "spherize" and 8 * 3 * len(features) ** 2 > source.budget:
        log.warning("%s: spherize of %d features needs ~%.0f MB for its matrices, more than memory_mb=%s allows",
                    src, len(features), 24 * len(features) ** 2 / _MB, memory_mb)
    params = _fit(source, fit_rows, method, epsilon, spherize_method, spherize_center)
    if params.n_out == 0:
        raise InputError(f"{src}: every feature is constant or all-NaN on the fit cells ({samples})")

    kept = set(params.kept.tolist())
    dropped = [f for i, f in enumerate(features) if i not in kept]
    if dropped:
        log.warning("%s: dropped %d feature(s) constant, zero-spread or all-NaN on the fit cells (%s): %s",
                    src, len(dropped), samples, dropped)
    well_means = wells = None
    if well_center:
        wells = _well_codes(pf, well_col)
        well_means = _plate_well_means(source, params, wells)
    _write_normalized(source, out, _output_names(features, params), params, wells, well_means)
    if source.max_rereads > 1:
        log.info("%s: row groups too large for memory_mb=%s are read up to %d times per pass",
                 src, memory_mb, source.max_rereads)

    summary = {
        "src": str(src), "out": str(out), "method": method,
        "spherize_method": spherize_method if method == "spherize" else None,
        "samples": samples, "well_center": bool(well_center),
        "n_cells": pf.metadata.num_rows, "n_fit_cells": params.n_fit,
        "n_features_in": len(features), "n_features_out": params.n_out, "dropped_features": dropped,
        "dropped_columns": others,
        "n_column_batches": source.n_column_batches,
        "n_row_batches": source.n_row_batches,
        "row_group_reads": source.max_rereads,
    }
    log.info("%s -> %s: %s (samples=%s%s) on %d of %d cells, %d -> %d features, %d column / %d row batches",
             src, out, method if method != "spherize" else f"spherize {spherize_method}", samples,
             ", well-centered" if well_center else "", params.n_fit, summary["n_cells"], len(features),
             params.n_out, summary["n_column_batches"], summary["n_row_batches"])
    return summary


def _output_names(features: list[str], params: NormalizerParams) -> list[str]:
    if params.spherize_method in ("PCA", "PCA-cor"):
        return [f"{PCA_COLUMN_PREFIX}{i}" for i in range(1, params.n_out + 1)]
    return [features[i] for i in params.kept]


def _query_rows(pf: pq.ParquetFile, samples: str, src) -> np.ndarray | None:
    """Boolean mask of the cells a ``samples`` query selects (None for "all"), evaluated per row group."""
    if samples == "all":
        return None
    if not isinstance(samples, str) or not samples.strip():
        raise InputError(f"samples must be 'all' or a pandas query on metadata columns, got {samples!r}")
    masks = []
    for table in _metadata_row_groups(pf, metadata_columns(pf.schema_arrow.names)):
        try:
            mask = table.to_pandas().eval(samples)
        except Exception as err:  # pandas raises many kinds for a bad query
            raise InputError(f"{src}: samples query {samples!r} failed on the metadata columns: {err}") from err
        if not isinstance(mask, pd.Series) or mask.dtype != bool or len(mask) != table.num_rows:
            raise InputError(f"{src}: samples query {samples!r} does not give one True/False per cell")
        masks.append(mask.to_numpy())
    rows = np.concatenate(masks) if masks else np.zeros(0, dtype=bool)
    if not rows.any():
        raise InputError(f"{src}: samples query {samples!r} matches no cell (metadata values are strings)")
    return rows


def _well_codes(pf: pq.ParquetFile, well_col: str) -> np.ndarray:
    """Index of each cell's well, over the whole plate."""
    index: dict = {}
    codes = []
    for table in _metadata_row_groups(pf, [well_col]):
        values = table.column(well_col).to_pylist()
        codes.append(np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int64,
                                 count=len(values)))
    return np.concatenate(codes) if codes else np.zeros(0, dtype=np.int64)


def _plate_well_means(source: _ParquetSource, params: NormalizerParams, wells: np.ndarray) -> np.ndarray:
    """Mean normalized profile of each well: a pass over row blocks accumulating per-well sums."""
    n_wells = int(wells.max()) + 1 if len(wells) else 0
    sums, counts = np.zeros((n_wells, params.n_out)), np.zeros((n_wells, params.n_out))
    for start, x, _ in source.row_blocks(params.kept):
        s, c = _well_sums(transform_kept(x, params), wells[start:start + len(x)], n_wells)
        sums += s
        counts += c
    return _well_means(sums, counts)


def _write_normalized(source: _ParquetSource, out, out_features, params, wells, well_means) -> None:
    """Transform row block by row block into a temporary file, renamed onto ``out`` when complete."""
    passthrough = [f for f in source.pf.schema_arrow if is_metadata(f.name)]
    schema = pa.schema(passthrough + [pa.field(name, pa.float32()) for name in out_features])
    with atomic_path(out) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            written = 0
            for start, x, meta in source.row_blocks(params.kept, metadata=[f.name for f in passthrough]):
                y = transform_kept(x, params)
                if well_means is not None:
                    y -= well_means[wells[start:start + len(y)]]
                y = np.asfortranarray(y, dtype=np.float32)
                del x
                arrays = [meta.column(f.name) for f in passthrough] + [pa.array(y[:, j]) for j in range(y.shape[1])]
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema), row_group_size=ROW_GROUP_SIZE)
                written += len(y)
            if written == 0:
                writer.write_table(schema.empty_table())


__all__ = [
    "METHODS", "SPHERIZE_METHODS", "DEFAULT_EPSILON", "PCA_COLUMN_PREFIX", "NormalizerParams",
    "check_method", "fit_normalizer", "apply_normalizer", "transform_kept", "center_wells",
    "columnwise_stats", "spherize_rotation", "normalize_plate",
]
