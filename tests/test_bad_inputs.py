"""Bad inputs and degenerate designs, one test per case (issue: no silent wrong numbers, no hangs).

Each case is an input a user can really have. It must stop with a clear message naming the file, column or
config key (or, where the issue says so, warn and go on), never give different numbers with exit code 0,
never hang, and never leave a half-written output. The numbers follow the issue's list.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from cytoagg.cli import main as cli
from cytoagg.ingest import ingest_plate
from cytoagg.io.files import InputError
from cytoagg.io.parquet import read_profiles, write_profiles
from cytoagg.model.cellstore import pack_cell_store
from cytoagg.model.sampler import SetSizeSchedule
from cytoagg.model.train import train_model
from cytoagg.preprocess.normalize import normalize_plate
from helpers import (
    REPO,
    aggregate_settings,
    annotation,
    compound_split,
    copy_workflow,
    feature_select_settings,
    ingest_settings,
    normalize_settings,
    splits,
    summarize_settings,
    train_settings,
)

NF1 = REPO / "tests" / "data" / "realdata" / "nf1_schwann_plate1_sqlite"
FEATURES = ["Cells_AreaShape_Area", "Cytoplasm_Intensity_MeanIntensity_DNA", "Nuclei_AreaShape_Area"]


def assert_no_output(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*"))


# ------------------------------------------------------------------------------------------ small plates


def cellprofiler_sqlite(path: Path, images: list[dict], cells: list[dict], keyed: bool) -> Path:
    """A CellProfiler-style SQLite plate. ``images``: dicts with table, image, well; ``cells``: dicts with table,
    image, object, value (every compartment's feature is value + a compartment offset). ``keyed``: write
    cytominer-database's TableNumber column in every table."""
    con = sqlite3.connect(path)
    key = ["TableNumber TEXT"] if keyed else []
    con.execute(f"CREATE TABLE Per_Image ({', '.join(key + ['ImageNumber INTEGER', 'Image_Metadata_Plate TEXT', 'Image_Metadata_Well TEXT'])})")
    for im in images:
        con.execute(f"INSERT INTO Per_Image VALUES ({', '.join('?' * (3 + keyed))})",
                    ([im["table"]] if keyed else []) + [im["image"], "P1", im["well"]])
    for offset, comp in enumerate(("Cells", "Cytoplasm", "Nuclei")):
        links = ["Cytoplasm_Parent_Cells INTEGER", "Cytoplasm_Parent_Nuclei INTEGER"] if comp == "Cytoplasm" else []
        feature = FEATURES[offset]
        cols = key + ["ImageNumber INTEGER", f"{comp}_Number_Object_Number INTEGER", *links, f'"{feature}" REAL']
        con.execute(f"CREATE TABLE Per_{comp} ({', '.join(cols)})")
        for c in cells:
            row = ([c["table"]] if keyed else []) + [c["image"], c["object"]] + [c["object"]] * len(links) + [c["value"] + offset]
            con.execute(f"INSERT INTO Per_{comp} VALUES ({', '.join('?' * len(row))})", row)
        con.execute(f"CREATE INDEX Per_{comp}_image ON Per_{comp} (ImageNumber)")
    con.commit()
    con.close()
    return path


def ingest(source, out, plate="P1", perturbation_col="Metadata_Plate", negcon_value=None, platemap=None, **kw):
    ann = annotation(perturbation_col=perturbation_col, negcon_col=perturbation_col, negcon_value=negcon_value)
    settings = ingest_settings(annotation=ann, platemap=None if platemap is None else str(platemap), **kw)
    return ingest_plate(source, out, plate, settings, workers=1)


def single_cell_plate(path: Path, perturbations: dict[str, str | None], cells: int = 5, seed: int = 0) -> Path:
    """A single-cell Parquet plate: ``cells`` cells per well, each well's perturbation (None: left empty)."""
    rng = np.random.default_rng(seed)
    wells = np.repeat(list(perturbations), cells)
    df = pd.DataFrame({"Metadata_Plate": "P1", "Metadata_Well": wells,
                       "Metadata_broad_sample": [perturbations[w] for w in wells]})
    for f in FEATURES:
        df[f] = rng.normal(size=len(df)).astype(np.float32)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)
    return path


# ------------------------------------------------------------------------------------------ 1. TableNumber keys


def _keyed_images():
    # two CellProfiler runs (TableNumbers), each numbering its images from 1: ImageNumber 1 and 2 collide
    images = [dict(table="run-a", image=1, well="A01"), dict(table="run-a", image=2, well="A02"),
              dict(table="run-b", image=1, well="B01"), dict(table="run-b", image=2, well="B02")]
    cells = []
    for im in images:
        base = {"A01": 100.0, "A02": 200.0, "B01": 300.0, "B02": 400.0}[im["well"]]
        cells += [dict(table=im["table"], image=im["image"], object=o, value=base + o) for o in (1, 2, 3)]
    return images, cells


def test_01_cytominer_database_keys_images_by_table_and_image_number(tmp_path):
    images, cells = _keyed_images()
    src = cellprofiler_sqlite(tmp_path / "plate.sqlite", images, cells, keyed=True)
    summary = ingest(src, tmp_path / "out.parquet")
    df = pd.read_parquet(tmp_path / "out.parquet")
    assert summary["n_cells"] == 12 and summary["cells_per_well"] == {"A01": 3, "A02": 3, "B01": 3, "B02": 3}
    for well, base in {"A01": 100.0, "A02": 200.0, "B01": 300.0, "B02": 400.0}.items():
        got = df.loc[df.Metadata_Well == well, "Cells_AreaShape_Area"].tolist()
        assert got == [base + 1, base + 2, base + 3], well  # every cell under its own well
    assert set(df.Metadata_TableNumber) == {"run-a", "run-b"}


def test_01_only_one_colliding_site_with_cells_keeps_its_well(tmp_path):
    """Before: the cells of run-b's image 1 were written under run-a's image 1 well."""
    images, cells = _keyed_images()
    cells = [c for c in cells if not (c["table"] == "run-a" and c["image"] == 1)]
    src = cellprofiler_sqlite(tmp_path / "plate.sqlite", images, cells, keyed=True)
    ingest(src, tmp_path / "out.parquet")
    df = pd.read_parquet(tmp_path / "out.parquet")
    assert "A01" not in set(df.Metadata_Well)
    assert df.loc[df.Metadata_Well == "B01", "Cells_AreaShape_Area"].tolist() == [301.0, 302.0, 303.0]


def test_01_repeated_image_numbers_without_table_number_are_refused(tmp_path):
    images, cells = _keyed_images()
    src = cellprofiler_sqlite(tmp_path / "plate.sqlite", images, cells, keyed=False)
    with pytest.raises(InputError, match="rows for the same image.*TableNumber"):
        ingest(src, tmp_path / "out.parquet")
    assert_no_output(tmp_path / "out.parquet")


# ------------------------------------------------------------------------------------------ 2. cells without an image row


def _orphan_plate(tmp_path, n_orphans: int, keyed: bool) -> Path:
    images, cells = _keyed_images()
    cells += [dict(table="run-b", image=9, object=o, value=900.0 + o) for o in range(1, n_orphans + 1)]
    return cellprofiler_sqlite(tmp_path / "plate.sqlite", images, cells, keyed=keyed)


def test_02_cells_without_an_image_row_are_counted_and_named(tmp_path, caplog):
    src = _orphan_plate(tmp_path, 1, keyed=True)
    summary = ingest(src, tmp_path / "out.parquet", max_cells_without_image=0.1)  # 1 of 13 cells
    assert summary["n_cells"] == 12
    assert "1 cell(s)" in caplog.text and "TableNumber run-b, ImageNumber 9" in caplog.text


def test_02_too_many_cells_without_an_image_row_stop_ingest(tmp_path):
    src = _orphan_plate(tmp_path, 6, keyed=True)
    with pytest.raises(InputError, match="6 cell.*without a row in the Image table.*max_cells_without_image"):
        ingest(src, tmp_path / "out.parquet", max_cells_without_image=0.1)
    assert_no_output(tmp_path / "out.parquet")


def test_02_csv_folder_cells_without_an_image_row(tmp_path):
    site = tmp_path / "plate" / "site1"
    site.mkdir(parents=True)
    pd.DataFrame({"ImageNumber": [1], "Metadata_Plate": ["P1"], "Metadata_Well": ["A01"]}).to_csv(site / "Image.csv", index=False)
    for comp in ("Cells", "Cytoplasm", "Nuclei"):
        df = pd.DataFrame({"ImageNumber": [1, 1, 2, 2], "ObjectNumber": [1, 2, 1, 2], "AreaShape_Area": [1.0, 2.0, 3.0, 4.0]})
        if comp == "Cytoplasm":
            df["Parent_Cells"] = df["ObjectNumber"]
            df["Parent_Nuclei"] = df["ObjectNumber"]
        df.to_csv(site / f"{comp}.csv", index=False)
    with pytest.raises(InputError, match=r"2 cell\(s\) \(50.00%\).*site1/ImageNumber 2"):
        ingest(tmp_path / "plate", tmp_path / "out.parquet")
    summary = ingest(tmp_path / "plate", tmp_path / "out.parquet", max_cells_without_image=0.5)
    assert summary["n_cells"] == 2


# ------------------------------------------------------------------------------------------ 3. and 13. damaged Parquet


def _overwrite_values(path: Path, n_bytes: int = 4000, byte: int = 0x7F) -> None:
    """Overwrite bytes inside the first row group's first feature pages (headers, magic and footer intact):
    0x7F7F7F7F as float32 is 3.4e38."""
    meta = pq.ParquetFile(path).metadata
    column = next(j for j in range(meta.num_columns) if not meta.schema.column(j).name.startswith("Metadata_"))
    start = meta.row_group(0).column(column).data_page_offset + 64
    data = bytearray(path.read_bytes())
    data[start:start + n_bytes] = bytes([byte]) * n_bytes
    path.write_bytes(bytes(data))


def test_03_damaged_input_plate_is_an_error_naming_it(tmp_path):
    """An uncompressed input plate with overwritten bytes (footer intact) used to run with rc 0."""
    rng = np.random.default_rng(0)
    n = 4000
    df = pd.DataFrame({"Metadata_Plate": "P1", "Metadata_Well": np.repeat([f"A{i:02d}" for i in range(1, 11)], n // 10)})
    for f in FEATURES:
        df[f] = rng.normal(size=n).astype(np.float32)
    src = tmp_path / "plate.parquet"
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), src, compression="none", use_dictionary=False)
    _overwrite_values(src)
    with pytest.raises(InputError, match=f"{src}.*(beyond|damaged)"):
        ingest(src, tmp_path / "out.parquet")
    assert_no_output(tmp_path / "out.parquet")


def test_03_outputs_carry_page_checksums_that_reads_verify(tmp_path):
    src = single_cell_plate(tmp_path / "plate.parquet", {"A01": "x", "A02": "y"}, cells=2000)
    out = tmp_path / "ingested.parquet"
    ingest(src, out, perturbation_col="Metadata_broad_sample")
    read_profiles(out)  # intact: reads
    _overwrite_values(out, n_bytes=400, byte=0x3F)  # plausible values: only the checksum can tell
    with pytest.raises(InputError, match=f"{out}: damaged or unreadable Parquet"):
        read_profiles(out)
    with pytest.raises(InputError, match=f"{out}: damaged or unreadable Parquet"):
        normalize_plate(out, tmp_path / "normalized.parquet", normalize_settings())
    assert_no_output(tmp_path / "normalized.parquet")


@pytest.mark.parametrize("step", ["normalize", "aggregate", "select-features"])
def test_13_truncated_parquet_is_one_line_naming_the_file(tmp_path, step, caplog):
    src = single_cell_plate(tmp_path / "plate.parquet", {"A01": "x", "A02": "y"}, cells=50)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(src.read_bytes()[:-200] + b"PAR1")  # footer length now points at garbage
    (tmp_path / "features.txt").write_text("\n".join(FEATURES) + "\n")
    args = {
        "normalize": ["normalize", "--src", str(bad), "--out", str(tmp_path / "o.parquet"),
                      "--params", json.dumps(normalize_settings().to_params())],
        "aggregate": ["aggregate", "--normalized", str(bad), "--features", str(tmp_path / "features.txt"), "--plate", "P1",
                      "--out", "mean", str(tmp_path / "o.parquet"), "--params", json.dumps(aggregate_settings().to_params())],
        "select-features": ["select-features", "--plates", str(bad), "--out", str(tmp_path / "o.txt"), "--params",
                            json.dumps(feature_select_settings().to_params())],
    }[step]
    assert cli(args) == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(bad) in errors[0].getMessage() and errors[0].exc_info is None
    assert len(errors[0].getMessage().splitlines()) == 1


# ------------------------------------------------------------------------------------------ 4. negcon value


def test_04_negcon_value_matching_no_well_names_value_column_and_closest(tmp_path):
    src = single_cell_plate(tmp_path / "plate.parquet", {"A01": "DMSO", "A02": "cpd1", "A03": "cpd1"})
    with pytest.raises(InputError, match=r"Metadata_broad_sample == 'dmso'.*closest values present: \['DMSO'\]"):
        ingest(src, tmp_path / "out.parquet", perturbation_col="Metadata_broad_sample", negcon_value="dmso")
    assert_no_output(tmp_path / "out.parquet")
    # on purpose (plates.without_negcon): no error
    ingest(src, tmp_path / "out.parquet", perturbation_col="Metadata_broad_sample", negcon_value="dmso",
           require_negcon=False)
    ingest(src, tmp_path / "ok.parquet", perturbation_col="Metadata_broad_sample", negcon_value="DMSO")


# ------------------------------------------------------------------------------------------ 5. and 6. training


def _stores(tmp_path, tiny_plates, plates=("P1", "P2")):
    paths, features = tiny_plates
    stores = []
    for p in plates:
        stores.append(tmp_path / "cellstore" / p)
        pack_cell_store(paths[p], features, stores[-1], p, annotation())
    return stores, features


SMALL = dict(epochs=2, lr=1e-3, batch_compounds=8, cells_mean=40, cells_std=10, cells_min=10, cell_hidden=16,
             head_hidden=8, out_dim=8, seed=3, eval_every=1)


def test_05_one_training_compound_left_is_an_error_not_a_random_model(tmp_path, tiny_plates):
    stores, features = _stores(tmp_path, tiny_plates)
    compounds = sorted(set(pd.read_parquet(tiny_plates[0]["P1"])["Metadata_broad_sample"]) - {"DMSO"})
    settings = train_settings(**SMALL, split=compound_split(validation=compounds[1:]))
    with pytest.raises(InputError, match="1 training compound.*at least 2"):
        train_model(stores, features, tmp_path / "m" / "model.pt", tmp_path / "m" / "log.csv", settings)
    assert not (tmp_path / "m" / "model.pt").exists()


def test_05_zero_validation_compounds_warn_and_keep_the_last_epoch(tmp_path, tiny_plates, caplog):
    stores, features = _stores(tmp_path, tiny_plates)
    settings = train_settings(**SMALL, split=compound_split(validation=[]))
    with caplog.at_level(logging.INFO):
        result = train_model(stores, features, tmp_path / "model.pt", tmp_path / "log.csv", settings)
    assert "no validation compound" in caplog.text and "last evaluated epoch, 1" in caplog.text
    assert "selection score" not in caplog.text and result["best_score"] is None and result["best_epoch"] == 1
    # the tables say it too
    from cytoagg.evaluate.summarize import summarize_plates

    ap = tmp_path / "ap.parquet"
    pd.DataFrame({"method": "model", "profile_pipeline": "raw", "plate": ["P1"] * 4, "well": ["A01", "A02", "A03", "A04"], "perturbation": ["a", "a", "b", "b"],
                  "average_precision": [1.0, 0.5, 1.0, 0.5], "precision_at_r": [1.0, 0.0, 1.0, 0.0],
                  "n_positives": [1] * 4, "n_candidates": [3] * 4}).to_parquet(ap)
    settings = summarize_settings({"P1": "train"}, null_size=100, splits=splits({"P1": "train"}, validation=[]))
    mean = tmp_path / "ap_mean.parquet"
    pd.read_parquet(ap).assign(method="mean").to_parquet(mean)
    summarize_plates([ap, mean], tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "c.csv",
                     tmp_path / "v.csv", tmp_path / "v.md", settings)
    for md in ((tmp_path / "t.md").read_text(), (tmp_path / "v.md").read_text()):
        assert "no validation compound" in md and "no validation plate" in md and "a single plate" in md


def test_06_validation_compounds_on_no_plate_are_named(tmp_path, tiny_plates):
    stores, features = _stores(tmp_path, tiny_plates)
    settings = train_settings(**SMALL, split=compound_split(validation=["CPD-0001", "CPD-9999", "cpd-0002"]))
    with pytest.raises(InputError, match=r"compounds.validation names 2 compound\(s\).*\['CPD-9999', 'cpd-0002'\]"):
        train_model(stores, features, tmp_path / "model.pt", tmp_path / "log.csv", settings)


# ------------------------------------------------------------------------------------------ 7. and 8. metadata of wells


def test_07_blank_perturbation_in_control_wells_is_an_error_naming_them(tmp_path):
    src = single_cell_plate(tmp_path / "plate.parquet", {"A01": None, "A02": "cpd1", "A03": "cpd1", "A04": None})
    with pytest.raises(InputError, match=r"empty in well\(s\) \['A01', 'A04'\]"):
        ingest(src, tmp_path / "out.parquet", perturbation_col="Metadata_broad_sample", negcon_value="DMSO")
    assert_no_output(tmp_path / "out.parquet")


def test_07_a_well_profile_is_never_written_without_its_perturbation(tmp_path):
    from cytoagg.profiles.aggregate import aggregate_plate

    path = tmp_path / "normalized.parquet"
    df = pd.read_parquet(single_cell_plate(tmp_path / "plate.parquet", {"A01": "x", "A02": "y"}))
    df.loc[0, "Metadata_broad_sample"] = "z"  # one cell of A01 says otherwise
    write_profiles(df, path)
    with pytest.raises(InputError, match=r"differs between the cells of well\(s\) \['A01'\]"):
        aggregate_plate(path, FEATURES, {"mean": tmp_path / "mean.parquet"}, "P1", annotation())
    assert_no_output(tmp_path / "mean.parquet")


def test_07_missing_metadata_values_do_not_drop_the_column(tmp_path):
    """pandas 3 keeps NaN through astype(str) and NaN != NaN: a column with gaps was dropped from the profiles."""
    from cytoagg.io.cells import well_metadata

    meta = pd.DataFrame({"Metadata_Well": ["A01", "A01", "A02"], "Metadata_moa": [None, None, "kinase"]})
    assert list(well_metadata(meta, "Metadata_Well")["Metadata_moa"].fillna("-")) == ["-", "kinase"]


def test_08_plate_with_only_negative_controls_is_an_error(tmp_path):
    src = single_cell_plate(tmp_path / "plate.parquet", {"A01": "DMSO", "A02": "DMSO"})
    with pytest.raises(InputError, match="every well of plate P1 is a negative control"):
        ingest(src, tmp_path / "out.parquet", perturbation_col="Metadata_broad_sample", negcon_value="DMSO")
    assert_no_output(tmp_path / "out.parquet")


# ------------------------------------------------------------------------------------------ 14. damaged resume state


def test_14_damaged_resume_state_names_the_file_and_the_way_out(tmp_path, tiny_plates):
    stores, features = _stores(tmp_path, tiny_plates)
    state = tmp_path / "m" / "resume_state.pt"
    state.parent.mkdir()
    state.write_bytes(b"PK\x03\x04 not a torch file")
    with pytest.raises(InputError) as err:
        train_model(stores, features, tmp_path / "m" / "model.pt", tmp_path / "m" / "log.csv", train_settings(**SMALL))
    assert str(state) in str(err.value) and "delete it" in str(err.value) and "weights_only" not in str(err.value)
    from cytoagg.model.checkpoint import load_checkpoint

    with pytest.raises(InputError) as err:
        load_checkpoint(state)
    assert "weights_only" not in str(err.value)


# ------------------------------------------------------------------------------------------ 9. set sizes (no hang)


def test_09_set_sizes_that_can_never_be_drawn_are_refused_not_looped():
    with pytest.raises(ValueError, match="cells_mean=10, cells_std=0 and cells_min=20"):
        SetSizeSchedule(10, 0, 20)
    with pytest.raises(ValueError, match="odd|0 of the draws|cells_min"):
        SetSizeSchedule(21, 0, 20)  # always 21: odd
    assert SetSizeSchedule(20, 0, 20).draw(np.random.default_rng(0)) == 20


# ------------------------------------------------------------------------------------------ config errors before any job


# The demo's second-order model (config.yaml's train:); the tiny config trains the paper's network.
SECOND_ORDER = {"pooling": "meancov", "cell_activation": "none", "cell_hidden": "auto", "init": "pca_negcon", "cell_lr": 0,
                "plate_norm": "negcon_mad", "head": "parts"}
NO_SALIENCY = {"enabled": False}


def dry_run(tmp_path, config: dict) -> subprocess.CompletedProcess:
    wd = copy_workflow(tmp_path)
    (wd / "bad.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", "tiny.yaml", "bad.yaml"], cwd=wd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("config, message", [
    ({"train": {"cells_mean": 10, "cells_std": 0, "cells_min": 20}}, "train.cells_mean (10), cells_std (0) and cells_min (20)"),  # 9
    ({"results": ""}, "should be non-empty"),  # 10
    ({"results": "/"}, "config key results: '/' would write into the file system root"),  # 10
    ({"feature_select": {"corr_threshold": 5}}, "5 is greater than the maximum of 1"),  # 11
    ({"normalize": {"epsilon": -1}}, "-1 is less than the minimum of 0"),  # 11
    ({"dataset": {"path": "data/{batch}/{plate}.sqlite"}}, "config key dataset.path: unknown placeholder {batch}"),  # 12
    ({"metadata": {"perturbation": "Metadata_Well"}}, "metadata.well and metadata.perturbation both name column"),  # 15
    ({"metadata": {"perturbation": "broad_sample"}}, "did you mean 'Metadata_broad_sample'"),  # 16
    ({"compounds": {"validation": 1.0}}, "config key compounds.validation: 1 holds every compound out"),  # 17
    ({"metadata": {"negcon_value": None}, "evaluate": {"pipelines": ["raw"]}, "train": SECOND_ORDER, "saliency": NO_SALIENCY},
     "config key train.plate_norm needs metadata.negcon_value"),  # 14
    ({"train": {**SECOND_ORDER, "plate_norm": "none"}, "saliency": NO_SALIENCY}, "config key train.head 'parts' needs train.plate_norm"),  # 14
    ({"train": SECOND_ORDER}, "config key saliency.enabled: the saliencies (V0, V1) are defined for the paper's"),
], ids=["9-set-size", "10-empty-results", "10-root-results", "11-corr-threshold", "11-epsilon", "12-wildcard",
        "15-perturbation-is-well", "16-close-match", "17-all-held-out", "14-no-negcon", "14-parts-without-norm",
        "saliency-second-order"])
def test_config_errors_stop_before_any_job(tmp_path, config, message):
    proc = dry_run(tmp_path, config)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and message in out, out[-2000:]
    assert "Traceback" not in out


def test_16_metadata_columns_checked_against_the_first_real_plate(tmp_path):
    """NF1's platemap calls it genotype; ingest writes Metadata_genotype. A bare name is offered its match."""
    config = {
        "dataset": {"path": str(NF1 / "{plate}.sqlite"), "platemap": str(NF1 / "platemap_NF1_CP.csv")},
        "plates": {"train": ["all_cellprofiler"], "validation": []},
        "metadata": {"perturbation": "genotype", "negcon_value": None},
        "evaluate": {"pipelines": ["raw"]},
        # no negative controls: the paper's model (the default one normalizes against them)
        "train": {"pooling": "sum", "cell_activation": "leaky_relu", "cell_hidden": 64, "init": "random",
                  "cell_lr": None, "plate_norm": "none", "head": "paper", "part_lr": None},
    }
    (tmp_path / "data").mkdir()
    proc = dry_run(tmp_path / "data", config)
    assert proc.returncode != 0
    assert "config key metadata.perturbation: column 'genotype'" in proc.stdout + proc.stderr
    assert "did you mean 'Metadata_genotype'" in proc.stdout + proc.stderr
