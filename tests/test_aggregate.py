"""The non-learned baselines of the aggregate step; here ``filtered_mean``, the mean of the cells in a quantile
range of one feature (the others are checked against pycytominer and copairs elsewhere)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from helpers import annotation, filtered_mean_settings
from cytoagg.cli import main
from cytoagg.io.files import InputError
from cytoagg.io.parquet import write_profiles
from cytoagg.profiles.aggregate import aggregate_plate

ANN = annotation()
AREA = "Cells_AreaShape_Area"
FEATURES = ["Cells_Intensity_MeanIntensity_DNA", "Nuclei_Texture_Contrast_ER_3_00_256"]


def plate(tmp_path, n_wells=6, seed=0, area_nan=()) -> tuple[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    counts = rng.integers(5, 30, n_wells)
    wells = np.repeat([f"A{i + 1:02d}" for i in range(n_wells)], counts)
    df = pd.DataFrame({
        "Metadata_Plate": "P1", "Metadata_Well": wells,
        "Metadata_broad_sample": np.repeat([f"C{i % 3}" for i in range(n_wells)], counts),
        AREA: rng.gamma(3.0, 1.0, len(wells)),
        **{f: rng.normal(size=len(wells)) for f in FEATURES},
    })
    df.loc[list(area_nan), AREA] = np.nan
    path = str(tmp_path / "P1.parquet")
    write_profiles(df, path)
    return path, pd.read_parquet(path)  # as stored (float32)


def by_hand(df: pd.DataFrame, features, lower, upper) -> pd.DataFrame:
    values = df[AREA].to_numpy(dtype=np.float64)
    lo, hi = np.nanquantile(values, [lower, upper])
    kept = df[(values >= lo) & (values <= hi)]
    return kept.groupby("Metadata_Well")[features].agg(["mean", "size"])


@pytest.mark.parametrize("features", [FEATURES, [AREA, *FEATURES]], ids=["filter feature not a profile feature", "one of them"])
@pytest.mark.parametrize("lower, upper", [(0.25, 1.0), (0.0, 0.5), (0.1, 0.9)])
def test_filtered_mean_is_the_mean_of_the_cells_in_the_quantile_range(tmp_path, features, lower, upper):
    path, df = plate(tmp_path)
    out = {m: tmp_path / f"{m}.parquet" for m in ("mean", "filtered_mean")}
    aggregate_plate(path, features, out, "P1", ANN, filtered=filtered_mean_settings(lower_quantile=lower, upper_quantile=upper))
    got = pd.read_parquet(out["filtered_mean"]).set_index("Metadata_Well")
    want = by_hand(df, features, lower, upper)
    assert list(got.columns) == ["Metadata_Plate", "Metadata_broad_sample", "Metadata_n_cells", *features]
    np.testing.assert_allclose(got[features].to_numpy(), want.xs("mean", axis=1, level=1).to_numpy(), rtol=1e-5)
    assert got["Metadata_n_cells"].astype(int).tolist() == want[(features[0], "size")].tolist()
    assert (got["Metadata_n_cells"].astype(int) < df.groupby("Metadata_Well").size()).any()
    mean = pd.read_parquet(out["mean"]).set_index("Metadata_Well")  # the mean keeps every cell
    np.testing.assert_allclose(mean[features].to_numpy(), df.groupby("Metadata_Well")[features].mean().to_numpy(), rtol=1e-5)


def test_wells_with_no_cell_in_range_are_left_out(tmp_path, caplog):
    path, df = plate(tmp_path)
    small = df["Metadata_Well"] == "A02"
    df.loc[small, AREA] = df[AREA].min() / 10  # every cell of A02 is below the plate's 25th percentile
    write_profiles(df, path)
    out = tmp_path / "f.parquet"
    with caplog.at_level("WARNING"):
        aggregate_plate(path, FEATURES, {"filtered_mean": out}, "P1", ANN, filtered=filtered_mean_settings())
    assert "A02" not in set(pd.read_parquet(out)["Metadata_Well"]) and len(pd.read_parquet(out)) == 5
    assert "1 well(s) have no cell with Cells_AreaShape_Area in its quantile range" in caplog.text and "A02" in caplog.text


def test_cells_without_a_filter_value_stay_in_the_other_baselines(tmp_path):
    path, df = plate(tmp_path, area_nan=[0, 3, 40])
    out = {m: tmp_path / f"{m}.parquet" for m in ("mean", "filtered_mean")}
    aggregate_plate(path, FEATURES, out, "P1", ANN, filtered=filtered_mean_settings())
    mean = pd.read_parquet(out["mean"])
    assert mean["Metadata_n_cells"].astype(int).sum() == len(df)
    np.testing.assert_allclose(mean[FEATURES].to_numpy(), df.groupby("Metadata_Well")[FEATURES].mean().to_numpy(), rtol=1e-5)
    got = pd.read_parquet(out["filtered_mean"])
    want = by_hand(df.dropna(subset=[AREA]), FEATURES, 0.25, 1.0)
    np.testing.assert_allclose(got[FEATURES].to_numpy(), want.xs("mean", axis=1, level=1).to_numpy(), rtol=1e-5)


def test_bad_settings_are_errors_naming_the_key(tmp_path):
    path, _ = plate(tmp_path)
    out = {"filtered_mean": tmp_path / "f.parquet"}
    with pytest.raises(InputError, match="evaluate.filtered_mean.feature 'Cells_AreaShape_Nope'"):
        aggregate_plate(path, FEATURES, out, "P1", ANN, filtered=filtered_mean_settings(feature="Cells_AreaShape_Nope"))
    with pytest.raises(InputError, match="lower_quantile"):
        aggregate_plate(path, FEATURES, out, "P1", ANN, filtered=filtered_mean_settings(lower_quantile=0.5, upper_quantile=0.5))
    with pytest.raises(InputError, match="needs the evaluate.filtered_mean settings"):
        aggregate_plate(path, FEATURES, out, "P1", ANN)
    assert not out["filtered_mean"].exists()


def test_cli_reads_the_filtered_mean_settings(tmp_path):
    path, df = plate(tmp_path)
    (tmp_path / "features.txt").write_text("\n".join(FEATURES) + "\n")
    params = {"annotation": ANN.to_params(), "filtered_mean": filtered_mean_settings(lower_quantile=0.5).to_params()}
    rc = main(["aggregate", "--normalized", path, "--features", str(tmp_path / "features.txt"), "--plate", "P1",
               "--out", "mean", str(tmp_path / "m.parquet"), "--out", "filtered_mean", str(tmp_path / "f.parquet"),
               "--params", json.dumps(params)])
    assert rc == 0
    got = pd.read_parquet(tmp_path / "f.parquet")
    assert got["Metadata_n_cells"].astype(int).sum() == by_hand(df, FEATURES, 0.5, 1.0)[(FEATURES[0], "size")].sum()
    params["filtered_mean"]["lower"] = 0.1
    assert main(["aggregate", "--normalized", path, "--features", str(tmp_path / "features.txt"), "--plate", "P1",
                 "--out", "mean", str(tmp_path / "m.parquet"), "--params", json.dumps(params)]) == 2
