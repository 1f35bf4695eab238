"""Per-feature normalization statistics, as pycytominer 1.7.1 ``normalize`` defines them: fitted on a matrix
in memory or on a plate's columns streamed from Parquet (``cytoagg.preprocess.normalize``).

Methods (fit on all cells or on the cells a ``samples`` query selects, applied to every cell):

- ``standardize``: (x - mean) / std, population std (sklearn ``StandardScaler``);
- ``robustize``: (x - median) / IQR(25-75) (sklearn ``RobustScaler``);
- ``mad_robustize``: (x - median) / (1.4826 * MAD + epsilon), epsilon 1e-18 by default;
- ``spherize``: whitening (``ZCA``, ``PCA``, ``ZCA-cor``, ``PCA-cor``) as pycytominer's ``Spherize``,
  epsilon 1e-6 added to the singular values.

Statistics are computed in float64. Column-wise statistics sort each column once (a vectorized sort),
which gives the median and the IQR directly and the MAD from one more linear scan (the cells nearest
the median form a contiguous run of the sorted column). The spherize projection comes from a QR
factor accumulated over blocks of rows.

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

import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import scipy.sparse

from ..io.files import InputError

METHODS = ("standardize", "robustize", "mad_robustize", "spherize")
SPHERIZE_METHODS = ("ZCA", "PCA", "ZCA-cor", "PCA-cor")
DEFAULT_EPSILON = {"mad_robustize": 1e-18, "spherize": 1e-6}  # pycytominer's defaults
MAD_TO_STD = 1.4826  # MAD * 1.4826 estimates the std of a normal distribution
PCA_COLUMN_PREFIX = "Cells_PC"


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

    def columns(self, first: int, stop: int) -> "NormalizerParams":
        """The column-wise normalizer of kept features ``first:stop`` (not for spherize)."""
        if self.rotation is not None:
            raise ValueError("a spherize normalizer mixes features: it cannot be split by column")
        return replace(self, kept=self.kept[first:stop], center=self.center[first:stop], scale=self.scale[first:stop])


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
    return _fit(InMemoryCells(x_fit), None, method, epsilon, spherize_method, spherize_center)


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


def _work_dtype(dtype) -> type:
    """Statistics read float32 and float64 columns as they are (sorting needs no conversion); others as float64."""
    return np.float32 if np.dtype(dtype) == np.float32 else np.float64


def _columns_as_rows(cols: Sequence[np.ndarray]) -> np.ndarray:
    """Cells x features float64 (C order) from per-feature columns, +-inf as NaN."""
    x = np.empty((len(cols[0]) if len(cols) else 0, len(cols)))
    for j, col in enumerate(cols):
        x[:, j] = col
    x[np.isinf(x)] = np.nan
    return x

class InMemoryCells:
    """All cells in memory, read as ``PlateColumns`` reads a Parquet plate: every batch is the whole matrix."""

    threads = 1

    def __init__(self, x: np.ndarray):
        self.x = np.asarray(x)
        if self.x.ndim != 2:
            raise InputError(f"expected a cells x features matrix, got shape {self.x.shape}")
        self.n_rows, self.n_features = self.x.shape

    def column_arrays(self, rows=None, columns=None):
        columns = np.arange(self.n_features) if columns is None else np.asarray(columns)
        x = self.x if rows is None else self.x[rows]
        yield columns, np.array(x[:, columns].T, dtype=_work_dtype(x.dtype), order="C")

    def column_batches(self, rows=None, columns=None):
        columns = np.arange(self.n_features) if columns is None else np.asarray(columns)
        x = self.x if rows is None else self.x[rows]
        yield columns, _as_float64(x[:, columns])

    def row_blocks(self, columns, use="transform", metadata=()):
        yield 0, _as_float64(self.x[:, columns]), None

def _fit(source, rows, method, epsilon, spherize_method, spherize_center) -> NormalizerParams:
    if method == "spherize":
        return _fit_spherize(source, rows, spherize_method, spherize_center, epsilon)
    return _fit_columnwise(source, rows, method, epsilon)


def _map(threads: int, func, items):
    """``map`` on ``threads`` threads (numpy's sort and arithmetic release the GIL)."""
    if threads <= 1 or len(items) <= 1:
        return [func(item) for item in items]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(func, items))


def _fit_columnwise(source, rows, method, epsilon) -> NormalizerParams:
    d = source.n_features
    center, scale, usable = np.zeros(d), np.ones(d), np.zeros(d, dtype=bool)
    for cols, x in source.column_arrays(rows):
        stats = _map(source.threads, lambda j, x=x: column_stats(x[j], method, epsilon), range(len(cols)))
        center[cols], scale[cols], usable[cols] = (np.array(s) for s in zip(*stats))
        del x
    n_fit = source.n_rows if rows is None else int(rows.sum())
    kept = np.flatnonzero(usable)
    return NormalizerParams(method, kept, center[kept], scale[kept], None, n_fit)


def column_stats(values: np.ndarray, method: str, epsilon: float | None) -> tuple[float, float, bool]:
    """(center, scale, usable) of one feature over the fit cells; ``values`` (1-D) is sorted in place.

    +-inf counts as missing. The results equal numpy's ``nanmean``/``nanstd``, ``nanmedian``,
    ``nanpercentile`` and scipy's ``median_abs_deviation`` (pycytominer's definitions) on the finite
    values, computed in float64: the median and quartiles from the sorted values, and the MAD as
    the median of the float64 deviations |x - median|, found without a second sort: the t cells
    nearest the median are a contiguous run of the sorted values, so the t-th smallest deviation
    is the least, over runs of t cells, of the larger deviation at the run's two ends.
    """
    if method == "standardize":
        x = values.astype(np.float64)
        x = x[np.isfinite(x)]
        if len(x) < 2 or not x.min() < x.max():
            return 0.0, 1.0, False
        center, spread = float(x.mean()), float(x.std())
        return center, spread if spread > 0 else 1.0, spread > 0
    if method not in ("robustize", "mad_robustize"):
        raise InputError(f"no column-wise statistics for method {method!r}")
    values.sort()  # -inf first, then finite values, +inf, NaN last
    finite = values[np.searchsorted(values, -np.inf, side="right"):np.searchsorted(values, np.inf, side="left")]
    n = len(finite)
    if n < 2 or not finite[0] < finite[-1]:
        return 0.0, 1.0, False
    median = (float(finite[(n - 1) // 2]) + float(finite[n // 2])) / 2  # numpy: the mean of the middle two
    if method == "robustize":
        q25, q75 = np.percentile(finite.astype(np.float64), [25, 75])
        spread = float(q75 - q25)
        scale = spread
    else:
        deviation = finite.astype(np.float64)
        deviation -= median
        np.abs(deviation, out=deviation)
        mad = _kth_smallest_deviation(deviation, (n + 1) // 2)
        if n % 2 == 0:
            mad = (mad + _kth_smallest_deviation(deviation, n // 2 + 1)) / 2
        spread = mad / (1 / MAD_TO_STD)  # as scipy's median_abs_deviation(scale=1 / 1.4826)
        scale = spread + epsilon
    return median, scale if spread > 0 else 1.0, spread > 0


def _kth_smallest_deviation(deviation: np.ndarray, t: int) -> float:
    """The t-th smallest (1-based) of ``deviation``, which falls and then rises (|x - median| over sorted x)."""
    n = len(deviation)
    return float(np.maximum(deviation[:n - t + 1], deviation[t - 1:]).min())


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



def transform_block(cols: Sequence[np.ndarray], params: NormalizerParams, offsets: np.ndarray | None = None,
                    out: np.ndarray | None = None) -> np.ndarray:
    """Normalize a block of cells given as one array per kept feature -> float32 outputs x cells (into ``out``).

    Computed in float64 as ``transform_kept`` (+-inf in, NaN out); ``offsets`` (cells x outputs, the
    wells' means) are subtracted before rounding to float32.
    """
    n = len(cols[0]) if len(cols) else 0
    if out is None:
        out = np.empty((params.n_out, n), dtype=np.float32)
    if params.rotation is not None:
        y = transform_kept(_columns_as_rows(cols), params)
        if offsets is not None:
            y -= offsets
        out[:] = y.T
        return out
    scratch = np.empty(n)
    for j, col in enumerate(cols):
        np.subtract(col, params.center[j], out=scratch, dtype=np.float64)
        scratch /= params.scale[j]
        scratch[np.isinf(scratch)] = np.nan  # only an infinite input gives an infinite value here
        if offsets is not None:
            scratch -= offsets[:, j]
        out[j] = scratch
    return out
