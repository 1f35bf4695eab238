"""Replicate-retrieval average precision (AP) and mAP, as copairs 0.5.5 defines them.

copairs builds a table of (query, candidate) pairs; here a block of rows of the cosine similarity
matrix is ranked at once, so a whole plate (or 50k profiles, block by block) never needs a pair table.

What copairs does, and what is reproduced here:

* Similarity is cosine. copairs stores it as float32 and ranks candidates by the float32 key
  ``1 - sim`` ascending (``np.lexsort``, stable). Two candidates with equal keys keep their input
  order, and positives come before negatives in that order: **ties rank positives first**.
  A NaN similarity (zero-norm profile) sorts after every number.
* AP of a query = mean over its positives of precision at that positive's rank; a query with no
  positive gets NaN (``0 / 0``). The rank list of a query holds its positives and negatives only.
* mAP per group = mean AP over the group's queries with ``n_positives > 0``. Its p-value compares it
  with the mean of per-query null distributions: ``null_size`` random rankings with the query's
  (positives, candidates) counts, one seeded generator per distinct count pair.
  p = (1 + #null > mAP) / (1 + null_size); BH-corrected over groups.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

#: Elements of one block of the similarity matrix (rows x reference profiles); ~30 bytes each.
BLOCK_ELEMENTS = 1 << 22

# Rank key given to NaN similarities: after every real key (1 - cosine lies in [0, 2]),
# before the +inf that marks non-candidates.
_NAN_KEY = np.float32(3.0)

AP_COLUMNS = ["average_precision", "precision_at_r", "n_positives", "n_candidates"]


def _unit_rows(profiles: np.ndarray) -> np.ndarray:
    """L2-normalized rows in float64; a zero row becomes NaN, as in copairs (0 / 0)."""
    x = np.asarray(profiles, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"profiles must be a 2-D matrix, got shape {x.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def _rank_keys(sims: np.ndarray) -> np.ndarray:
    """copairs' sort key ``1 - sim`` in float32 (ties are decided at float32 resolution)."""
    keys = np.float32(1) - sims.astype(np.float32)
    keys[np.isnan(keys)] = _NAN_KEY
    return keys


def _mask(mask, n: int, name: str) -> np.ndarray:
    if mask is None:
        return np.ones(n, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (n,):
        raise ValueError(f"{name} must have one entry per profile ({n}), got shape {mask.shape}")
    return mask


def _label_codes(labels, n: int) -> np.ndarray:
    labels = pd.Series(labels)
    if len(labels) != n:
        raise ValueError(f"labels must have one entry per profile ({n}), got {len(labels)}")
    if labels.isna().any():
        raise ValueError(f"labels must not be missing (rows {np.flatnonzero(labels.isna())[:10].tolist()})")
    return pd.factorize(labels.to_numpy())[0]


def _rank_block(keys: np.ndarray, pos: np.ndarray, neg: np.ndarray):
    """AP, precision at R and counts for each row of a block of rank keys.

    A positive's rank = its place among the positives (sorted by key) + the negatives with a
    strictly smaller key: on a tie the positive goes first.
    """
    n_pos = pos.sum(axis=1)
    n_neg = neg.sum(axis=1)
    ap = np.full(len(keys), np.nan)
    prec_r = np.full(len(keys), np.nan)
    p_max = int(n_pos.max(initial=0))
    if p_max == 0:
        return ap, prec_r, n_pos, n_pos + n_neg
    neg_keys = np.sort(np.where(neg, keys, np.inf), axis=1)
    pos_keys = np.where(pos, keys, np.inf)
    pos_keys = np.sort(np.partition(pos_keys, p_max - 1, axis=1)[:, :p_max], axis=1)
    for r in np.flatnonzero(n_pos):
        p = n_pos[r]
        k = np.arange(1, p + 1)
        ranks = k + np.searchsorted(neg_keys[r, : n_neg[r]], pos_keys[r, :p], side="left")
        ap[r] = (k / ranks).sum() / p
        prec_r[r] = np.count_nonzero(ranks <= p) / p
    return ap, prec_r, n_pos, n_pos + n_neg


def average_precision(
    profiles: np.ndarray,
    labels,
    *,
    query_mask=None,
    reference_mask=None,
    negative_mask=None,
    block_elements: int = BLOCK_ELEMENTS,
) -> pd.DataFrame:
    """AP of each query profile at retrieving the profiles that share its label.

    Candidates of query i: profiles j != i with ``reference_mask[j]``. Positives: candidates with
    ``labels[j] == labels[i]``. Negatives: the other candidates, or only those in ``negative_mask``
    (copairs' "versus negative controls" mode). Ranking: descending cosine similarity, computed in
    float64 and then rounded to float32 as copairs stores it, so equal float32 similarities are
    ties; ties rank positives first (see module docstring).

    Returns one row per query (``query_mask``, default all) in input order, indexed by the query's
    row position: ``average_precision``, ``precision_at_r`` (fraction of positives among the top R,
    R = ``n_positives``), ``n_positives``, ``n_candidates`` (positives + negatives). Queries without
    a positive are kept, with ``n_positives == 0`` and NaN AP and precision.
    """
    unit = _unit_rows(profiles)
    n = len(unit)
    codes = _label_codes(labels, n)
    queries = np.flatnonzero(_mask(query_mask, n, "query_mask"))
    refs = np.flatnonzero(_mask(reference_mask, n, "reference_mask"))
    negatives = _mask(negative_mask, n, "negative_mask")[refs]
    ref_unit, ref_codes = unit[refs], codes[refs]

    ap = np.full(len(queries), np.nan)
    prec_r = np.full(len(queries), np.nan)
    n_pos = np.zeros(len(queries), dtype=np.int64)
    n_cand = np.zeros(len(queries), dtype=np.int64)
    step = max(1, block_elements // max(len(refs), 1))
    for start in range(0, len(queries), step):
        rows = queries[start : start + step]
        keys = _rank_keys(unit[rows] @ ref_unit.T)
        same = codes[rows, None] == ref_codes[None, :]
        pos = same & (rows[:, None] != refs[None, :])
        neg = ~same & negatives[None, :]
        out = slice(start, start + len(rows))
        ap[out], prec_r[out], n_pos[out], n_cand[out] = _rank_block(keys, pos, neg)

    return pd.DataFrame(
        {"average_precision": ap, "precision_at_r": prec_r, "n_positives": n_pos, "n_candidates": n_cand},
        index=pd.Index(queries, name="row"),
    )


def random_baseline_ap(n_positives, n_candidates):
    """Expected precision of a random ranking, ``n_positives / n_candidates`` (NaN with no candidate)."""
    n_positives = np.asarray(n_positives, dtype=np.float64)
    n_candidates = np.asarray(n_candidates, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n_candidates > 0, n_positives / n_candidates, np.nan)


def baseline_corrected_ap(ap, n_positives, n_candidates):
    """CytoSummaryNet's corrected AP: ``max(AP - random_baseline_ap, 0)``; NaN stays NaN.

    Makes APs comparable across queries with different numbers of replicates and candidates.
    """
    return np.maximum(np.asarray(ap, dtype=np.float64) - random_baseline_ap(n_positives, n_candidates), 0.0)


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
) -> pd.DataFrame:
    """mAP per group with permutation p-values, as ``copairs.map.mean_average_precision``.

    ``ap_df`` has the columns of :func:`average_precision` plus ``group_col``. Queries with NaN AP
    or no positive are left out. Returns one row per group (sorted): ``mean_average_precision``,
    ``n_queries``, ``p_value``, ``corrected_p_value`` (BH), ``below_p``, ``below_corrected_p``.
    """
    cols = [group_col] if isinstance(group_col, str) else list(group_col)
    scored = ap_df[ap_df["average_precision"].notna() & (ap_df["n_positives"] > 0)].reset_index(drop=True)
    counts = scored[["n_positives", "n_candidates"]].to_numpy(dtype=np.int64).reshape(-1, 2)
    configs, config_ix = np.unique(counts, axis=0, return_inverse=True)
    config_ix = np.asarray(config_ix).ravel()
    nulls = null_distributions(configs, null_size, seed)

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
