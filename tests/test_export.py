"""Profiles as AnnData (cytoagg.profiles.export, ``cytoagg export-anndata``): read back with anndata itself."""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from cytoagg.cli import main
from cytoagg.io.files import InputError
from cytoagg.io.parquet import write_profiles
from cytoagg.profiles.export import export_anndata
from helpers import annotation

ad = pytest.importorskip("anndata")


def plate_profiles(plate: str, n_wells: int, features: list[str], seed: int, extra: dict | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.normal(size=(n_wells, len(features))).astype(np.float32), columns=features)
    meta = {
        "Metadata_Plate": [plate] * n_wells,
        "Metadata_Well": [f"A{i + 1:02d}" for i in range(n_wells)],
        "Metadata_broad_sample": ["DMSO" if i % 3 == 0 else f"c{i % 4}" for i in range(n_wells)],
        **(extra or {}),
    }
    return pd.concat([pd.DataFrame(meta), df], axis=1)


@pytest.fixture
def two_plates(tmp_path):
    features = ["Cells_AreaShape_Area", "Nuclei_Intensity_MeanIntensity_DNA", "Cytoplasm_Texture_x"]
    # the second plate has a column the first lacks, with a missing value in it
    frames = {
        "PA": plate_profiles("PA", 5, features, 0),
        "PB-2": plate_profiles("PB-2", 4, features, 1, {"Metadata_moa": ["x", None, "y", "x"]}),
    }
    paths = []
    for plate, df in frames.items():
        paths.append(tmp_path / "profiles" / f"{plate}.parquet")
        paths[-1].parent.mkdir(exist_ok=True)
        write_profiles(df, paths[-1])
    return paths, frames, features


def test_round_trip_with_anndata(two_plates, tmp_path):
    paths, frames, features = two_plates
    out = tmp_path / "anndata" / "mean__negcon_mad.h5ad"
    summary = export_anndata(paths, out, annotation(), "mean", "negcon_mad")
    assert summary["wells"] == 9 and summary["plates"] == 2

    adata = ad.read_h5ad(out)
    expected = pd.concat(frames.values(), ignore_index=True)
    assert adata.shape == (9, 3)
    assert adata.var_names.tolist() == features
    assert adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X, expected[features].to_numpy(np.float32))
    assert adata.obs_names.tolist() == [f"{p}_{w}" for p, w in zip(expected.Metadata_Plate, expected.Metadata_Well)]
    # obs: the Metadata_* columns, first-seen order, missing where a plate lacks the column
    assert adata.obs.columns.tolist() == ["Metadata_Plate", "Metadata_Well", "Metadata_broad_sample", "Metadata_moa"]
    for col in adata.obs.columns:
        got = adata.obs[col].astype(object).where(adata.obs[col].notna(), None).tolist()
        assert got == expected[col].astype(object).where(expected[col].notna(), None).tolist(), col
    assert adata.uns["cytoagg"]["method"] == "mean" and adata.uns["cytoagg"]["pipeline"] == "negcon_mad"

    # backed mode reads X from the file as written plate by plate
    backed = ad.read_h5ad(out, backed="r")
    np.testing.assert_array_equal(backed.X[5:9], expected[features].to_numpy(np.float32)[5:9])
    backed.file.close()


def test_cli_reads_the_file_list_from_stdin(two_plates, tmp_path, monkeypatch):
    paths, frames, features = two_plates
    out = tmp_path / "model__raw.h5ad"
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"{p}\n" for p in paths)))
    params = annotation().to_params()
    assert main(["export-anndata", "--profile-list", "-", "--method", "model", "--pipeline", "raw", "--out", str(out),
                 "--params", json.dumps(params)]) == 0
    adata = ad.read_h5ad(out)
    assert adata.n_obs == 9 and adata.uns["cytoagg"]["method"] == "model"


def test_plates_with_other_features_are_refused_and_nothing_is_written(two_plates, tmp_path):
    paths, frames, features = two_plates
    odd = tmp_path / "odd.parquet"
    write_profiles(plate_profiles("PC", 3, features[::-1], 2), odd)  # same names, another order
    out = tmp_path / "x.h5ad"
    with pytest.raises(InputError, match="odd.parquet.*another order"):
        export_anndata([*paths, odd], out, annotation(), "mean", "raw")
    write_profiles(plate_profiles("PC", 3, features[:2], 2), odd)
    with pytest.raises(InputError, match="odd.parquet.*Cytoplasm_Texture_x"):
        export_anndata([*paths, odd], out, annotation(), "mean", "raw")
    assert not [n for n in os.listdir(tmp_path) if "x.h5ad" in n]  # nor a temporary file


def test_a_well_twice_is_refused(two_plates, tmp_path):
    paths, _, _ = two_plates
    with pytest.raises(InputError, match="PA_A01"):
        export_anndata([paths[0], paths[0]], tmp_path / "x.h5ad", annotation(), "mean", "raw")


def test_the_rules_step_writes_every_key_and_reads_a_folder_as_its_file(two_plates, tmp_path):
    """export_step (the export_anndata rule): one file per profile key; a per-plate pipelines' folder stands for
    its file of that method and pipeline."""
    from cytoagg.profiles.export import export_step

    paths, frames, features = two_plates
    folder = tmp_path / "by_plate" / "P2"
    folder.mkdir(parents=True)
    shutil.copy(paths[1], folder / "mean__negcon_mad.parquet")
    sources = {"mean__raw": paths, "mean__negcon_mad": [paths[0], folder]}
    outputs = {key: tmp_path / f"{key}.h5ad" for key in sources}
    params = json.dumps({"cytoagg_version": "0", "annotation": annotation().to_params()})
    export_step(sources, outputs, params, tmp_path / "export.log")
    for key in sources:
        adata = ad.read_h5ad(outputs[key])
        assert adata.n_obs == 9 and adata.uns["cytoagg"]["pipeline"] == key.split("__")[1]
        np.testing.assert_array_equal(adata.X, ad.read_h5ad(outputs["mean__raw"]).X)
    assert len((tmp_path / "export.log").read_text().splitlines()) == 2
