"""evaluate_plate: controls, singletons, pass-through columns and input errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytoagg.evaluate import evaluate_plate
from cytoagg.io import InputError, write_profiles
from cytoagg.metrics import average_precision

FEATURES = ["Cells_A", "Cytoplasm_B", "Nuclei_C", "Nuclei_D"]
# c1 x3, c2 x2, c3 x1 (no replicate), DMSO x3
PERTURBATIONS = ["c1", "DMSO", "c1", "c2", "c3", "DMSO", "c1", "c2", "DMSO"]


def plate_frame(plate="P1", seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "Metadata_Plate": plate,
            "Metadata_Well": [f"A{i + 1:02d}" for i in range(len(PERTURBATIONS))],
            "Metadata_broad_sample": PERTURBATIONS,
            "Metadata_control_type": ["negcon" if p == "DMSO" else "trt" for p in PERTURBATIONS],
            "Metadata_dose": "10",
        }
    )
    for f in FEATURES:
        df[f] = rng.normal(size=len(df)).astype(np.float32)
    return df


@pytest.fixture
def plate_path(tmp_path):
    path = tmp_path / "P1.parquet"
    write_profiles(plate_frame(), path)
    return path


def test_negcon_excluded_and_singletons_counted(plate_path, tmp_path):
    out = tmp_path / "ap" / "P1.parquet"
    messages = []
    got = evaluate_plate(
        plate_path, out, perturbation_col="Metadata_broad_sample", negcon_value="DMSO", log=messages.append
    )
    assert messages and "plate P1" in messages[0]
    pd.testing.assert_frame_equal(pd.read_parquet(out), got, check_dtype=False)
    assert list(got.columns) == [
        "plate", "well", "perturbation", "average_precision", "precision_at_r", "n_positives",
        "n_candidates", "Metadata_control_type", "Metadata_dose",
    ]  # fmt: skip
    assert got["well"].tolist() == ["A01", "A03", "A04", "A05", "A07", "A08"]  # no DMSO, input order
    assert got["perturbation"].tolist() == ["c1", "c1", "c2", "c3", "c1", "c2"]
    assert got["plate"].eq("P1").all()
    # ranked among the 6 treated wells only
    assert got["n_candidates"].eq(5).all()
    assert got["n_positives"].tolist() == [2, 2, 1, 0, 2, 1]
    singleton = got[got["perturbation"] == "c3"].iloc[0]
    assert singleton["n_positives"] == 0 and np.isnan(singleton["average_precision"])
    assert got.loc[got["n_positives"] > 0, "average_precision"].notna().all()

    df = plate_frame()
    treated = df["Metadata_broad_sample"] != "DMSO"
    expected = average_precision(df.loc[treated, FEATURES].to_numpy(), df.loc[treated, "Metadata_broad_sample"])
    np.testing.assert_allclose(got["average_precision"], expected["average_precision"], atol=1e-12)


def test_negcon_as_negatives(plate_path, tmp_path):
    got = evaluate_plate(
        plate_path,
        tmp_path / "ap.parquet",
        perturbation_col="Metadata_broad_sample",
        negcon_col="Metadata_control_type",
        negcon_value="negcon",
        negcon_as_negatives=True,
    )
    assert got["well"].tolist() == ["A01", "A03", "A04", "A05", "A07", "A08"]
    # positives (same compound) + the 3 DMSO wells; other compounds are not ranked
    assert got["n_candidates"].tolist() == [5, 5, 4, 3, 5, 4]
    df = plate_frame()
    dmso = (df["Metadata_control_type"] == "negcon").to_numpy()
    labels = np.where(dmso, [f"ctrl{i}" for i in range(len(df))], df["Metadata_broad_sample"])
    expected = average_precision(df[FEATURES].to_numpy(), labels, query_mask=~dmso, negative_mask=dmso)
    np.testing.assert_allclose(got["average_precision"], expected["average_precision"], atol=1e-12)
    assert "Metadata_control_type" in got.columns


def test_without_negcon_every_well_is_a_query(plate_path, tmp_path):
    got = evaluate_plate(plate_path, tmp_path / "ap.parquet", perturbation_col="Metadata_broad_sample")
    assert len(got) == len(PERTURBATIONS)
    assert got["n_candidates"].eq(len(PERTURBATIONS) - 1).all()
    assert got.loc[got["perturbation"] == "DMSO", "n_positives"].eq(2).all()


def test_plates_are_evaluated_separately(tmp_path):
    path = tmp_path / "two.parquet"
    write_profiles(pd.concat([plate_frame("P1", 0), plate_frame("P2", 1)], ignore_index=True), path)
    got = evaluate_plate(path, tmp_path / "ap.parquet", perturbation_col="Metadata_broad_sample", negcon_value="DMSO")
    assert got["plate"].tolist() == ["P1"] * 6 + ["P2"] * 6
    assert got["n_candidates"].eq(5).all()  # never ranked against the other plate


@pytest.mark.parametrize(
    ("kwargs", "column"),
    [
        ({"perturbation_col": "Metadata_compound"}, "Metadata_compound"),
        ({"perturbation_col": "Metadata_broad_sample", "negcon_col": "Metadata_ctrl", "negcon_value": "x"}, "Metadata_ctrl"),
        ({"perturbation_col": "Metadata_broad_sample", "well_col": "Metadata_Site"}, "Metadata_Site"),
    ],
)
def test_missing_column_names_file_and_column(plate_path, tmp_path, kwargs, column):
    out = tmp_path / "ap.parquet"
    with pytest.raises(InputError, match=column) as err:
        evaluate_plate(plate_path, out, **kwargs)
    assert str(plate_path) in str(err.value)
    assert not out.exists()


def test_non_finite_values_name_the_wells(tmp_path):
    df = plate_frame()
    df.loc[2, "Nuclei_C"] = np.nan
    df.loc[5, "Cells_A"] = np.inf
    path = tmp_path / "bad.parquet"
    write_profiles(df, path)
    with pytest.raises(InputError, match="non-finite") as err:
        evaluate_plate(path, tmp_path / "ap.parquet", perturbation_col="Metadata_broad_sample")
    assert str(path) in str(err.value) and "P1/A03" in str(err.value) and "P1/A06" in str(err.value)


def test_zero_profiles_and_missing_perturbations_are_errors(tmp_path):
    df = plate_frame()
    df.loc[3, FEATURES] = 0.0
    path = tmp_path / "zero.parquet"
    write_profiles(df, path)
    with pytest.raises(InputError, match="all-zero profile.*P1/A04"):
        evaluate_plate(path, tmp_path / "ap.parquet", perturbation_col="Metadata_broad_sample")
    df = plate_frame()
    df.loc[4, "Metadata_broad_sample"] = None
    write_profiles(df, path)
    with pytest.raises(InputError, match="missing in 1 well.*P1/A05"):
        evaluate_plate(path, tmp_path / "ap.parquet", perturbation_col="Metadata_broad_sample")


def test_negcon_settings_are_checked(plate_path, tmp_path):
    with pytest.raises(InputError, match="negcon_value"):
        evaluate_plate(plate_path, tmp_path / "ap.parquet", perturbation_col="Metadata_broad_sample", negcon_as_negatives=True)
    with pytest.raises(InputError, match="no negative-control well"):
        evaluate_plate(
            plate_path,
            tmp_path / "ap.parquet",
            perturbation_col="Metadata_broad_sample",
            negcon_value="dmso",
            negcon_as_negatives=True,
        )


def test_repeated_wells_are_an_error(tmp_path):
    df = plate_frame()
    df.loc[1, "Metadata_Well"] = "A01"
    path = tmp_path / "dup.parquet"
    write_profiles(df, path)
    with pytest.raises(InputError, match="P1/A01"):
        evaluate_plate(path, tmp_path / "ap.parquet", perturbation_col="Metadata_broad_sample")
