"""evaluate_plate: controls, singletons, pass-through columns and input errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytoagg.evaluate.retrieval import evaluate_plate, pr_curves
from cytoagg.io.files import InputError
from helpers import annotation, compound_split, evaluate_settings, pr_curve_settings
from cytoagg.io.parquet import write_profiles
from cytoagg.evaluate.average_precision import average_precision

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


ANNOTATION_KEYS = ("plate_col", "well_col", "perturbation_col", "negcon_col", "negcon_value")


def _annotation(kw: dict):
    """Annotation from evaluate's column keywords; no negative controls unless ``negcon_value`` is given."""
    given = {k: kw.pop(k) for k in ANNOTATION_KEYS if k in kw}
    given.setdefault("negcon_value", None)
    given.setdefault("negcon_col", given.get("perturbation_col", "Metadata_broad_sample"))
    return annotation(**given)


def ev(paths, out, query_plates=None, log=None, **kw):
    """evaluate_plate with keyword settings (no MoA retrieval unless ``moa_column``)."""
    settings = evaluate_settings(annotation=_annotation(kw), **{"moa_column": None, **kw})
    return evaluate_plate(paths, out, settings, query_plates=query_plates, log=log)


def curves_of(profiles, validation_compounds=0.25, **kw):
    settings = pr_curve_settings(annotation=_annotation(kw), split=compound_split(validation=validation_compounds), **kw)
    return pr_curves(profiles, settings)


@pytest.fixture
def plate_path(tmp_path):
    path = tmp_path / "P1.parquet"
    write_profiles(plate_frame(), path)
    return path


def test_negcon_excluded_and_singletons_counted(plate_path, tmp_path):
    out = tmp_path / "ap" / "P1.parquet"
    messages = []
    got = ev(
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
    got = ev(
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
    got = ev(plate_path, tmp_path / "ap.parquet", perturbation_col="Metadata_broad_sample")
    assert len(got) == len(PERTURBATIONS)
    assert got["n_candidates"].eq(len(PERTURBATIONS) - 1).all()
    assert got.loc[got["perturbation"] == "DMSO", "n_positives"].eq(2).all()


def test_plates_are_evaluated_separately(tmp_path):
    path = tmp_path / "two.parquet"
    write_profiles(pd.concat([plate_frame("P1", 0), plate_frame("P2", 1)], ignore_index=True), path)
    got = ev(path, tmp_path / "ap.parquet", perturbation_col="Metadata_broad_sample", negcon_value="DMSO")
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
        ev(plate_path, out, **kwargs)
    assert str(plate_path) in str(err.value)
    assert not out.exists()


def test_non_finite_values_name_the_wells(tmp_path):
    df = plate_frame()
    df.loc[2, "Nuclei_C"] = np.nan
    df.loc[5, "Cells_A"] = np.inf
    path = tmp_path / "bad.parquet"
    write_profiles(df, path)
    with pytest.raises(InputError, match="non-finite") as err:
        ev(path, tmp_path / "ap.parquet", perturbation_col="Metadata_broad_sample")
    assert str(path) in str(err.value) and "P1/A03" in str(err.value) and "P1/A06" in str(err.value)


def test_zero_profiles_and_missing_perturbations_are_errors(tmp_path):
    df = plate_frame()
    df.loc[3, FEATURES] = 0.0
    path = tmp_path / "zero.parquet"
    write_profiles(df, path)
    with pytest.raises(InputError, match="all-zero profile.*P1/A04"):
        ev(path, tmp_path / "ap.parquet", perturbation_col="Metadata_broad_sample")
    df = plate_frame()
    df.loc[4, "Metadata_broad_sample"] = None
    write_profiles(df, path)
    with pytest.raises(InputError, match="missing in 1 well.*P1/A05"):
        ev(path, tmp_path / "ap.parquet", perturbation_col="Metadata_broad_sample")


def test_negcon_settings_are_checked(plate_path, tmp_path):
    with pytest.raises(InputError, match="negcon_value"):
        ev(plate_path, tmp_path / "ap.parquet", perturbation_col="Metadata_broad_sample", negcon_as_negatives=True)
    with pytest.raises(InputError, match="no negative-control well"):
        ev(
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
        ev(path, tmp_path / "ap.parquet", perturbation_col="Metadata_broad_sample")


# --- reference set, corrected AP, MoA retrieval, precision-recall curves ------------------------


def test_reference_split_ranks_against_every_plate(tmp_path):
    p1, p2 = tmp_path / "P1.parquet", tmp_path / "P2.parquet"
    write_profiles(plate_frame("P1", 0), p1)
    write_profiles(plate_frame("P2", 1), p2)
    got = ev(
        [p1, p2], tmp_path / "ap.parquet", perturbation_col="Metadata_broad_sample", negcon_value="DMSO",
        reference="split", query_plates=["P1"],
    )
    assert got["plate"].eq("P1").all() and len(got) == 6
    assert got["n_candidates"].eq(11).all()  # the other 11 treated wells of both plates
    # replicates on P2 count: c1 has 3 wells per plate, c3 one per plate
    assert got["n_positives"].tolist() == [5, 5, 3, 1, 5, 3]
    both = pd.concat([plate_frame("P1", 0), plate_frame("P2", 1)], ignore_index=True)
    treated = both["Metadata_broad_sample"] != "DMSO"
    expected = average_precision(both.loc[treated, FEATURES].to_numpy(), both.loc[treated, "Metadata_broad_sample"])
    np.testing.assert_allclose(got["average_precision"], expected["average_precision"].iloc[:6], atol=1e-12)
    # reference="plate" on the same files: P1 alone, as before
    alone = ev([p1, p2], tmp_path / "ap2.parquet", perturbation_col="Metadata_broad_sample",
                           negcon_value="DMSO", query_plates="P1")
    assert alone["n_candidates"].eq(5).all()
    with pytest.raises(InputError, match="P9"):
        ev([p1], tmp_path / "x.parquet", perturbation_col="Metadata_broad_sample", query_plates=["P9"])
    with pytest.raises(InputError, match="reference"):
        ev(p1, tmp_path / "x.parquet", perturbation_col="Metadata_broad_sample", reference="all")


def test_baseline_corrected_column(plate_path, tmp_path):
    got = ev(
        plate_path, tmp_path / "ap.parquet", perturbation_col="Metadata_broad_sample", negcon_value="DMSO",
        baseline_corrected=True,
    )
    expected = np.maximum(got["average_precision"] - got["n_positives"] / got["n_candidates"], 0)
    np.testing.assert_allclose(got["baseline_corrected_ap"], expected)
    assert got.columns.tolist().index("baseline_corrected_ap") == 7  # right after the AP columns


def moa_frame(seed=0) -> pd.DataFrame:
    """12 compounds x 3 wells in 4 MoAs (one compound without MoA), plus 6 DMSO wells."""
    rng = np.random.default_rng(seed)
    compounds = [f"c{i}" for i in range(12)]
    moa = {c: (f"m{i % 4}" if i != 11 else None) for i, c in enumerate(compounds)}
    pert = [c for c in compounds for _ in range(3)] + ["DMSO"] * 6
    df = pd.DataFrame({"Metadata_Plate": "P1", "Metadata_Well": [f"W{i:03d}" for i in range(len(pert))],
                       "Metadata_broad_sample": pert, "Metadata_moa": [moa.get(p, "control") for p in pert]})
    centers = {m: rng.normal(size=len(FEATURES)) for m in ("m0", "m1", "m2", "m3", None, "control")}
    x = np.stack([centers[moa.get(p, "control")] for p in pert]) * 0.7 + rng.normal(size=(len(pert), len(FEATURES)))
    for j, f in enumerate(FEATURES):
        df[f] = x[:, j].astype(np.float32)
    return df


def test_moa_retrieval_matches_copairs(tmp_path):
    copairs_map = pytest.importorskip("copairs.map")
    df = moa_frame()
    path = tmp_path / "moa.parquet"
    write_profiles(df, path)
    got = ev(path, tmp_path / "ap.parquet", perturbation_col="Metadata_broad_sample",
                         negcon_value="DMSO", moa_column="Metadata_moa")
    for col in ("moa", "moa_average_precision", "moa_precision_at_r", "moa_n_positives", "moa_n_candidates"):
        assert col in got.columns
    assert "Metadata_moa" in got.columns  # still passed through
    no_moa = got["perturbation"] == "c11"
    assert got.loc[no_moa, "moa_average_precision"].isna().all() and got.loc[no_moa, "moa_n_positives"].eq(0).all()
    # copairs: treated wells with a MoA; positives same MoA, other compound; negatives other MoA
    sub = df[(df.Metadata_broad_sample != "DMSO") & df.Metadata_moa.notna()].reset_index(drop=True)
    meta = sub[["Metadata_moa", "Metadata_broad_sample"]]
    x = sub[FEATURES].to_numpy(dtype=np.float64)
    ref = copairs_map.average_precision(meta, x, ["Metadata_moa"], ["Metadata_broad_sample"], [], ["Metadata_moa"],
                                        progress_bar=False)
    ours = got[~no_moa].reset_index(drop=True)
    assert ours["moa_n_positives"].tolist() == ref["n_pos_pairs"].tolist()  # 2 other compounds x 3 wells
    assert ours["moa_n_candidates"].tolist() == ref["n_total_pairs"].tolist()
    np.testing.assert_allclose(ours["moa_average_precision"], ref["average_precision"], rtol=0, atol=1e-9)
    # without the column: no MoA columns
    plain = ev(path, tmp_path / "ap2.parquet", perturbation_col="Metadata_broad_sample",
                           negcon_value="DMSO", moa_column="Metadata_mechanism")
    assert not any(c.startswith("moa") for c in plain.columns)


def test_pr_curves_give_the_evaluated_ap(tmp_path):
    df = moa_frame(1)
    a, b = tmp_path / "model.parquet", tmp_path / "mean.parquet"
    write_profiles(df, a)
    other = df.copy()
    other[FEATURES] = other[FEATURES].to_numpy()[:, ::-1]
    write_profiles(other.sample(frac=1, random_state=0), b)  # another method, wells in another order
    curves = curves_of({"model": a, "mean": b}, perturbation_col="Metadata_broad_sample", group_column="Metadata_moa",
                       negcon_value="DMSO")
    assert set(curves["group"]) == {"m0", "m1", "m2", "m3", "(none)"}
    assert set(curves["method"]) == {"model", "mean"}
    for method, path in (("model", a), ("mean", b)):
        ap = ev(path, tmp_path / f"{method}_ap.parquet", perturbation_col="Metadata_broad_sample",
                            negcon_value="DMSO").set_index("well")
        for (group, well), g in curves[curves.method == method].groupby(["group", "well"]):
            assert g["average_precision"].iloc[0] == pytest.approx(ap.loc[well, "average_precision"], abs=1e-9)
            assert g["recall"].iloc[-1] == 1.0 and len(g) == ap.loc[well, "n_candidates"]
    # the same query for every method in a group: the model's median-AP well
    assert (curves.groupby("group")["well"].nunique() == 1).all()
    # no group column: one query per compound split
    curves = curves_of({"model": a}, perturbation_col="Metadata_broad_sample", group_column="Metadata_kind",
                       negcon_value="DMSO", validation_compounds=["c0", "c1", "c2"])
    assert set(curves["group"]) == {"train compounds", "validation compounds"}


def test_cli_evaluates_several_methods_in_one_call(tmp_path, caplog):
    """The evaluate rule's call: each profile's files are named (--profiles KEY PATH...), never matched by position;
    the per-plate pipelines' profiles come as one folder per ranked plate; one AP table comes out."""
    import json

    from cytoagg.cli import main
    from cytoagg.profiles.pipelines import pipeline_file

    files = {}
    for method, seed in (("model", 0), ("mean", 5)):
        for plate in ("P1", "P2"):
            files[method, plate] = tmp_path / f"{method}_{plate}.parquet"
            write_profiles(plate_frame(plate, seed + (plate == "P2")), files[method, plate])
    folders = [tmp_path / "P1", tmp_path / "P2"]
    for plate, folder in zip(("P1", "P2"), folders):
        folder.mkdir()
        write_profiles(plate_frame(plate, 9 + (plate == "P2")), pipeline_file(folder, "mean", "negcon_mad"))
    settings = evaluate_settings(annotation=annotation(), reference="split", moa_column=None)
    params = json.dumps(settings.to_params())
    out = tmp_path / "ap.parquet"
    args = ["evaluate", "--plate", "P1", "--params", params]
    for method in ("mean", "model"):  # any order
        args += ["--profiles", f"{method}__raw", str(files[method, "P1"]), str(files[method, "P2"])]
    args += ["--pipelines", *map(str, folders), "--out", str(out)]
    assert main(args) == 0
    ap = pd.read_parquet(out)
    assert list(ap.columns[:2]) == ["method", "profile_pipeline"]
    expected = {("mean", "raw"): [files["mean", p] for p in ("P1", "P2")],
                ("model", "raw"): [files["model", p] for p in ("P1", "P2")],
                ("mean", "negcon_mad"): [pipeline_file(f, "mean", "negcon_mad") for f in folders]}
    assert set(zip(ap.method, ap.profile_pipeline)) == set(expected)
    for (method, pipeline), paths in expected.items():
        alone = evaluate_plate(paths, tmp_path / "alone.parquet", settings, query_plates=["P1"])
        got = ap[(ap.method == method) & (ap.profile_pipeline == pipeline)].drop(columns=["method", "profile_pipeline"])
        pd.testing.assert_frame_equal(got.reset_index(drop=True), alone)
    # a plate's folder without a profile the others have is named, and nothing is written
    pipeline_file(folders[1], "mean", "negcon_mad").unlink()
    out.unlink()
    assert main(args) == 2
    assert "P2/mean__negcon_mad.parquet: missing" in caplog.text and not out.exists()
    unknown = json.dumps({**settings.to_params(), "refrence": "plate"})
    assert main([*args[:4], unknown, *args[5:]]) == 2
    assert "unknown setting(s) ['refrence']" in caplog.text
