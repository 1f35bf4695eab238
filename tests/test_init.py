"""``cytoagg init``: a complete, commented config from inspecting real plates; questions where the data is ambiguous."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from cytoagg.cli import main
from cytoagg.init_config import find_plates, is_position
from cytoagg.io.files import InputError
from helpers import SCHEMA
from realdata import REALDATA

FIBROSIS = REALDATA / "fibrosis_dmso_4plates"
NF1 = REALDATA / "nf1_schwann_plate1_sqlite"


def checked(path: Path) -> dict:
    """The written config, read as the Snakefile reads it: valid against the schema, defaults filled."""
    config = yaml.safe_load(path.read_text())
    validate(config, str(SCHEMA))
    return config


def test_fibrosis_plates_differing_features_prenormalized(tmp_path, capsys):
    """4 real pycytominer-normalized plates, 620-663 features each, 473 common, DMSO only, two cell types."""
    out = tmp_path / "mine.yaml"
    assert main(["init", str(FIBROSIS / "{plate}_test.parquet"), "--out", str(out)]) == 0
    assert "question(s) in it to check" in capsys.readouterr().out
    text = out.read_text()
    config = checked(out)
    plates = ["localhost240926150001", "localhost240927060001", "localhost240927120001", "localhost240928120001"]
    assert config["plates"]["train"] + config["plates"]["validation"] == plates and len(config["plates"]["validation"]) == 1
    assert config["dataset"]["path"] == str(FIBROSIS / "{plate}_test.parquet")
    assert config["dataset"]["features"] == "common"
    assert "620 to 663 features, 473 of them on every plate" in text
    assert config["normalize"]["method"] == "none" and "look normalized upstream" in text
    # two metadata columns split the wells alike (heart 7 is healthy, 19 failing): a question, not a silent pick
    assert config["metadata"]["perturbation"] in ("Metadata_cell_type", "Metadata_heart_number")
    assert "QUESTION: which metadata column holds each well's treatment" in text
    assert "Metadata_cell_type: 2 values, 2 in 2+ wells; healthy (16), failing (16)" in text
    assert "Metadata_WellRow" not in text.split("Candidates")[1].split("perturbation:")[0]  # a position, not a treatment
    assert config["metadata"]["negcon_value"] is None and config["evaluate"]["pipelines"] == ["raw"]
    # no Cells_AreaShape_Area on these plates: the filtered_mean baseline filters on an area they have
    assert config["evaluate"]["filtered_mean"]["feature"] == "Cytoplasm_AreaShape_Area"
    assert "filtered_mean" in config["evaluate"]["baselines"]
    assert "QUESTION: no value of" in text  # all wells are DMSO in another column: no control among the candidates
    assert config["compounds"]["validation"] == 0  # 2 treatments: none can be held out
    assert "localhost240926150001: 8 wells, 607 cells (85 per well)" in text
    assert config["train"]["cells_mean"] == 66  # the median cells per well
    with pytest.raises(InputError, match="exists"):
        from cytoagg.init_config import init_config

        init_config(str(FIBROSIS / "{plate}_test.parquet"), out)


def test_sqlite_plate_with_a_barcode_platemap(tmp_path):
    """One CellProfiler SQLite plate; its treatment (genotype WT / Null) comes from the platemap."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(NF1 / "all_cellprofiler.sqlite", data / "001.sqlite")  # the barcode map names it 1 (padding matches)
    out = tmp_path / "nf1.yaml"
    assert main(["init", str(data / "{plate}.sqlite"), "--out", str(out), "--barcode-platemap",
                 str(NF1 / "barcode_platemap.csv"), "--platemap-dir", str(NF1)]) == 0
    text = out.read_text()
    config = checked(out)
    assert config["dataset"]["barcode_platemap"] == str(NF1 / "barcode_platemap.csv")
    assert config["plates"] == {"train": ["001"], "validation": [], "without_negcon": []}
    assert "one plate: every number is in-sample" in text
    assert config["metadata"]["perturbation"] == "Metadata_genotype"  # the only candidate: no question about it
    assert "which metadata column" not in text and "Metadata_genotype: 2 values, 2 of them in 2 or more wells" in text
    assert "001: 8 wells, 242 cells (24 per well)" in text
    assert config["normalize"]["method"] == "mad_robustize" and "raw CellProfiler output" in text
    assert config["dataset"]["features"] is None and "found: sqlite" in text


def test_plate_names_from_the_pattern(tmp_path):
    for name in ("B1", "B2", "B10", "bad name"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.csv").touch()
    found, skipped = find_plates(str(tmp_path / "{plate}" / "{plate}.csv"))
    assert list(found) == ["B1", "B2", "B10"] and skipped == ["bad name"]
    (tmp_path / "B3").mkdir()
    (tmp_path / "B3" / "other.csv").touch()  # the name must repeat where the pattern repeats it
    assert "B3" not in find_plates(str(tmp_path / "{plate}" / "{plate}.csv"))[0]
    with pytest.raises(InputError, match="needs \\{plate\\}"):
        find_plates(str(tmp_path / "x.csv"))
    with pytest.raises(InputError, match="matches no plate"):
        find_plates(str(tmp_path / "{plate}.sqlite"))


def test_position_columns_are_never_treatments():
    for column in ("Metadata_WellRow", "Metadata_WellCol", "Metadata_Site", "Metadata_ImageNumber", "Metadata_Row",
                   "Metadata_TableNumber", "Metadata_Well"):
        assert is_position(column), column
    for column in ("Metadata_broad_sample", "Metadata_pert_id", "Metadata_genotype", "Metadata_cell_type",
                   "Metadata_compound_kind", "Metadata_moa"):
        assert not is_position(column), column


def test_plates_without_an_area_leave_the_filtered_mean_baseline_out(tmp_path):
    import pandas as pd

    data = tmp_path / "data"
    data.mkdir()
    for plate in ("localhost240926150001", "localhost240927060001"):
        df = pd.read_parquet(FIBROSIS / f"{plate}_test.parquet")
        df.drop(columns=[c for c in df.columns if c.endswith("_AreaShape_Area")]).to_parquet(data / f"{plate}.parquet")
    out = tmp_path / "mine.yaml"
    assert main(["init", str(data / "{plate}.parquet"), "--out", str(out)]) == 0
    config = checked(out)
    assert "filtered_mean" not in config["evaluate"]["baselines"]
    assert set(config["evaluate"]["baselines"]) == {"mean", "median", "mean_std", "mean_cov"}
    assert "no <compartment>_AreaShape_Area on every plate" in out.read_text()
