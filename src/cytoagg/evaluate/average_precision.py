"""Replicate-retrieval average precision (AP) and mAP, as copairs 0.5.5 defines them.

copairs builds a table of (query, candidate) pairs; here a block of rows of the cosine similarity
matrix is ranked at once, so a whole plate (or 50k profiles, block by block) never needs a pair table.
A positive's rank is found by counting the negatives ranked before it (no sort of the candidates
unless a query has many positives). For large inputs the similarity block is a float32 matrix
product, and only the pairs whose order it cannot decide (within its rigorous error bound of a
positive) are recomputed in float64: the ranks, hence the APs, are those of the float64 computation.

What copairs does, and what is reproduced here:

* Similarity is cosine. copairs stores it as float32 and ranks candidates by the float32 key
  ``1 - sim`` ascending (``np.lexsort``, stable). Two candidates with equal keys keep their input
  order, and positives come before negatives in that order: **ties rank positives first**.
  A NaN similarity (zero-norm profile) sorts after every number.
* AP of a query = mean over its positives of precision at that positive's rank; a query with no
  positive gets NaN (``0 / 0``). The rank list of a query holds its positives and negatives only.
* mAP per group: see :mod:`cytoagg.evaluate.significance`.
  with the mean of per-query null distributions: ``null_size`` random rankings with the query's
  (positives, candidates) counts, one seeded generator per distinct count pair.
"""

from __future__ import annotations


import numpy as np
import pandas as pd

#: Elements of one block of the similarity matrix (rows x reference profiles).
BLOCK_ELEMENTS = 1 << 23

# Rank key given to NaN similarities: after every real key (1 - cosine lies in [0, 2]),
# before the +inf that marks non-candidates.
_NAN_KEY = np.float32(3.0)

#: Up to this many positives per query, positives are placed by comparison passes; beyond, by sorting.
_FEW_POSITIVES = 16

# float32 unit roundoff; a similarity computed in float32 is trusted to decide an order only when it
# is further than the rigorous error bound (plus this margin, which covers rounding to the float32
# rank key) from the similarity it is compared with.
_U32 = 2.0**-24
_KEY_MARGIN = 2.0**-20

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
    keys = np.float32(1) - np.asarray(sims).astype(np.float32)
    keys[np.isnan(keys)] = _NAN_KEY
    return keys


def _mask(mask, n: int, name: str) -> np.ndarray:
    if mask is None:
        return np.ones(n, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (n,):
        raise ValueError(f"{name} must have one entry per profile ({n}), got shape {mask.shape}")
    return mask


def _label_codes(labels, n: int, name: str = "labels") -> np.ndarray:
    labels = pd.Series(labels)
    if len(labels) != n:
        raise ValueError(f"{name} must have one entry per profile ({n}), got {len(labels)}")
    if labels.isna().any():
        raise ValueError(f"{name} must not be missing (rows {np.flatnonzero(labels.isna())[:10].tolist()})")
    return pd.factorize(labels.to_numpy())[0]


def _padded_by_row(rows: np.ndarray, values: np.ndarray, n_rows: int, width: int, fill) -> np.ndarray:
    """(n_rows, width) table of ``values`` grouped by ``rows`` (sorted), in order, padded with ``fill``."""
    out = np.full((n_rows, width), fill, dtype=values.dtype)
    starts = np.searchsorted(rows, np.arange(n_rows))
    out[rows, np.arange(len(rows)) - starts[rows]] = values
    return out


def _sorted_positive_keys(keys: np.ndarray, r: np.ndarray, c: np.ndarray, p_max: int) -> np.ndarray:
    """Each row's positive keys ascending (best first), padded with +inf to ``p_max``; (r, c): the positives."""
    table = _padded_by_row(r, keys[r, c], len(keys), p_max, np.float32(np.inf))
    table.sort(axis=1)
    return table


class _Groups:
    """Reference profiles grouped by label: the same-label pairs of a block of queries without a dense scan."""

    def __init__(self, ref_codes: np.ndarray):
        self.order = np.argsort(ref_codes, kind="stable")
        self.sorted = ref_codes[self.order]

    def pairs(self, query_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row in block, reference column) of every pair sharing a label, sorted by row."""
        lo = np.searchsorted(self.sorted, query_codes, side="left")
        counts = np.searchsorted(self.sorted, query_codes, side="right") - lo
        r = np.repeat(np.arange(len(query_codes)), counts)
        within = np.arange(len(r)) - np.repeat(np.cumsum(counts) - counts, counts)
        return r, self.order[np.repeat(lo, counts) + within]


def _negatives_before(keys: np.ndarray, neg: np.ndarray, pos_keys: np.ndarray) -> np.ndarray:
    """(rows, p_max): negatives with a key strictly below each positive's key (a tie ranks the positive first)."""
    neg_keys = np.where(neg, keys, np.float32(np.inf))
    p_max = pos_keys.shape[1]
    if p_max <= _FEW_POSITIVES:
        return np.stack([(neg_keys < pos_keys[:, k, None]).sum(axis=1) for k in range(p_max)], axis=1)
    neg_keys.sort(axis=1)
    return np.stack([np.searchsorted(neg_keys[r], pos_keys[r], side="left") for r in range(len(keys))])


def _scores_from_ranks(before: np.ndarray, n_pos: np.ndarray):
    """AP and precision at R from the negatives ranked before each positive (positives in rank order).

    The k-th positive (1-based) sits at rank ``k + before[k]``; AP = mean over positives of k / rank.
    """
    k = np.arange(1, before.shape[1] + 1)
    valid = k[None, :] <= n_pos[:, None]
    ranks = k[None, :] + before
    with np.errstate(divide="ignore", invalid="ignore"):
        ap = np.where(valid, k[None, :] / ranks, 0.0).sum(axis=1) / n_pos
        prec_r = (valid & (ranks <= n_pos[:, None])).sum(axis=1) / n_pos
    ap[n_pos == 0] = np.nan
    prec_r[n_pos == 0] = np.nan
    return ap, prec_r


def _exact_sims(query_unit: np.ndarray, ref_unit: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float64 cosine similarity of the pairs (query_unit[r[i]], ref_unit[c[i]]), ``r`` sorted: one
    matrix-vector product per query row (far faster than a pairwise einsum)."""
    out = np.empty(len(r), dtype=np.float64)
    bounds = np.searchsorted(r, np.arange(len(query_unit) + 1))
    for i in np.flatnonzero(np.diff(bounds)):
        s, e = bounds[i], bounds[i + 1]
        out[s:e] = ref_unit[c[s:e]] @ query_unit[i]
    return out


def _gemm_error_bound(n_features: int) -> float:
    """Rigorous bound on |float32 dot - exact dot| for unit vectors rounded to float32.

    Any summation order (blocked, FMA): gamma_d = d u / (1 - d u) times sum |x_i y_i| <= 1 (Cauchy-Schwarz),
    plus 3 u for rounding the unit vectors to float32.
    """
    du = n_features * _U32
    return du / (1.0 - du) + 3.0 * _U32


def _before_float32(S, r, c, neg, p_max, unit, qrows, ref_unit, err):
    """``_negatives_before`` from a float32 similarity block, exact as the float64 computation.

    (r, c): the positives. Positives get float64 similarities. A negative further than the error
    bound from a positive is ordered by its float32 similarity; the few within the bound get float64
    similarities too, so every comparison that decides a rank is made on float64-derived float32
    keys, as copairs makes it. Returns ``(pos_keys, before)``, or None when too many pairs would
    need float64.
    """
    R = len(S)
    q_unit = unit[qrows]
    p_sims = _exact_sims(q_unit, ref_unit, r, c)
    p_keys = _rank_keys(p_sims)
    order = np.lexsort((p_keys, r))  # per row, best positive first
    r, p_sims, p_keys = r[order], p_sims[order], p_keys[order]
    pos_keys = _padded_by_row(r, p_keys, R, p_max, np.float32(np.inf))
    w = err + _KEY_MARGIN
    ps = _padded_by_row(r, p_sims, R, p_max, np.nan)
    hi = np.nextafter((ps + w).astype(np.float32), np.float32(np.inf))  # NaN for padding: compares False
    lo = np.nextafter((ps - w).astype(np.float32), np.float32(-np.inf))
    neg_s = np.where(neg, S, np.float32(-np.inf))
    before = np.empty((R, p_max), dtype=np.int64)
    unsure = np.zeros(S.shape, dtype=bool)
    above = np.empty(S.shape, dtype=bool)
    band = np.empty(S.shape, dtype=bool)
    for k in range(p_max):
        np.greater(neg_s, hi[:, k, None], out=above)
        before[:, k] = above.sum(axis=1)
        np.greater_equal(neg_s, lo[:, k, None], out=band)
        band ^= above  # lo <= s <= hi (above implies >= lo)
        unsure |= band
    ur, uc = np.nonzero(unsure)
    if len(ur) > S.size // 32:
        return None
    if len(ur):
        u_keys = _rank_keys(_exact_sims(q_unit, ref_unit, ur, uc))
        u_s = S[ur, uc]
        for k in range(p_max):
            fix = (u_keys < pos_keys[ur, k]).astype(np.int64) - (u_s > hi[ur, k]).astype(np.int64)
            np.add.at(before[:, k], ur, fix)
    return pos_keys, before


def average_precision(
    profiles: np.ndarray,
    labels,
    *,
    query_mask=None,
    reference_mask=None,
    negative_mask=None,
    exclude_labels=None,
    block_elements: int = BLOCK_ELEMENTS,
    precision: str = "auto",
) -> pd.DataFrame:
    """AP of each query profile at retrieving the profiles that share its label.

    Candidates of query i: profiles j != i with ``reference_mask[j]``, except those with
    ``exclude_labels[j] == exclude_labels[i]`` (neither positive nor negative: copairs' ``pos_diffby``
    and ``neg_diffby``, e.g. a compound's own replicates when retrieving its MoA). Positives:
    candidates with ``labels[j] == labels[i]``. Negatives: the other candidates, or only those in
    ``negative_mask`` (copairs' "versus negative controls" mode). Ranking: descending cosine
    similarity, rounded to float32 as copairs stores it, so equal float32 similarities are ties;
    ties rank positives first (see module docstring).

    ``precision``: ``float64`` computes every similarity in float64; ``float32`` computes the
    similarity matrix in float32 (twice as fast) and recomputes in float64 the similarities of the
    positives and of every negative within the float32 error bound of a positive, so that each
    decision is made on the same float64-derived keys (same AP); ``auto`` picks float32 where the
    matrix product dominates (>= 128 features, queries x references x features >= 2**34, e.g. 4k x 4k
    x 1k). A block where too many pairs would need float64, or with more than 16 positives per
    query, is computed in float64.

    Returns one row per query (``query_mask``, default all) in input order, indexed by the query's
    row position: ``average_precision``, ``precision_at_r`` (fraction of positives among the top R,
    R = ``n_positives``), ``n_positives``, ``n_candidates`` (positives + negatives). Queries without
    a positive are kept, with ``n_positives == 0`` and NaN AP and precision.
    """
    if precision not in ("auto", "float32", "float64"):
        raise ValueError(f"precision must be auto, float32 or float64, got {precision!r}")
    unit = _unit_rows(profiles)
    n, d = unit.shape
    codes = _label_codes(labels, n)
    excl = None if exclude_labels is None else _label_codes(exclude_labels, n, "exclude_labels")
    queries = np.flatnonzero(_mask(query_mask, n, "query_mask"))
    ref_mask = _mask(reference_mask, n, "reference_mask")
    refs = np.flatnonzero(ref_mask)
    negatives = _mask(negative_mask, n, "negative_mask")[refs]
    ref_unit = unit if ref_mask.all() else unit[refs]
    ref_codes = codes[refs]
    ref_excl = None if excl is None else excl[refs]

    err = _gemm_error_bound(d)
    # auto: float32 where the similarity matrix product dominates (many profiles, many features)
    use32 = precision == "float32" or (precision == "auto" and d >= 128 and len(queries) * len(refs) * d >= 2**34)
    use32 = use32 and err < 1e-2 and bool(np.isfinite(unit).all())
    if use32:
        u32 = unit.astype(np.float32)
        ref32_t = np.ascontiguousarray(u32[refs].T)

    label_groups = _Groups(ref_codes)
    excl_groups = None if ref_excl is None else _Groups(ref_excl)
    ap = np.full(len(queries), np.nan)
    prec_r = np.full(len(queries), np.nan)
    n_pos = np.zeros(len(queries), dtype=np.int64)
    n_cand = np.zeros(len(queries), dtype=np.int64)
    step = max(1, block_elements // max(len(refs), 1))
    sims = np.empty((min(step, len(queries)), len(refs)), dtype=np.float32 if use32 else np.float64)
    for start in range(0, len(queries), step):
        rows = queries[start : start + step]
        R = len(rows)
        # Same-label pairs: positives, unless the query itself or excluded; never negatives.
        r, c = label_groups.pairs(codes[rows])
        neg = np.empty((R, len(refs)), dtype=bool)
        neg[:] = negatives[None, :]
        neg[r, c] = False
        keep = refs[c] != rows[r]
        if excl_groups is not None:
            xr, xc = excl_groups.pairs(excl[rows])
            neg[xr, xc] = False
            keep &= ref_excl[c] != excl[rows[r]]
        r, c = r[keep], c[keep]
        p = np.bincount(r, minlength=R)
        out = slice(start, start + R)
        n_pos[out], n_cand[out] = p, p + neg.sum(axis=1)
        p_max = int(p.max(initial=0))
        if p_max == 0:
            continue
        block = sims[:R]
        found = None
        if use32 and p_max <= _FEW_POSITIVES:
            np.matmul(u32[rows], ref32_t, out=block)
            found = _before_float32(block, r, c, neg, p_max, unit, rows, ref_unit, err)
        if found is None:
            keys = _rank_keys(np.matmul(unit[rows], ref_unit.T, out=block) if not use32 else unit[rows] @ ref_unit.T)
            pos_keys = _sorted_positive_keys(keys, r, c, p_max)
            found = pos_keys, _negatives_before(keys, neg, pos_keys)
        ap[out], prec_r[out] = _scores_from_ranks(found[1], p)

    return pd.DataFrame(
        {"average_precision": ap, "precision_at_r": prec_r, "n_positives": n_pos, "n_candidates": n_cand},
        index=pd.Index(queries, name="row"),
    )


def ranked_relevance(
    profiles: np.ndarray, labels, query: int, *, reference_mask=None, negative_mask=None, exclude_labels=None
) -> np.ndarray:
    """One query's rank list as :func:`average_precision` ranks it: True for a positive, best first.

    ``precision = cumsum / rank`` and ``recall = cumsum / n_positives`` along it give the query's
    precision-recall curve; the mean precision at the positives is its AP.
    """
    unit = _unit_rows(profiles)
    n = len(unit)
    codes = _label_codes(labels, n)
    cand = _mask(reference_mask, n, "reference_mask").copy()
    cand[query] = False
    if exclude_labels is not None:
        excl = _label_codes(exclude_labels, n, "exclude_labels")
        cand &= excl != excl[query]
    pos = cand & (codes == codes[query])
    cand &= pos | _mask(negative_mask, n, "negative_mask")
    idx = np.flatnonzero(cand)
    keys = _rank_keys(unit[idx] @ unit[query])
    return pos[idx][np.lexsort((~pos[idx], keys))]


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
