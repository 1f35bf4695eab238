"""Feature selection: agreement with pycytominer 1.7.1 ``feature_select``, pooling of plates, edge cases."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from cytoagg.io.columns import feature_columns
from cytoagg.preprocess.feature_select import (
    DEFAULT_BLOCKLIST,
    OPERATIONS,
    correlation_matrix,
    fit_feature_selection,
    pool_cells,
    select_features,
)
from cytoagg.io.files import InputError
from helpers import feature_select_settings
from cytoagg.io.parquet import write_profiles
from realdata import fibrosis_plates

pycytominer = pytest.importorskip("pycytominer")
from pycytominer.cyto_utils.blocklist import Blocklist  # noqa: E402

BRIEF_OPERATIONS = ["variance_threshold", "correlation_threshold", "drop_na_columns", "blocklist"]
OPERATION_SETS = [[op] for op in OPERATIONS] + [list(OPERATIONS), BRIEF_OPERATIONS]


def synthetic_cells(n_cells=400, seed=0, with_nan=True) -> pd.DataFrame:
    """Features built to trip every operation: correlated groups, a near-constant, a rare value, NaN, blocklisted."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n_cells, 6))
    cols = {f"Cells_Base_{i}": base[:, i] for i in range(6)}
    for i in range(6):  # noisier and noisier copies: some above 0.9, some below
        cols[f"Cytoplasm_Copy_{i}"] = base[:, i] * (i + 1) + rng.normal(scale=0.2 + 0.1 * i, size=n_cells)
    cols["Nuclei_Sum_01"] = base[:, 0] + base[:, 1] + rng.normal(scale=0.1, size=n_cells)
    cols["Cells_Negative_2"] = -base[:, 2] + rng.normal(scale=0.05, size=n_cells)  # r = -0.99: kept
    cols["Cells_Constant"] = np.full(n_cells, 3.0)
    cols["Cells_Tiny_Variance"] = 1 + rng.normal(scale=1e-4, size=n_cells)
    cols["Cells_Rare_Event"] = np.where(rng.random(n_cells) < 0.02, 1.0, 0.0)
    cols["Cells_Three_Values"] = rng.integers(0, 3, n_cells).astype(float)
    cols["Nuclei_Correlation_Manders_AGP_DNA"] = rng.normal(size=n_cells)  # in the default blocklist
    cols["Nuclei_Granularity_14_RNA"] = rng.normal(size=n_cells)
    if with_nan:
        holey = rng.normal(size=n_cells)
        holey[rng.random(n_cells) < 0.1] = np.nan  # 10% missing: dropped at 0.05
        cols["Nuclei_Holey"] = holey
        few = base[:, 3] + rng.normal(scale=0.01, size=n_cells)
        few[rng.random(n_cells) < 0.03] = np.nan  # 3% missing: kept, but its correlations are pairwise
        cols["Nuclei_Few_Missing"] = few
    features = pd.DataFrame(cols).astype(np.float32)
    wells = np.repeat(["A01", "A02"], -(-n_cells // 2))[:n_cells]
    meta = pd.DataFrame({"Metadata_Plate": "P1", "Metadata_Well": wells})
    return pd.concat([meta, features], axis=1)


def pycytominer_kept(df: pd.DataFrame, features: list[str], operations, **kwargs) -> list[str]:
    with np.errstate(invalid="ignore", divide="ignore"):  # np.corrcoef on a constant feature
        selected = pycytominer.feature_select(df, features=features, operation=list(operations), **kwargs)
    return [f for f in features if f in selected.columns]




# --- agreement -----------------------------------------------------------------------------------


def test_default_blocklist_is_pycytominers():
    assert list(DEFAULT_BLOCKLIST) == Blocklist(blocklist_name="default").to_list()


@pytest.mark.parametrize("with_nan", [False, True])
@pytest.mark.parametrize("operations", OPERATION_SETS, ids=lambda ops: "+".join(ops))
def test_synthetic_selection_matches_pycytominer(operations, with_nan):
    df = synthetic_cells(with_nan=with_nan)
    features = feature_columns(df.columns)
    kept = select_features(df, features, operations)
    assert kept == pycytominer_kept(df, features, operations)
    if with_nan or operations != ["drop_na_columns"]:
        assert len(kept) < len(features)  # every operation (set) has something to drop here


def test_each_operation_drops_what_it_should():
    df = synthetic_cells()
    features = feature_columns(df.columns)

    def dropped(op, **kwargs):
        return set(features) - set(select_features(df, features, [op], **kwargs))

    assert dropped("variance_threshold") == {"Cells_Constant", "Cells_Tiny_Variance"}
    assert dropped("frequency_threshold") == {"Cells_Constant", "Cells_Rare_Event", "Cells_Three_Values"}
    assert dropped("drop_na_columns") == {"Nuclei_Holey"}
    assert dropped("blocklist") == {"Nuclei_Correlation_Manders_AGP_DNA", "Nuclei_Granularity_14_RNA"}
    assert dropped("blocklist", blocklist=["Cells_Base_0", "Not_A_Feature"]) == {"Cells_Base_0"}
    assert "Cells_Negative_2" not in dropped("correlation_threshold")  # signed threshold, as pycytominer


@pytest.mark.parametrize("kwargs", [{}, dict(corr_threshold=0.7, unique_cut=0.5, freq_cut=0.5)])
@pytest.mark.parametrize("operations", OPERATION_SETS, ids=lambda ops: "+".join(ops))
def test_real_pooled_cells_match_pycytominer(operations, kwargs):
    """The four fibrosis plates pooled (2,000 cells x 473 common features)."""
    plates = fibrosis_plates()
    if not plates:
        pytest.skip("fibrosis real data not found")
    frames = [pd.read_parquet(p) for p in plates]
    features = [f for f in feature_columns(frames[0].columns) if all(f in fr.columns for fr in frames)]
    pool = pd.concat([fr[features] for fr in frames], ignore_index=True).astype(np.float32)
    kept = select_features(pool, features, operations, **kwargs)
    assert kept == pycytominer_kept(pool, features, operations, **kwargs)


def test_pairwise_complete_correlation_matches_pandas():
    df = synthetic_cells()
    features = feature_columns(df.columns)
    x = df[features].to_numpy()
    expected = df[features].astype(np.float64).corr().to_numpy()
    np.testing.assert_allclose(correlation_matrix(x, np.arange(len(features))), expected, rtol=1e-10, atol=1e-12)


# --- plates --------------------------------------------------------------------------------------


@pytest.fixture
def training_plates(tmp_path):
    paths = []
    for i in range(3):
        df = synthetic_cells(n_cells=300, seed=i)
        if i == 1:
            df = df.drop(columns=["Cells_Base_5"])  # not in every plate
        df["Metadata_Plate"] = f"P{i}"
        paths.append(tmp_path / f"plate{i}.parquet")
        write_profiles(df, paths[-1])
    return paths


def test_fit_on_plates_pools_common_features_and_writes_the_list(tmp_path, training_plates, caplog):
    out = tmp_path / "features.txt"
    with caplog.at_level(logging.INFO, logger="cytoagg.preprocess.feature_select"):
        kept = fit_feature_selection(training_plates, out, feature_select_settings())
    assert out.read_text().splitlines() == kept
    assert "Cells_Base_5" in caplog.text and "not in all 3 plates" in caplog.text
    assert f"{{'{training_plates[1]}': ['Cells_Base_5']}}" in caplog.text  # the plate that lacks it
    for op in OPERATIONS:
        assert f"feature selection: {op} dropped" in caplog.text
    pooled = pd.concat([pd.read_parquet(p) for p in training_plates], ignore_index=True)
    common = [f for f in feature_columns(pooled.columns) if f != "Cells_Base_5"]
    assert kept == pycytominer_kept(pooled, common, OPERATIONS)


def test_more_cells_than_max_cells_uses_a_seeded_sample(tmp_path, training_plates, caplog):
    with caplog.at_level(logging.INFO, logger="cytoagg.preprocess.feature_select"):
        first = fit_feature_selection(training_plates, tmp_path / "a.txt", feature_select_settings(max_cells=500, seed=3))
    assert "sampled 500 of 900 cells" in caplog.text
    assert fit_feature_selection(training_plates, tmp_path / "b.txt", feature_select_settings(max_cells=500, seed=3)) == first
    features = [f for f in feature_columns(pd.read_parquet(training_plates[0]).columns) if f != "Cells_Base_5"]
    pool = pool_cells(training_plates, features, max_cells=500, seed=3)
    assert pool.shape == (500, len(features)) and pool.dtype == np.float32
    assert first == pycytominer_kept(pd.DataFrame(pool, columns=features), features, OPERATIONS)


def test_pool_keeps_every_cell_under_max_cells(training_plates):
    features = ["Cells_Base_0", "Nuclei_Holey"]
    pool = pool_cells(training_plates, features, max_cells=10_000)
    expected = pd.concat([pd.read_parquet(p, columns=features) for p in training_plates]).to_numpy(np.float32)
    np.testing.assert_array_equal(pool, expected)


def test_bad_operation_is_an_input_error_and_writes_nothing(tmp_path, training_plates):
    out = tmp_path / "features.txt"
    with pytest.raises(InputError, match="pca_whatever"):
        fit_feature_selection(training_plates, out, feature_select_settings(operations=["variance_threshold", "pca_whatever"]))
    assert not out.exists()
    with pytest.raises(InputError, match="spearman"):
        select_features(synthetic_cells(), None, ["correlation_threshold"], corr_method="spearman")


def test_blocklist_from_a_file(tmp_path):
    df = synthetic_cells()
    path = tmp_path / "block.txt"
    path.write_text("Cells_Base_1\n\nCells_Base_2\n")
    kept = select_features(df, None, ["blocklist"], blocklist=path)
    assert set(feature_columns(df.columns)) - set(kept) == {"Cells_Base_1", "Cells_Base_2"}
    with pytest.raises(InputError, match="not found"):
        select_features(df, None, ["blocklist"], blocklist=tmp_path / "missing.txt")


# --- dataset.features: common --------------------------------------------------------------------


def test_common_features_of_the_real_fibrosis_plates(tmp_path, caplog):
    """4 real plates feature-selected upstream one by one: 621 to 664 non-metadata columns each, 474 on all
    (SOURCE.md); one of those is a CellProfiler position (Cytoplasm_Location_MaxIntensity_Y_Actin), not a feature."""
    from cytoagg.io.parquet import parquet_columns
    from cytoagg.preprocess.common_features import common_features

    plates = fibrosis_plates()
    with caplog.at_level(logging.INFO, logger="cytoagg.preprocess.common_features"):
        common = common_features(plates, tmp_path / "common.txt", tmp_path / "dropped.csv")
    per_plate = {p.name.removesuffix(".parquet"): feature_columns(parquet_columns(p)) for p in plates}
    assert len(common) == 473 and (tmp_path / "common.txt").read_text().splitlines() == common
    assert common == [f for f in per_plate[plates[0].stem] if all(f in v for v in per_plate.values())]
    dropped = pd.read_csv(tmp_path / "dropped.csv")
    assert dropped.groupby("plate").size().to_dict() == {p: len(v) - 473 for p, v in per_plate.items()}
    assert dropped.n_plates_with_it.between(1, 3).all()
    for plate, names in per_plate.items():  # one line per plate in the log, naming what it loses
        assert f"{plate}: {len(names) - 473} of its {len(names)} features are not on every plate" in caplog.text
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "features common to all 4 plates: 473 (plates have 620 to 663)" in warning[0]


def test_no_common_feature_is_an_input_error(tmp_path):
    from cytoagg.preprocess.common_features import common_features

    a, b = synthetic_cells()[["Cells_Base_0"]], synthetic_cells()[["Cells_Base_1"]]
    for name, df in (("a", a), ("b", b)):
        write_profiles(df.assign(Metadata_Plate=name), tmp_path / f"{name}.parquet")
    with pytest.raises(InputError, match="no feature is common to all 2 plates"):
        common_features([tmp_path / "a.parquet", tmp_path / "b.parquet"], tmp_path / "c.txt", tmp_path / "d.csv")
    assert not (tmp_path / "c.txt").exists()


def test_selection_chooses_among_the_candidates(tmp_path, training_plates):
    """features: common: feature selection never picks a feature outside the candidates (those of every plate)."""
    candidates = ["Cells_Base_0", "Cells_Base_1", "Cells_Base_2", "Cytoplasm_Copy_0", "Nuclei_Sum_01"]
    kept = fit_feature_selection(training_plates, tmp_path / "f.txt", feature_select_settings(), candidates=candidates)
    assert kept and set(kept) <= set(candidates)
    pooled = pd.concat([pd.read_parquet(p) for p in training_plates], ignore_index=True)
    assert kept == pycytominer_kept(pooled, [f for f in feature_columns(pooled.columns) if f in candidates], OPERATIONS)
