"""Tables: mAP per plate, per-compound p-values (as copairs), fraction retrieved, paired tests, the seed layout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from cytoagg.evaluate.average_precision import average_precision
from cytoagg.evaluate.significance import paired_test
from cytoagg.evaluate.summarize import (
    add_splits,
    ap_per_compound,
    map_per_plate,
    markdown_report,
    paired_tests,
    headline_table,
)
from helpers import splits

PLATE_SPLIT = {"P1": "train", "P2": "train", "P3": "validation"}
VALIDATION = ["c00", "c01", "c02", "c03", "c04", "c05"]
SPLITS = splits(PLATE_SPLIT, validation=VALIDATION, seed=0)


def fake_ap(seed: int = 0, n_compounds: int = 20, reps: int = 4) -> pd.DataFrame:
    """Per-well AP tables as the evaluate step writes them, for 3 plates x (model, mean, median).

    The model's profiles separate compounds better than the mean's; half the compounds have no phenotype.
    """
    rng = np.random.default_rng(seed)
    labels = np.repeat([f"c{i:02d}" for i in range(n_compounds)], reps)
    codes = np.repeat(np.arange(n_compounds), reps)
    active = (np.arange(n_compounds) % 2 == 0)[codes]
    centers = rng.normal(size=(n_compounds, 8))
    parts = []
    for plate in PLATE_SPLIT:
        for method, effect in (("model", 2.0), ("mean", 0.7), ("median", 0.6)):
            x = centers[codes] * effect * active[:, None] + rng.normal(size=(len(labels), 8))
            ap = average_precision(x, labels).reset_index(drop=True)
            ap.insert(0, "perturbation", labels)
            ap.insert(0, "well", [f"W{i:03d}" for i in range(len(labels))])
            ap.insert(0, "plate", plate)
            parts.append(ap.assign(method=method))
    ap = pd.concat(parts, ignore_index=True)
    ap.loc[(ap.plate == "P2") & (ap.well == "W000"), ["average_precision", "precision_at_r"]] = np.nan  # a skipped query
    ap.loc[(ap.plate == "P2") & (ap.well == "W000"), "n_positives"] = 0
    return ap


@pytest.fixture(scope="module")
def ap():
    return fake_ap()


@pytest.fixture(scope="module")
def per_compound(ap):
    return ap_per_compound(add_splits(ap, SPLITS), null_size=2000, seed=1)


def test_ap_per_compound_matches_copairs(ap, per_compound, tmp_path):
    copairs_map = pytest.importorskip("copairs.map")
    assert list(per_compound.columns[:9]) == [
        "compound", "plate", "method", "profile_pipeline", "mAP", "p_value", "corrected_p_value", "retrieved", "n_queries"
    ]  # fmt: skip
    for (plate, method), g in ap.groupby(["plate", "method"]):
        ref = g.rename(columns={"n_positives": "n_pos_pairs", "n_candidates": "n_total_pairs"})
        ref = ref.assign(normalized_average_precision=0.0)
        expected = copairs_map.mean_average_precision(
            ref, ["perturbation"], null_size=2000, threshold=0.05, seed=1, progress_bar=False, cache_dir=tmp_path / f"{plate}{method}"
        )
        got = per_compound[(per_compound.plate == plate) & (per_compound.method == method)]
        assert got["compound"].tolist() == expected["perturbation"].tolist()
        np.testing.assert_allclose(got["mAP"], expected["mean_average_precision"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(got["p_value"], expected["p_value"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(got["corrected_p_value"], expected["corrected_p_value"], rtol=0, atol=1e-12)
        assert got["retrieved"].tolist() == expected["below_corrected_p"].tolist()
    # splits carried along
    assert set(per_compound["compound_split"]) == {"train", "validation"}
    assert per_compound.loc[per_compound.compound.isin(VALIDATION), "compound_split"].eq("validation").all()
    assert per_compound.loc[per_compound.method == "model", "retrieved"].mean() > per_compound.loc[
        per_compound.method == "mean", "retrieved"
    ].mean()


def test_map_per_plate_columns_and_values(ap, per_compound):
    long = map_per_plate(ap, SPLITS, per_compound=per_compound)
    assert len(long) == 3 * 3 * 3  # plates x methods x (train, validation, all)
    for col in ("mAP", "precision_at_R", "n_queries", "n_skipped_queries", "n_compounds", "n_retrieved",
                "fraction_retrieved", "wilcoxon_p_vs_mean", "mean_ap_difference_vs_mean"):
        assert col in long.columns, col
    row = long[(long.plate == "P1") & (long.method == "model") & (long.compound_split == "validation")].iloc[0]
    g = ap[(ap.plate == "P1") & (ap.method == "model") & ap.perturbation.isin(VALIDATION)]
    assert row["mAP"] == pytest.approx(g.groupby("perturbation").average_precision.mean().mean())
    assert row["n_compounds"] == len(VALIDATION)
    pc = per_compound[(per_compound.plate == "P1") & (per_compound.method == "model") & per_compound.compound.isin(VALIDATION)]
    assert row["fraction_retrieved"] == pytest.approx(pc["retrieved"].mean())
    # the paired test: model vs mean over the same wells
    m = ap[(ap.plate == "P1") & (ap.method == "mean") & ap.perturbation.isin(VALIDATION)]
    expected = wilcoxon(g["average_precision"].to_numpy(), m["average_precision"].to_numpy()).pvalue
    assert row["wilcoxon_p_vs_mean"] == pytest.approx(expected, rel=1e-12)
    assert row["mean_ap_difference_vs_mean"] == pytest.approx((g.average_precision.to_numpy() - m.average_precision.to_numpy()).mean())
    assert long.loc[long.method == "mean", "wilcoxon_p_vs_mean"].isna().all()
    # the skipped query: counted, and left out of the pairs
    p2 = long[(long.plate == "P2") & (long.method == "model") & (long.compound_split == "all")].iloc[0]
    assert p2["n_skipped_queries"] == 1 and p2["n_queries"] == 79
    # order: training plates first
    assert long["plate"].tolist()[:9] == ["P1"] * 9 and long["plate"].tolist()[-9:] == ["P3"] * 9


def test_paired_test_edge_cases():
    assert np.isnan(paired_test([], [])[0])
    p, diff, n = paired_test([0.5, 0.5], [0.5, 0.5])
    assert np.isnan(p) and diff == 0 and n == 2
    p, diff, n = paired_test(np.linspace(0.5, 1, 30), np.linspace(0, 0.4, 30))
    assert p < 1e-5 and diff > 0 and n == 30


def test_headline_table_and_markdown(ap, per_compound):
    long = map_per_plate(ap, SPLITS, per_compound=per_compound)
    model, bm = ("model", "raw"), ("mean", "raw")
    wide = headline_table(long, model, bm, paired_tests(ap, model, bm, SPLITS, by="plate"),
                          paired_tests(ap, model, bm, SPLITS, by="plate_split"))
    assert list(wide.columns) == [
        "plate", "plate split", "Training mAP model", "Training mAP BM", "Validation mAP model", "Validation mAP BM",
        "PR model", "PR BM", "Retrieved model", "Retrieved BM", "Training p (model vs BM)", "Validation p (model vs BM)",
    ]  # fmt: skip
    assert wide["plate"].tolist() == ["P1", "P2", "P3", "mean (train plates)", "mean (validation plates)"]
    assert wide.loc[3, "Training mAP model"] == pytest.approx(wide.loc[:1, "Training mAP model"].mean())
    # the mean rows' p-values: one test over all the split's query wells
    both = add_splits(ap, SPLITS)
    both = both[(both.plate_split == "train") & (both.compound_split == "validation")]
    a = both[both.method == "model"].dropna(subset=["average_precision"])
    b = both[both.method == "mean"].set_index(["plate", "well"]).loc[pd.MultiIndex.from_frame(a[["plate", "well"]])]
    assert wide.loc[3, "Validation p (model vs BM)"] == pytest.approx(wilcoxon(a.average_precision, b.average_precision).pvalue)
    md = markdown_report(long, ap, SPLITS)
    assert "BM: mean" in md  # the only baseline here, so the best non-learned profile
    assert "| plate | plate split | Training mAP model | Training mAP BM | Validation mAP model | Validation mAP BM | PR model | PR BM |" in md
    assert "Baseline-corrected" not in md and "MoA" not in md


def test_corrected_and_moa_tables_appear_when_present(ap):
    ap = ap.copy()
    ap["baseline_corrected_ap"] = np.maximum(ap["average_precision"] - ap["n_positives"] / ap["n_candidates"], 0)
    ap["moa"] = ap["perturbation"].str[-1]
    ap["moa_average_precision"] = ap["average_precision"] / 2
    ap["moa_precision_at_r"] = ap["precision_at_r"] / 2
    long = map_per_plate(ap, SPLITS)
    assert "fraction_retrieved" not in long.columns  # no per-compound table given
    row = long[(long.plate == "P3") & (long.method == "model") & (long.compound_split == "all")].iloc[0]
    assert row["baseline_corrected_mAP"] < row["mAP"]
    assert row["moa_mAP"] == pytest.approx(row["mAP"] / 2)
    md = markdown_report(long, ap, SPLITS)
    assert "## Baseline-corrected mAP" in md and "Training corrected mAP model" in md
    assert "## MoA retrieval mAP" in md
    per_compound = ap_per_compound(add_splits(ap, SPLITS), null_size=200)
    assert {"moa", "moa_mAP", "baseline_corrected_mAP"} <= set(per_compound.columns)
