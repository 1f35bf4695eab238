"""Is a compound retrieved better than chance? copairs 0.5.5's ``mean_average_precision``: mAP per group
(mean AP over the group's queries with ``n_positives > 0``), compared with the mean of per-query null
distributions (``null_size`` random rankings with the query's (positives, candidates) counts, one seeded
generator per distinct count pair): p = (1 + #null > mAP) / (1 + null_size), BH-corrected over groups.
Plus the paired test of two methods' APs over the same queries.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd


def _random_ap(null_size: int, n_positives: int, n_candidates: int, seed, chunk_elements: int = 1 << 24):
    """copairs' ``compute.random_ap``: AP (float32) of ``null_size`` random rankings.

    Same generator calls as copairs (a permutation per row), drawn a chunk of rows at a time so
    memory stays bounded; the result is identical.
    """
    rng = np.random.default_rng(seed)
    dtype = np.uint16 if n_candidates < 2**16 else np.uint32
    pr_num = np.arange(1, n_positives + 1, dtype=np.float32)
    step = max(1, chunk_elements // max(n_candidates, 1))
    out = np.empty(null_size, dtype=np.float32)
    for start in range(0, null_size, step):
        rows = min(step, null_size - start)
        ix = np.tile(np.arange(n_candidates, dtype=dtype), (rows, 1))
        rng.permuted(ix, axis=1, out=ix)
        rel_k = np.sort(ix[:, :n_positives], axis=1)
        out[start : start + rows] = ((pr_num / (rel_k + 1)).sum(axis=1) / n_positives).astype(np.float32)
    return out


def null_distributions(configs: np.ndarray, null_size: int, seed: int) -> np.ndarray:
    """One null AP distribution per (n_positives, n_candidates) row of ``configs`` (sorted, unique).

    Seeds are drawn as copairs draws them (``integers(8096)`` per config, in order). copairs also
    caches each config's null on disk (``~/.copairs/seed*/ns*``) and reuses it whatever seed the
    current run would give it; these values equal copairs run with an empty ``cache_dir``.
    """
    seeds = np.random.default_rng(seed).integers(8096, size=len(configs))
    nulls = np.empty((len(configs), null_size), dtype=np.float32)
    for i, (n_pos, n_cand) in enumerate(configs):
        nulls[i] = _random_ap(null_size, int(n_pos), int(n_cand), seeds[i])
    return nulls


def benjamini_hochberg(p_values) -> np.ndarray:
    """BH-adjusted p-values, computed as statsmodels' ``multipletests(method="fdr_bh")``."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0:
        return p.copy()
    order = np.argsort(p)
    adjusted = p[order] / (np.arange(1, p.size + 1) / p.size)
    adjusted = np.minimum.accumulate(adjusted[::-1])[::-1]
    adjusted[adjusted > 1] = 1
    out = np.empty_like(adjusted)
    out[order] = adjusted
    return out


def mean_average_precision(
    ap_df: pd.DataFrame,
    group_col: str | Sequence[str],
    null_size: int = 10000,
    threshold: float = 0.05,
    seed: int = 0,
    null_cache: dict | None = None,
) -> pd.DataFrame:
    """mAP per group with permutation p-values, as ``copairs.map.mean_average_precision``.

    ``ap_df`` has the columns of :func:`average_precision` plus ``group_col``. Queries with NaN AP
    or no positive are left out. Returns one row per group (sorted): ``mean_average_precision``,
    ``n_queries``, ``p_value``, ``corrected_p_value`` (BH), ``below_p``, ``below_corrected_p``.
    ``null_cache``: a dict reused across calls, so that calls with the same (positives, candidates)
    configurations, ``null_size`` and ``seed`` draw their nulls once (same values).
    """
    cols = [group_col] if isinstance(group_col, str) else list(group_col)
    scored = ap_df[ap_df["average_precision"].notna() & (ap_df["n_positives"] > 0)].reset_index(drop=True)
    counts = scored[["n_positives", "n_candidates"]].to_numpy(dtype=np.int64).reshape(-1, 2)
    configs, config_ix = np.unique(counts, axis=0, return_inverse=True)
    config_ix = np.asarray(config_ix).ravel()
    key = (configs.tobytes(), configs.shape, null_size, seed)
    if null_cache is not None and key in null_cache:
        nulls = null_cache[key]
    else:
        nulls = null_distributions(configs, null_size, seed)
        if null_cache is not None:
            null_cache[key] = nulls

    grouped = scored.groupby(cols, observed=True, sort=True)
    map_scores = grouped["average_precision"].agg(["mean", "size"]).reset_index()
    map_scores = map_scores.rename(columns={"mean": "mean_average_precision", "size": "n_queries"})
    group_ids = grouped.ngroup().to_numpy()
    order = np.argsort(group_ids, kind="stable")
    bounds = np.searchsorted(group_ids[order], np.arange(len(map_scores) + 1))
    p_values = []
    for g, score in enumerate(map_scores["mean_average_precision"]):
        members = order[bounds[g] : bounds[g + 1]]
        null = nulls[config_ix[members]].mean(axis=0)
        p_values.append((np.count_nonzero(null > score) + 1) / (null_size + 1))
    map_scores["p_value"] = np.asarray(p_values, dtype=np.float64)
    map_scores["corrected_p_value"] = benjamini_hochberg(map_scores["p_value"])
    map_scores["below_p"] = map_scores["p_value"] < threshold
    map_scores["below_corrected_p"] = map_scores["corrected_p_value"] < threshold
    return map_scores


def paired_test(a, b) -> tuple[float, float, int]:
    """Two-sided Wilcoxon signed-rank test of paired APs: (p-value, mean of a - b, number of pairs).

    Pairs with a zero difference are dropped (scipy's ``zero_method="wilcox"``); NaN p with fewer
    than one non-zero difference.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff = a - b
    if len(diff) == 0:
        return np.nan, np.nan, 0
    if not np.any(diff != 0):
        return np.nan, float(diff.mean()), len(diff)
    from scipy.stats import wilcoxon  # here, not at the top: the Snakefile imports this module for every run

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(wilcoxon(a, b, zero_method="wilcox", alternative="two-sided").pvalue)
    return p, float(diff.mean()), len(diff)
