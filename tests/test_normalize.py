"""Per-plate normalization: agreement with pycytominer 1.7.1, streaming, and the edge cases."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import cytoagg.preprocess.normalize as normalize_module
from cytoagg.io.columns import feature_columns, metadata_columns
from cytoagg.io.files import InputError
from cytoagg.io.parquet import read_profiles, to_arrow, write_profiles
from cytoagg.preprocess.normalize import normalize_plate
from helpers import annotation, normalize_settings
from cytoagg.preprocess.statistics import PCA_COLUMN_PREFIX, apply_normalizer, center_wells, fit_normalizer
from realdata import fibrosis_plates


def normalize(src, out, *, threads=None, well_col="Metadata_Well", **kw):
    """normalize_plate with keyword settings over the schema's defaults."""
    return normalize_plate(src, out, normalize_settings(annotation=annotation(well_col=well_col), **kw), threads=threads)

pycytominer = pytest.importorskip("pycytominer")

NEGCON = "Metadata_broad_sample == 'DMSO'"
METHODS = [
    ("standardize", None),
    ("robustize", None),
    ("mad_robustize", None),
    ("spherize", "ZCA"),
    ("spherize", "PCA"),
    ("spherize", "ZCA-cor"),
    ("spherize", "PCA-cor"),
]
# Our output is float32: rounding alone is up to 2**-24 ~ 6e-8 of a value, far inside rtol=1e-5.
# Values near 0 have no relative precision to speak of: there the float64 differences in the fitted
# center (summation order; SVD of the cells vs of their QR factor) dominate, so atol=1e-6 in output
# units (z-scores / whitened units of order 1; about 10 float32 steps at 1.0) bounds those.
RTOL, ATOL = 1e-5, 1e-6


# --- data --------------------------------------------------------------------------------------


def synthetic_plate(n_cells=300, n_features=20, seed=0, constant=False, nan_fraction=0.0) -> pd.DataFrame:
    """Correlated features with very different scales and offsets, 10 wells, 3 perturbations."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(n_features, n_features))
    x = rng.normal(size=(n_cells, n_features)) @ mixing * rng.uniform(0.5, 50, n_features)
    x += rng.uniform(-100, 100, n_features)
    if nan_fraction:
        x[rng.random(x.shape) < nan_fraction] = np.nan
    features = pd.DataFrame(x, columns=[f"Cells_Intensity_F{i:02d}" for i in range(n_features)])
    if constant:
        features["Nuclei_AreaShape_Constant"] = 7.0
    meta = pd.DataFrame({
        "Metadata_Plate": "P1",
        "Metadata_Well": np.repeat([f"A{i:02d}" for i in range(1, 11)], -(-n_cells // 10))[:n_cells],
        "Metadata_broad_sample": np.tile(["DMSO", "cpd_a", "cpd_b"], n_cells)[:n_cells],
    })
    return pd.concat([meta, features], axis=1)


def write_plate(df: pd.DataFrame, path: Path, row_group_size: int | None = None) -> Path:
    if row_group_size is None:
        write_profiles(df, path)
    else:
        pq.write_table(to_arrow(df), path, row_group_size=row_group_size)
    return path




def real_plate_in_our_layout(src: Path, dst: Path) -> Path:
    """What ingest makes of an upstream plate: metadata as strings, features float32, nothing else."""
    raw = pd.read_parquet(src)
    meta = raw[metadata_columns(raw.columns)].astype(object)
    meta = meta.apply(lambda col: col.map(lambda v: None if v is None or v != v else str(v)))
    return write_plate(pd.concat([meta, raw[feature_columns(raw.columns)]], axis=1), dst)


# --- comparing with pycytominer ------------------------------------------------------------------


def pycytominer_reference(path: Path, features: list[str], method: str, samples: str, spherize_method=None):
    """pycytominer.normalize on exactly the values we read (float32 on disk, computed in float64)."""
    meta, x, _ = read_profiles(path, features)
    df = pd.concat([meta, pd.DataFrame(x.astype(np.float64), columns=features)], axis=1)
    kwargs = {"spherize_method": spherize_method} if method == "spherize" else {}
    return pycytominer.normalize(df, features=features, meta_features=list(meta.columns), method=method,
                                 samples=samples, **kwargs)


def assert_matches_pycytominer(out: Path, ref: pd.DataFrame, spherize_method=None):
    meta, y, names = read_profiles(out, feature_columns(pq.read_schema(out).names))
    pd.testing.assert_frame_equal(meta, ref[list(meta.columns)].reset_index(drop=True), check_dtype=False)
    if spherize_method in ("PCA", "PCA-cor"):
        assert names == [f"{PCA_COLUMN_PREFIX}{i}" for i in range(1, len(names) + 1)]
        expected = ref[[f"PC{i}" for i in range(1, len(names) + 1)]].to_numpy()
        # A principal axis has no intrinsic sign: align each of pycytominer's to ours.
        expected = expected * np.sign((expected * y).sum(axis=0))
    else:
        expected = ref[names].to_numpy()
    np.testing.assert_allclose(y, expected, rtol=RTOL, atol=ATOL)
    return names


# --- agreement -----------------------------------------------------------------------------------


@pytest.mark.parametrize("samples", ["all", NEGCON])
@pytest.mark.parametrize("method,spherize_method", METHODS)
def test_synthetic_plate_matches_pycytominer(tmp_path, method, spherize_method, samples):
    per_column = method != "spherize"
    # pycytominer's spherize fails on NaN and on a constant feature; its other methods handle NaN.
    df = synthetic_plate(constant=per_column, nan_fraction=0.02 if per_column else 0.0)
    src = write_plate(df, tmp_path / "plate.parquet")
    features = feature_columns(df.columns)
    summary = normalize(src, tmp_path / "out.parquet", method=method, samples=samples,
                              spherize_method=spherize_method or "ZCA")
    ref = pycytominer_reference(src, features, method, samples, spherize_method)
    names = assert_matches_pycytominer(tmp_path / "out.parquet", ref, spherize_method)
    assert summary["n_fit_cells"] == (300 if samples == "all" else 100)
    if per_column:  # the constant feature is dropped, the others all kept
        assert summary["dropped_features"] == ["Nuclei_AreaShape_Constant"]
        assert names == features[:-1]


@pytest.fixture(scope="module")
def real_plates(tmp_path_factory):
    plates = fibrosis_plates()
    if not plates:
        pytest.skip("fibrosis real data not found")
    folder = tmp_path_factory.mktemp("real")
    return [real_plate_in_our_layout(p, folder / p.name) for p in plates]


@pytest.mark.parametrize("samples", ["all", "Metadata_cell_type == 'healthy'"])
@pytest.mark.parametrize("method,spherize_method", METHODS)
def test_real_plates_match_pycytominer(tmp_path, real_plates, method, spherize_method, samples):
    """Fibrosis plates (455-607 cells x ~630 features); the healthy cells stand in for negative controls.

    Spherize on two plates only, to keep the file fast (its SVDs dominate the run time).
    """
    for src in real_plates[:2] if method == "spherize" else real_plates:
        features = feature_columns(pq.read_schema(src).names)
        if method == "spherize":
            meta, x, _ = read_profiles(src, features)
            fit = np.ones(len(meta), bool) if samples == "all" else meta.eval(samples).to_numpy()
            # pycytominer's spherize cannot take a feature constant on the fit cells (we drop it).
            varying = [f for f, spread in zip(features, np.ptp(x[fit], axis=0)) if spread > 0]
            if spherize_method.startswith("PCA"):
                # With fewer cells than features the trailing components span an arbitrary basis of
                # the null space; on 60 features every component is defined (up to sign).
                varying = varying[:60]
            subset = pd.concat([meta, pd.DataFrame(x, columns=features)[varying]], axis=1)
            src, features = write_plate(subset, tmp_path / src.name), varying
        out = tmp_path / f"out_{src.name}"
        normalize(src, out, method=method, samples=samples, spherize_method=spherize_method or "ZCA")
        assert_matches_pycytominer(out, pycytominer_reference(src, features, method, samples, spherize_method),
                                   spherize_method)


def test_well_centering_subtracts_each_wells_mean(tmp_path):
    df = synthetic_plate(nan_fraction=0.01).sample(frac=1, random_state=0)  # wells not contiguous
    src = write_plate(df, tmp_path / "plate.parquet")
    features = feature_columns(df.columns)
    normalize(src, tmp_path / "out.parquet", samples=NEGCON, well_center=True, memory_mb=0.05)
    meta, y, _ = read_profiles(tmp_path / "out.parquet", features)
    ref = pycytominer_reference(src, features, "mad_robustize", NEGCON)
    expected = ref[features] - ref.groupby("Metadata_Well")[features].transform("mean")
    np.testing.assert_allclose(y, expected.to_numpy(), rtol=RTOL, atol=ATOL)
    well_means = pd.DataFrame(y, columns=features).groupby(meta["Metadata_Well"].to_numpy()).mean()
    np.testing.assert_allclose(well_means.to_numpy(), 0, atol=1e-5)


# --- streaming -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method,spherize_method,samples,well_center", [
    ("mad_robustize", None, NEGCON, True),
    ("robustize", None, "all", False),
    ("standardize", None, NEGCON, False),
    ("spherize", "ZCA-cor", NEGCON, True),
    ("spherize", "PCA", "all", False),
])
def test_small_memory_streams_to_the_same_output(tmp_path, method, spherize_method, samples, well_center):
    df = synthetic_plate(n_cells=2001, nan_fraction=0.0 if method == "spherize" else 0.01)
    src = write_plate(df, tmp_path / "plate.parquet", row_group_size=500)
    kwargs = dict(method=method, samples=samples, well_center=well_center, spherize_method=spherize_method or "ZCA")
    small = normalize(src, tmp_path / "small.parquet", memory_mb=0.1, **kwargs)
    large = normalize(src, tmp_path / "large.parquet", memory_mb=1024, **kwargs)
    assert small["n_column_batches"] > large["n_column_batches"] >= 1
    assert small["n_row_batches"] > large["n_row_batches"] >= 1
    assert small["row_group_reads"] > 1 == large["row_group_reads"]  # a row group larger than the memory
    meta_s, y_small, _ = read_profiles(tmp_path / "small.parquet")
    meta_l, y_large, _ = read_profiles(tmp_path / "large.parquet")
    pd.testing.assert_frame_equal(meta_s, meta_l)
    if method == "spherize":  # the QR factor is accumulated over different row blocks: rounding only
        np.testing.assert_allclose(y_small, y_large, rtol=1e-5, atol=1e-6)
    else:  # exact median/MAD/std over whole columns, whatever the batch width
        np.testing.assert_array_equal(y_small, y_large)
    assert pq.ParquetFile(tmp_path / "small.parquet").metadata.num_row_groups > 1


def test_in_memory_core_equals_the_plate_function(tmp_path):
    df = synthetic_plate(nan_fraction=0.02)
    src = write_plate(df, tmp_path / "plate.parquet")
    features = feature_columns(df.columns)
    normalize(src, tmp_path / "out.parquet", method="robustize", well_center=True)
    _, y, _ = read_profiles(tmp_path / "out.parquet", features)
    x = df[features].to_numpy(np.float32)
    expected = center_wells(apply_normalizer(x, fit_normalizer(x, "robustize")), df["Metadata_Well"])
    np.testing.assert_array_equal(y, expected.astype(np.float32))


# --- edge cases ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["standardize", "robustize", "mad_robustize", "spherize"])
def test_constant_and_all_nan_features_are_dropped_with_a_warning(tmp_path, caplog, method):
    df = synthetic_plate(constant=True)
    df["Cells_Texture_AllNaN"] = np.nan
    df["Cells_Count_Mostly_Zero"] = np.where(np.arange(len(df)) % 10 == 0, 1.0, 0.0)  # MAD and IQR 0
    src = write_plate(df, tmp_path / "plate.parquet")
    with caplog.at_level(logging.WARNING, logger="cytoagg.preprocess.normalize"):
        summary = normalize(src, tmp_path / "out.parquet", method=method)
    dropped = {"Nuclei_AreaShape_Constant", "Cells_Texture_AllNaN"}
    if method in ("robustize", "mad_robustize"):
        dropped.add("Cells_Count_Mostly_Zero")
    assert set(summary["dropped_features"]) == dropped
    assert all(name in caplog.text for name in dropped)
    _, y, names = read_profiles(tmp_path / "out.parquet")
    assert not dropped & set(names)
    assert y.shape[1] == summary["n_features_out"] == summary["n_features_in"] - len(dropped)
    assert np.isfinite(y).all()
    assert np.abs(y).max() < 100  # nothing divided by epsilon


def test_nan_and_inf_stay_missing_and_do_not_move_the_statistics(tmp_path):
    df = synthetic_plate()
    clean = df.copy()
    col = "Cells_Intensity_F03"
    holes = np.arange(0, len(df), 7)
    df.loc[holes[::2], col] = np.nan
    df.loc[holes[1::2], col] = np.inf
    src = write_plate(df, tmp_path / "plate.parquet")
    normalize(src, tmp_path / "out.parquet", method="mad_robustize")
    _, y, names = read_profiles(tmp_path / "out.parquet")
    j = names.index(col)
    assert np.isnan(y[holes, j]).all() and np.isfinite(np.delete(y, holes, axis=0)).all()
    values = clean[col].to_numpy(np.float32).astype(np.float64)
    kept = np.delete(values, holes)
    median = np.median(kept)
    expected = (kept - median) / (1.4826 * np.median(np.abs(kept - median)) + 1e-18)
    np.testing.assert_allclose(np.delete(y[:, j], holes), expected, rtol=RTOL, atol=ATOL)
    others = [f for f in names if f != col]  # other features unaffected by the holes
    normalize(write_plate(clean, tmp_path / "clean.parquet"), tmp_path / "clean_out.parquet")
    clean_y = read_profiles(tmp_path / "clean_out.parquet", others)[1]
    np.testing.assert_array_equal(clean_y, y[:, [names.index(f) for f in others]])


def test_spherize_fits_on_complete_cells_and_leaves_incomplete_ones_nan(tmp_path):
    df = synthetic_plate()
    features = feature_columns(df.columns)
    holes = [3, 50, 51, 200]
    df.loc[holes, features[5]] = np.nan
    src = write_plate(df, tmp_path / "plate.parquet")
    summary = normalize(src, tmp_path / "out.parquet", method="spherize", spherize_method="ZCA-cor")
    assert summary["n_fit_cells"] == len(df) - len(holes)
    _, y, _ = read_profiles(tmp_path / "out.parquet", features)
    assert np.isnan(y[holes]).all()
    meta, x, _ = read_profiles(src, features)  # the float32 values on disk
    complete = pd.concat([meta, pd.DataFrame(x.astype(np.float64), columns=features)], axis=1)
    complete = complete.drop(index=holes).reset_index(drop=True)
    ref = pycytominer.normalize(complete, features=features, meta_features=list(meta.columns),
                                method="spherize", spherize_method="ZCA-cor")
    np.testing.assert_allclose(np.delete(y, holes, axis=0), ref[features].to_numpy(), rtol=RTOL, atol=ATOL)


def test_spherize_rank_deficient_is_an_input_error(tmp_path):
    df = synthetic_plate()
    features = feature_columns(df.columns)
    df[features] = df[features].round(0)  # integers: exact in float32, so the dependency below is exact
    df["Cells_Intensity_Combination"] = 2 * df["Cells_Intensity_F00"] - df["Cells_Intensity_F01"]
    src = write_plate(df, tmp_path / "plate.parquet")
    with pytest.raises(InputError, match="rank"):
        normalize(src, tmp_path / "out.parquet", method="spherize", spherize_method="ZCA")
    assert not (tmp_path / "out.parquet").exists()


def test_query_matching_no_cell_is_an_input_error_naming_it(tmp_path):
    src = write_plate(synthetic_plate(), tmp_path / "plate.parquet")
    query = "Metadata_broad_sample == 'no_such_compound'"
    with pytest.raises(InputError, match="no_such_compound"):
        normalize(src, tmp_path / "out.parquet", samples=query)
    with pytest.raises(InputError, match="Metadata_Nope"):
        normalize(src, tmp_path / "out.parquet", samples="Metadata_Nope == 'x'")
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="zscore"), "zscore"),
    (dict(method="spherize", spherize_method="ICA"), "ICA"),
    (dict(method="spherize", spherize_method="ZCA-cor", spherize_center=False), "spherize_center"),
    (dict(method="standardize", epsilon=1e-6), "epsilon"),
    (dict(well_center=True, well_col="Metadata_Nope"), "Metadata_Nope"),
])
def test_bad_settings_are_input_errors(tmp_path, kwargs, match):
    src = write_plate(synthetic_plate(), tmp_path / "plate.parquet")
    with pytest.raises(InputError, match=match):
        normalize(src, tmp_path / "out.parquet", **kwargs)


def test_method_none_keeps_every_value_and_feature(tmp_path, caplog):
    """Plates normalized upstream: values as ingested (float32), constant and all-NaN features kept, bookkeeping
    left out, +-inf read as NaN as every method does; streamed in small memory to the same file."""
    df = synthetic_plate(constant=True, nan_fraction=0.01)
    df["Cells_Texture_AllNaN"] = np.nan
    df.loc[5, "Cells_Intensity_F01"] = np.inf
    df["Cells_Number_Object_Number"] = np.arange(len(df), dtype=float)
    src = write_plate(df, tmp_path / "plate.parquet", row_group_size=70)
    with caplog.at_level(logging.INFO, logger="cytoagg.preprocess.normalize"):
        summary = normalize(src, tmp_path / "out.parquet", method="none", memory_mb=0.05)
    features = feature_columns(df.columns)
    meta, y, names = read_profiles(tmp_path / "out.parquet")
    assert names == features and summary["dropped_features"] == [] and summary["n_fit_cells"] == 0
    expected = df[features].to_numpy(np.float32)
    expected[np.isinf(expected)] = np.nan
    np.testing.assert_array_equal(y, expected)
    pd.testing.assert_frame_equal(meta, df[metadata_columns(df.columns)].reset_index(drop=True), check_dtype=False)
    assert "method none" in caplog.text
    normalize(src, tmp_path / "centered.parquet", method="none", well_center=True)
    _, centered, _ = read_profiles(tmp_path / "centered.parquet", features[:3])
    means = pd.DataFrame(centered).groupby(df["Metadata_Well"].to_numpy()).mean()
    np.testing.assert_allclose(means.to_numpy(), 0, atol=1e-4)


@pytest.mark.parametrize("kwargs", [dict(samples=NEGCON), dict(epsilon=1e-6)])
def test_method_none_refuses_settings_it_would_ignore(tmp_path, kwargs):
    src = write_plate(synthetic_plate(), tmp_path / "plate.parquet")
    with pytest.raises(InputError, match="method none"):
        normalize(src, tmp_path / "out.parquet", method="none", **kwargs)
    assert not (tmp_path / "out.parquet").exists()


def test_failure_midway_leaves_no_output(tmp_path, monkeypatch):
    src = write_plate(synthetic_plate(n_cells=1000), tmp_path / "plate.parquet", row_group_size=100)
    out = tmp_path / "out.parquet"
    out.write_bytes(b"previous output")
    real_transform, calls = normalize_module.transform_block, []

    def failing_transform(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the third row block of the output
            raise RuntimeError("disk full")
        return real_transform(*args, **kwargs)

    monkeypatch.setattr(normalize_module, "transform_block", failing_transform)
    with pytest.raises(RuntimeError, match="disk full"):
        normalize(src, out, memory_mb=0.05)
    assert out.read_bytes() == b"previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet", "plate.parquet"]


def test_bookkeeping_columns_are_left_out(tmp_path, caplog):
    df = synthetic_plate()
    df["Cells_Location_Center_X"] = np.arange(len(df), dtype=float)
    src = write_plate(df, tmp_path / "plate.parquet")
    with caplog.at_level(logging.WARNING, logger="cytoagg.preprocess.normalize"):
        summary = normalize(src, tmp_path / "out.parquet")
    names = pq.read_schema(tmp_path / "out.parquet").names
    assert "Cells_Location_Center_X" not in names and "Cells_Location_Center_X" in caplog.text
    assert summary["dropped_columns"] == ["Cells_Location_Center_X"]
    assert names[:3] == ["Metadata_Plate", "Metadata_Well", "Metadata_broad_sample"]
    assert pq.read_schema(tmp_path / "out.parquet").field("Cells_Intensity_F00").type == pa.float32()


@pytest.mark.parametrize("content", [b"Metadata_Well,Cells_X\nA01,1\n", None])
def test_not_parquet_or_truncated_input_is_an_input_error_naming_it(tmp_path, content):
    src = write_plate(synthetic_plate(), tmp_path / "plate.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(content if content is not None else src.read_bytes()[:-100])  # None: the footer cut off
    with pytest.raises(InputError, match=str(bad)):
        normalize(bad, tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()


def test_threads_do_not_change_the_output(tmp_path):
    src = write_plate(synthetic_plate(n_cells=3000, nan_fraction=0.01), tmp_path / "plate.parquet", row_group_size=700)
    one = normalize(src, tmp_path / "one.parquet", threads=1, memory_mb=0.2)
    two = normalize(src, tmp_path / "two.parquet", threads=2, memory_mb=0.2)
    assert one["n_row_batches"] > 4 and two["threads"] == 2
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "one.parquet"), pd.read_parquet(tmp_path / "two.parquet"))


@pytest.mark.parametrize("method", ["robustize", "mad_robustize", "standardize"])
def test_column_stats_equal_numpy_and_scipy(method):
    """Sorted-column statistics against numpy's nan-functions and scipy's MAD (pycytominer's definitions)."""
    from scipy.stats import median_abs_deviation

    from cytoagg.preprocess.statistics import column_stats

    rng = np.random.default_rng(1)
    for n in [2, 3, 4, 5, 10, 11, 1000, 1001]:
        for kind in ["normal", "ties", "nan_inf"]:
            x = rng.normal(3, 2, n).astype(np.float32)
            if kind == "ties":
                x = np.round(x).astype(np.float32)
            if kind == "nan_inf" and n > 4:
                x[:: 3] = np.nan
                x[1] = np.inf
                x[2] = -np.inf
            finite = x[np.isfinite(x)].astype(np.float64)
            center, scale, usable = column_stats(x.copy(), method, 1e-18 if method == "mad_robustize" else None)
            if method == "standardize":
                expected = finite.mean(), finite.std()
            elif method == "robustize":
                q25, q75 = np.percentile(finite, [25, 75])
                expected = np.median(finite), q75 - q25
            else:
                expected = np.median(finite), median_abs_deviation(finite, scale=1 / 1.4826) + 1e-18
            if usable:
                assert center == expected[0]
                assert scale == expected[1] if method != "standardize" else np.isclose(scale, expected[1], rtol=1e-12)
            else:
                assert len(finite) < 2 or expected[1] <= 1e-18 or np.ptp(finite) == 0
