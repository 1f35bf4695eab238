"""AP / mAP: hand-computed cases and agreement with copairs 0.5.5."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from cytoagg.io.columns import feature_columns
from cytoagg.evaluate.average_precision import (
    average_precision,
    baseline_corrected_ap,
    random_baseline_ap,
    ranked_relevance,
)
from cytoagg.evaluate.diagnostics import effective_rank
from cytoagg.evaluate.significance import benjamini_hochberg, mean_average_precision
from realdata import fibrosis_plates



# --- hand-computed ---------------------------------------------------------------------------

# Five wells, compounds a (w0, w1, w2) and b (w3, w4). w1 and w3 point the same way, so every
# query sees them tied; copairs ranks a tied positive before a tied negative.
HAND_X = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [2.0, 2.0], [-1.0, 0.5]])
HAND_LABELS = ["a", "a", "a", "b", "b"]


def test_hand_computed_ap_and_precision_at_r():
    got = average_precision(HAND_X, HAND_LABELS)
    # w0: w1 (pos, 0.707, tied with w3: pos first), w3 (neg), w2 (pos, 0), w4 -> ranks 1, 3
    # w1: w3 (neg, 1.0), w0 and w2 (pos, 0.707), w4 -> ranks 2, 3
    # w2: w1 (pos, tied with w3), w3, w4 (0.447), w0 (pos, 0) -> ranks 1, 4
    # w3: w1 (1.0), w0, w2, w4 (pos, -0.316) -> rank 4
    # w4: w2 (0.447), then w1 (neg) tied with w3 (pos, -0.316) -> rank 2
    expected_ap = [(1 + 2 / 3) / 2, (1 / 2 + 2 / 3) / 2, (1 + 2 / 4) / 2, 1 / 4, 1 / 2]
    expected_pr = [1 / 2, 1 / 2, 1 / 2, 0.0, 0.0]
    np.testing.assert_allclose(got["average_precision"], expected_ap, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["precision_at_r"], expected_pr, rtol=0, atol=1e-12)
    assert got["n_positives"].tolist() == [2, 2, 2, 1, 1]
    assert got["n_candidates"].tolist() == [4, 4, 4, 4, 4]
    assert got.index.tolist() == [0, 1, 2, 3, 4]


def test_masks_and_queries_without_positives():
    labels = ["a", "a", "a", "b", "c"]
    got = average_precision(HAND_X, labels, query_mask=[True, False, True, True, True], reference_mask=[1, 1, 1, 1, 0])
    assert got.index.tolist() == [0, 2, 3, 4]  # positions of the queries, input order
    # w0 against w1, w2, w3 only: w1 (pos, tie first), w3, w2 -> ranks 1, 3
    assert got.loc[0, "average_precision"] == pytest.approx((1 + 2 / 3) / 2, abs=1e-12)
    assert got.loc[0, "n_candidates"] == 3
    # b and c have no replicate among the references: kept, NaN, n_positives == 0
    for row in (3, 4):
        assert got.loc[row, "n_positives"] == 0
        assert np.isnan(got.loc[row, "average_precision"]) and np.isnan(got.loc[row, "precision_at_r"])
    assert got.loc[3, "n_candidates"] == 3 and got.loc[4, "n_candidates"] == 4


def test_negative_mask_restricts_negatives():
    # Only w4 ("ctrl") is a negative: w3 (other compound) is not ranked at all.
    labels = ["a", "a", "a", "b", "ctrl"]
    got = average_precision(HAND_X, labels, query_mask=[1, 1, 1, 1, 0], negative_mask=[0, 0, 0, 0, 1])
    # w0: w1 (0.707), w2 (0), w4 (-0.894) -> ranks 1, 2; w2: w1 (0.707), w4 (0.447), w0 (0) -> ranks 1, 3
    np.testing.assert_allclose(got["average_precision"], [1.0, 1.0, (1 + 2 / 3) / 2, np.nan], atol=1e-12)
    assert got["n_candidates"].tolist() == [3, 3, 3, 1]
    assert got["n_positives"].tolist() == [2, 2, 2, 0]


def test_exclude_labels_remove_candidates():
    # MoA-style: positives = same "moa" (labels), other compound; the query's own compound is not ranked.
    moa = ["m", "m", "m", "n", "n"]
    compound = ["a", "a", "b", "c", "d"]
    got = average_precision(HAND_X, moa, exclude_labels=compound)
    # w0 (a): w1 (a) is not ranked; w3 (neg, 0.707), w2 (pos, 0), w4 (neg, -0.894) -> w2 at rank 2
    # w2 (b): no replicate to remove; w1 (pos, 0.707, tied with w3: first), w3, w4 (0.447), w0 (pos, 0) -> ranks 1, 4
    assert got["n_candidates"].tolist() == [3, 3, 4, 4, 4]
    assert got["n_positives"].tolist() == [1, 1, 2, 1, 1]
    assert got.loc[0, "average_precision"] == pytest.approx(1 / 2, abs=1e-12)
    assert got.loc[2, "average_precision"] == pytest.approx((1 + 2 / 4) / 2, abs=1e-12)


def test_ranked_relevance_gives_the_same_ap():
    x, labels = tied_random_profiles(9, n=120)
    ap = average_precision(x, labels)
    for q in (0, 5, 17, 60):
        rel = ranked_relevance(x, labels, q)
        hits = np.cumsum(rel)
        assert len(rel) == ap.loc[q, "n_candidates"] and rel.sum() == ap.loc[q, "n_positives"]
        if rel.any():
            ranks = np.flatnonzero(rel) + 1
            assert (hits[rel] / ranks).mean() == pytest.approx(ap.loc[q, "average_precision"], abs=1e-12)


def test_effective_rank():
    eye = effective_rank(np.eye(6), center=False)
    assert eye["effective_rank"] == pytest.approx(6) and eye["max_rank"] == 6
    rank1 = effective_rank(np.outer(np.arange(1, 9), [1.0, 2.0, 3.0]), center=False)
    assert rank1["effective_rank"] == pytest.approx(1)
    x = np.random.default_rng(0).normal(size=(200, 10)) * np.r_[np.ones(3), np.full(7, 1e-9)]
    assert effective_rank(x, unit_rows=False)["effective_rank"] < 3.01
    assert effective_rank(x)["singular_values"].sum() == pytest.approx(1)


def test_blocks_give_the_same_answer():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(97, 6))
    labels = rng.integers(0, 20, size=97)
    whole = average_precision(x, labels)
    for block in (1, 50, 300):
        pd.testing.assert_frame_equal(average_precision(x, labels, block_elements=block), whole)


def test_random_baseline_and_corrected_ap():
    np.testing.assert_allclose(random_baseline_ap([1, 3, 0], [4, 6, 5]), [0.25, 0.5, 0.0])
    assert np.isnan(random_baseline_ap(0, 0))
    got = baseline_corrected_ap([0.75, 0.2, np.nan], [1, 3, 2], [4, 6, 5])
    np.testing.assert_allclose(got, [0.5, 0.0, np.nan])


def test_benjamini_hochberg_matches_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(3).uniform(size=200) ** 3
    p[:20] = p[20:40]  # ties
    np.testing.assert_array_equal(benjamini_hochberg(p), multitest.multipletests(p, method="fdr_bh")[1])


# --- agreement with copairs ------------------------------------------------------------------

copairs_map = pytest.importorskip("copairs.map")


def copairs_ap(labels, x, negcon=None) -> pd.DataFrame:
    """copairs' AP with positives = same label; with ``negcon``, negatives = negcon wells only."""
    meta = pd.DataFrame({"label": np.asarray(labels).astype(str)})
    if negcon is None:
        return copairs_map.average_precision(meta, x, ["label"], [], [], ["label"], progress_bar=False)
    # copairs' recipe for "versus controls": every control is its own reference group.
    meta["ref"] = np.where(negcon, np.arange(len(meta)), -1)
    return copairs_map.average_precision(meta, x, ["label", "ref"], [], [], ["label", "ref"], progress_bar=False)


def assert_same_as_copairs(ours: pd.DataFrame, ref: pd.DataFrame) -> None:
    ref = ref.loc[ours.index]
    assert ours["n_positives"].tolist() == ref["n_pos_pairs"].tolist()
    assert ours["n_candidates"].tolist() == ref["n_total_pairs"].tolist()
    np.testing.assert_allclose(ours["average_precision"], ref["average_precision"], rtol=0, atol=1e-9)


def tied_random_profiles(seed: int, n: int = 240, d: int = 4):
    """Quantized profiles with duplicated rows (exact ties) and unequal replicate counts."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=(n, d)).astype(np.float64)
    x[x.sum(axis=1) == 0] += 1  # no zero rows
    x[rng.choice(n, 40, replace=False)] = x[rng.choice(n, 40, replace=False)]
    labels = rng.choice(40, size=n, p=np.linspace(1, 3, 40) / np.linspace(1, 3, 40).sum())
    return x, labels


def count_pos_neg_ties(x, labels) -> int:
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    keys = np.float32(1) - (u @ u.T).astype(np.float32)
    labels = np.asarray(labels)
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    return sum(
        len(np.intersect1d(keys[i, same[i]], keys[i, (labels != labels[i])])) for i in range(len(x))
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_copairs_with_ties(seed):
    x, labels = tied_random_profiles(seed)
    assert count_pos_neg_ties(x, labels) > 50  # the tie rule is exercised
    assert_same_as_copairs(average_precision(x, labels), copairs_ap(labels, x))


def test_matches_copairs_on_float32_resolution_ties():
    # Similarities that differ only below float32 resolution are ties for copairs: positive first.
    x = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0 + 1e-12], [1.0, 1.0 - 1e-12], [0.0, 1.0], [0.2, 1.0]])
    labels = ["a", "b", "a", "c", "c", "b"]
    ours = average_precision(x, labels)
    assert_same_as_copairs(ours, copairs_ap(labels, x))
    assert ours.loc[0, "average_precision"] == 1.0


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_matches_copairs_with_zero_profiles():
    # A zero profile has NaN cosine to everyone: ranked after every number, ties positives first.
    x, labels = tied_random_profiles(6, n=120)
    x[[3, 50, 51]] = 0.0
    assert_same_as_copairs(average_precision(x, labels), copairs_ap(labels, x))


def test_matches_copairs_continuous_data():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 20))
    labels = rng.integers(0, 70, size=300)
    assert_same_as_copairs(average_precision(x, labels), copairs_ap(labels, x))


def test_matches_copairs_negcon_as_negatives():
    x, labels = tied_random_profiles(4, n=200)
    negcon = np.zeros(len(x), dtype=bool)
    negcon[::5] = True
    labels = np.where(negcon, "DMSO", labels.astype(str))
    codes = np.where(negcon, [f"ctrl{i}" for i in range(len(x))], labels)  # controls: no replicates
    ours = average_precision(x, codes, query_mask=~negcon, negative_mask=negcon)
    assert len(ours) == (~negcon).sum() and (ours["n_positives"] > 0).sum() > 100
    assert_same_as_copairs(ours, copairs_ap(labels, x, negcon=negcon))


def test_mean_average_precision_matches_copairs(tmp_path):
    x, labels = tied_random_profiles(5, n=300, d=6)
    # Half of the compounds get a phenotype (a label-specific offset), so some mAPs are significant.
    offsets = np.random.default_rng(5).integers(-3, 4, size=(40, 6)) * (np.arange(40) % 2 == 0)[:, None]
    x = x + offsets[labels]
    ours = average_precision(x, labels).assign(label=np.asarray(labels).astype(str))
    ref = copairs_ap(labels, x)
    # A fresh cache: copairs reuses cached nulls whatever seed the current run gives them.
    expected = copairs_map.mean_average_precision(
        ref, ["label"], null_size=2000, threshold=0.05, seed=3, progress_bar=False, cache_dir=tmp_path
    )
    got = mean_average_precision(ours, "label", null_size=2000, threshold=0.05, seed=3)
    assert got["label"].tolist() == expected["label"].tolist()
    np.testing.assert_allclose(got["mean_average_precision"], expected["mean_average_precision"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(got["p_value"], expected["p_value"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["corrected_p_value"], expected["corrected_p_value"], rtol=0, atol=1e-12)
    assert got["below_p"].tolist() == expected["below_p"].tolist()
    assert got["below_corrected_p"].tolist() == expected["below_corrected_p"].tolist()
    assert got["below_corrected_p"].any() and not got["below_corrected_p"].all()




@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_copairs_on_real_plates(dtype, tmp_path):
    plates = fibrosis_plates()
    all_wells = []
    for path in plates:
        cells = pd.read_parquet(path)
        feats = feature_columns(cells.columns)
        wells = cells.groupby(["Metadata_Well", "Metadata_cell_type"], as_index=False)[feats].mean()
        assert len(wells) == 8 and wells["Metadata_cell_type"].nunique() == 2
        x = wells[feats].to_numpy(dtype=dtype)
        labels = wells["Metadata_cell_type"].to_numpy()
        ours = average_precision(x, labels)
        assert_same_as_copairs(ours, copairs_ap(labels, x))
        assert ours["n_positives"].eq(3).all() and ours["n_candidates"].eq(7).all()
        all_wells.append(ours.assign(cell_type=labels, plate=path.stem))
    ours = pd.concat(all_wells, ignore_index=True)
    ref = ours.rename(columns={"n_positives": "n_pos_pairs", "n_candidates": "n_total_pairs"})
    ref["normalized_average_precision"] = 0.0
    expected = copairs_map.mean_average_precision(
        ref, ["cell_type"], null_size=1000, threshold=0.05, seed=0, progress_bar=False, cache_dir=tmp_path
    )
    got = mean_average_precision(ours, ["cell_type"], null_size=1000, seed=0)
    np.testing.assert_allclose(got["mean_average_precision"], expected["mean_average_precision"], atol=1e-12)
    np.testing.assert_allclose(got["p_value"], expected["p_value"], atol=1e-12)


# --- the float32 similarity path -----------------------------------------------------------------


def near_tied_profiles(seed: int, n: int = 600, d: int = 200):
    """Continuous profiles with exact duplicates and near-duplicates (below float32 resolution and just above)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n // 4), 4)
    x = rng.normal(size=(n // 4, d))[labels] * 0.4 + rng.normal(size=(n, d))
    src = rng.choice(n, 120, replace=False)
    x[src[:40]] = x[src[40:80]]  # exact duplicates
    x[src[80:]] = x[src[:40]] * (1 + rng.choice([1e-12, 1e-8, 3e-7], size=(40, 1)))  # near ties at every scale
    return x, labels


@pytest.mark.parametrize("seed", [0, 1])
def test_float32_path_is_exact(seed, monkeypatch):
    import cytoagg.evaluate.average_precision as metrics

    blocks = []
    original = metrics._before_float32

    def spy(*args):
        found = original(*args)
        blocks.append(found is not None)
        return found

    monkeypatch.setattr(metrics, "_before_float32", spy)
    x, labels = near_tied_profiles(seed)
    f64 = average_precision(x, labels, precision="float64")
    assert not blocks
    for block in (5000, 1 << 23):
        f32 = average_precision(x, labels, precision="float32", block_elements=block)
        pd.testing.assert_frame_equal(f32, f64)
    assert len(blocks) > 2 and all(blocks)  # every block ranked from float32 similarities, none fell back
    assert_same_as_copairs(f32, copairs_ap(labels, x))


def test_float32_path_with_ties_masks_and_fallback():
    x, labels = tied_random_profiles(3, n=240, d=4)  # many exact ties
    f32 = average_precision(x, labels, precision="float32", block_elements=2000)
    assert_same_as_copairs(f32, copairs_ap(labels, x))
    # Profiles all within the float32 error bound of each other: every block falls back to float64.
    rng = np.random.default_rng(1)
    y = np.ones((100, 50)) + 1e-7 * rng.normal(size=(100, 50))
    lab = np.repeat(np.arange(25), 4)
    pd.testing.assert_frame_equal(
        average_precision(y, lab, precision="float32"), average_precision(y, lab, precision="float64")
    )
    # masks and negatives
    negcon = np.zeros(len(x), dtype=bool)
    negcon[::6] = True
    codes = np.where(negcon, -1 - np.arange(len(x)), labels)
    kw = dict(query_mask=~negcon, negative_mask=negcon)
    pd.testing.assert_frame_equal(
        average_precision(x, codes, precision="float32", **kw), average_precision(x, codes, precision="float64", **kw)
    )


def test_matches_copairs_with_many_positives():
    # More positives per query than the comparison passes handle: the sorting path.
    rng = np.random.default_rng(11)
    labels = np.repeat(np.arange(6), 30)
    x = rng.normal(size=(6, 12))[labels] * 0.5 + rng.normal(size=(180, 12))
    ours = average_precision(x, labels)
    assert ours["n_positives"].eq(29).all()
    assert_same_as_copairs(ours, copairs_ap(labels, x))


def test_exclude_labels_match_copairs_diffby():
    rng = np.random.default_rng(12)
    compound = np.repeat(np.arange(40), 3)
    moa = compound % 7
    x = rng.normal(size=(7, 16))[moa] * 0.3 + rng.normal(size=(40, 16))[compound] * 0.3 + rng.normal(size=(120, 16))
    ours = average_precision(x, moa, exclude_labels=compound)
    meta = pd.DataFrame({"moa": moa.astype(str), "compound": compound.astype(str)})
    ref = copairs_map.average_precision(meta, x, ["moa"], ["compound"], [], ["moa"], progress_bar=False)
    assert_same_as_copairs(ours, ref)


def test_null_cache_gives_the_same_p_values():
    x, labels = tied_random_profiles(5, n=200, d=6)
    ours = average_precision(x, labels).assign(label=np.asarray(labels).astype(str))
    cache = {}
    a = mean_average_precision(ours, "label", null_size=500, seed=1, null_cache=cache)
    b = mean_average_precision(ours, "label", null_size=500, seed=1, null_cache=cache)
    assert len(cache) == 1
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, mean_average_precision(ours, "label", null_size=500, seed=1))
