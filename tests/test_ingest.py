"""Ingest on real plates (SQLite, CellProfiler CSV folders, single-cell Parquet/CSV), checked against direct reads."""

from __future__ import annotations

import gzip
import logging
import shutil
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

try:
    import cytoagg  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cytoagg.io.files import InputError
from cytoagg.ingest import ingest_plate
from cytoagg.io.platemap import platemap_file
from helpers import annotation, ingest_settings

DATA = Path(__file__).parent / "data" / "realdata"
NF1 = DATA / "nf1_schwann_plate1_sqlite"
NF1_SQLITE = NF1 / "all_cellprofiler.sqlite"
JUMP = DATA / "jump_target2_BR00121431_csv"
FIBROSIS = DATA / "fibrosis_dmso_4plates" / "localhost240927060001_test.parquet"
COMPARTMENTS = ("Cells", "Cytoplasm", "Nuclei")


def ingest(source, out, plate, *, fmt="auto", barcode_platemap=None, platemap_dir=None, platemap=None,
           plate_col="Metadata_Plate", well_col="Metadata_Well", perturbation_col="Metadata_Plate", negcon_value=None,
           chunk_rows=50_000, workers=None, **kw):
    """ingest_plate with keyword settings; the platemap resolved from the barcode map as the workflow does.

    The format tests' plates have no treatment column (or one value), so by default the plate column stands in
    for the perturbation and there are no negative controls; the NF1 tests use its genotype."""
    path = platemap_file(plate, barcode_platemap=barcode_platemap, platemap_dir=platemap_dir, platemap=platemap)
    ann = annotation(plate_col=plate_col, well_col=well_col, perturbation_col=perturbation_col,
                     negcon_col=perturbation_col, negcon_value=negcon_value)
    settings = ingest_settings(annotation=ann, format=fmt, platemap=None if path is None else str(path), **kw)
    return ingest_plate(source, out, plate, settings, chunk_rows=chunk_rows, workers=workers)


def well(name: str) -> str:
    """Independent of cytoagg: 'C6' -> 'C06'."""
    return f"{name[0].upper()}{int(name[1:]):02d}"


def ingest_nf1(out: Path, **kwargs) -> dict:
    return ingest(
        NF1_SQLITE, out, plate="001", perturbation_col="Metadata_genotype",
        barcode_platemap=NF1 / "barcode_platemap.csv", platemap_dir=NF1, **kwargs,
    )


def assert_layout(path: Path) -> tuple[list[str], list[str]]:
    """Metadata_* strings, then float32 features without bookkeeping columns; wells contiguous and sorted."""
    schema = pq.read_schema(path)
    meta = [f.name for f in schema if f.name.startswith("Metadata_")]
    feats = [f.name for f in schema if not f.name.startswith("Metadata_")]
    assert schema.names == meta + feats
    assert all(schema.field(m).type == pa.string() for m in meta)
    assert all(schema.field(f).type == pa.float32() for f in feats)
    assert feats and all(f.startswith(tuple(f"{c}_" for c in COMPARTMENTS)) for f in feats)
    assert not [f for f in feats if f.endswith(("_Number_Object_Number", "_ObjectNumber")) or "_Parent_" in f
                or "_Location_" in f]
    wells = pq.read_table(path, columns=["Metadata_Well"]).column(0).to_pylist()
    assert wells == sorted(wells)
    return meta, feats


# ---------------------------------------------------------------- NF1 SQLite


@pytest.fixture(scope="module")
def nf1_reference() -> pd.DataFrame:
    """pycytominer's merge done by hand: cytoplasm -> cells and nuclei by the cytoplasm's parent columns."""
    with sqlite3.connect(NF1_SQLITE) as con:
        image = pd.read_sql("SELECT ImageNumber, Image_Metadata_Well FROM Per_Image", con)
        cyto, cells, nuclei = (pd.read_sql(f"SELECT * FROM Per_{t}", con) for t in ("Cytoplasm", "Cells", "Nuclei"))
    ref = cyto.merge(cells, left_on=["ImageNumber", "Cytoplasm_Parent_Cells"],
                     right_on=["ImageNumber", "Cells_Number_Object_Number"])
    ref = ref.merge(nuclei, left_on=["ImageNumber", "Cytoplasm_Parent_Nuclei"],
                    right_on=["ImageNumber", "Nuclei_Number_Object_Number"])
    return ref.merge(image, on="ImageNumber")


@pytest.fixture(scope="module")
def nf1(tmp_path_factory) -> tuple[dict, pd.DataFrame, Path]:
    out = tmp_path_factory.mktemp("nf1") / "plate.parquet"
    summary = ingest_nf1(out)
    return summary, pd.read_parquet(out), out


def test_nf1_counts_match_sql(nf1):
    summary, df, _ = nf1
    with sqlite3.connect(NF1_SQLITE) as con:
        rows = con.execute(
            """SELECT i.Image_Metadata_Well, COUNT(*) FROM Per_Cytoplasm c
               JOIN Per_Cells ce ON ce.ImageNumber = c.ImageNumber AND ce.Cells_Number_Object_Number = c.Cytoplasm_Parent_Cells
               JOIN Per_Nuclei n ON n.ImageNumber = c.ImageNumber AND n.Nuclei_Number_Object_Number = c.Cytoplasm_Parent_Nuclei
               JOIN Per_Image i ON i.ImageNumber = c.ImageNumber
               GROUP BY i.Image_Metadata_Well"""
        ).fetchall()
    expected = {well(w): n for w, n in rows}
    assert summary["cells_per_well"] == expected
    assert df.groupby("Metadata_Well").size().to_dict() == expected
    assert summary["n_cells"] == len(df) == sum(expected.values()) == 242
    assert summary["n_wells"] == 8


def test_nf1_values_match_direct_merge(nf1, nf1_reference):
    _, df, path = nf1
    _, feats = assert_layout(path)
    assert len(feats) == df.shape[1] - len([c for c in df if c.startswith("Metadata_")])
    ref = nf1_reference.assign(
        Metadata_ImageNumber=nf1_reference["ImageNumber"].astype(str),
        Metadata_ObjectNumber=nf1_reference["Cells_Number_Object_Number"].astype(str),
    )
    joined = df.merge(ref, on=["Metadata_ImageNumber", "Metadata_ObjectNumber"], suffixes=("", "_ref"))
    assert len(joined) == len(df) == len(ref)
    assert (joined["Metadata_Well"] == joined["Image_Metadata_Well"].map(well)).all()
    for col in ["Cells_AreaShape_Area", "Cytoplasm_Intensity_MeanIntensity_GFP", "Nuclei_AreaShape_Area",
                "Nuclei_Texture_Variance_RFP_3_00_256"]:
        np.testing.assert_array_equal(joined[col].to_numpy(), joined[f"{col}_ref"].to_numpy(np.float32))


def test_nf1_rows_ordered_by_well_then_image_then_object(nf1):
    _, df, _ = nf1
    keys = pd.DataFrame({"well": df["Metadata_Well"], "image": df["Metadata_ImageNumber"].astype(int),
                         "object": df["Metadata_ObjectNumber"].astype(int)})
    assert keys.equals(keys.sort_values(["well", "image", "object"]))


def test_nf1_platemap_annotations(nf1):
    summary, df, _ = nf1
    platemap = pd.read_csv(NF1 / "platemap_NF1_CP.csv")
    expected = dict(zip(platemap["well_position"].map(well), platemap["genotype"]))
    got = df.groupby("Metadata_Well")["Metadata_genotype"].agg(lambda s: set(s)).to_dict()
    assert got == {w: {g} for w, g in expected.items()}
    assert set(expected.values()) == {"WT", "Null"}
    assert (df["Metadata_Plate"] == "001").all()
    assert "well_position" not in df and "Metadata_well_position" not in df
    assert {"Metadata_gene_name", "Metadata_WellRow", "Metadata_WellCol", "Metadata_Site"} <= set(df.columns)
    assert summary["unmatched_wells"] == {"platemap_without_cells": [], "cells_without_platemap": {}}


def test_nf1_zero_padded_barcode_is_matched_with_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        ingest_nf1(tmp_path / "plate.parquet")
    assert any("'001'" in r.getMessage() and "'1'" in r.getMessage() for r in caplog.records)


def test_nf1_small_chunks_give_the_same_file(nf1, tmp_path):
    _, df, _ = nf1
    out = tmp_path / "chunked.parquet"
    ingest_nf1(out, chunk_rows=7)
    meta = pq.read_metadata(out)
    assert meta.num_row_groups > 1
    assert max(meta.row_group(i).num_rows for i in range(meta.num_row_groups)) <= 7
    pd.testing.assert_frame_equal(pd.read_parquet(out), df)


def test_platemap_mismatches_are_reported(tmp_path, caplog):
    platemap = pd.read_csv(NF1 / "platemap_NF1_CP.csv", dtype=str)
    platemap = platemap[platemap["well_position"] != "C7"]
    platemap = pd.concat([platemap, pd.DataFrame([["G", "8", "G8", "NF1", "WT"]], columns=platemap.columns)])
    path = tmp_path / "platemap.txt"
    platemap.to_csv(path, sep="\t", index=False)
    with caplog.at_level(logging.WARNING):
        summary = ingest(NF1_SQLITE, tmp_path / "plate.parquet", plate="001", platemap=path)
    assert summary["unmatched_wells"] == {"platemap_without_cells": ["G08"], "cells_without_platemap": {"C07": 21}}
    assert summary["n_dropped_cells"] == 21 and summary["n_cells"] == 242 - 21
    assert "C07" not in summary["cells_per_well"]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "G08" in messages and "C07" in messages


def features_file(path: Path, names: list[str]) -> str:
    path.write_text("# features to ingest\n\n" + "".join(f"{n}\n" for n in names))
    return str(path)


def test_explicit_features_and_blocklist(tmp_path):
    keep = ["Nuclei_AreaShape_Area", "Cells_AreaShape_Area", "Cells_AreaShape_Perimeter"]
    summary = ingest_nf1(tmp_path / "plate.parquet", features_file=features_file(tmp_path / "keep.txt", keep),
                         blocklist=["Cells_AreaShape_Perimeter"])
    names = pq.read_schema(tmp_path / "plate.parquet").names
    assert [n for n in names if not n.startswith("Metadata_")] == keep[:2]
    assert summary["dropped_features"]["blocklist"] == ["Cells_AreaShape_Perimeter"]
    assert summary["n_features"] == 2


# ---------------------------------------------------------------- JUMP CellProfiler CSV folders


@pytest.fixture(scope="module")
def jump_folder(tmp_path_factory) -> Path:
    """The stored copy is gzip-compressed; CellProfiler writes plain CSV, so that is what is tested."""
    root = tmp_path_factory.mktemp("jump") / "BR00121431"
    for gz in JUMP.glob("*/*.csv.gz"):
        target = root / gz.parent.name / gz.name.removesuffix(".gz")
        target.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(gz, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return root


def jump_reference(site: Path) -> pd.DataFrame:
    tables = {}
    for c in COMPARTMENTS:
        t = pd.read_csv(site / f"{c}.csv")
        tables[c] = t.rename(columns={k: f"{c}_{k}" for k in t.columns if k != "ImageNumber"})
    ref = tables["Cytoplasm"].merge(tables["Cells"], left_on=["ImageNumber", "Cytoplasm_Parent_Cells"],
                                    right_on=["ImageNumber", "Cells_ObjectNumber"])
    return ref.merge(tables["Nuclei"], left_on=["ImageNumber", "Cytoplasm_Parent_Nuclei"],
                     right_on=["ImageNumber", "Nuclei_ObjectNumber"])


def test_jump_csv_folders(jump_folder, tmp_path):
    out = tmp_path / "plate.parquet"
    summary = ingest(jump_folder, out, plate="BR00121431")
    assert summary["cells_per_well"] == {"A01": 89, "A02": 36}
    _, feats = assert_layout(out)
    df = pd.read_parquet(out)
    assert (df["Metadata_Plate"] == "BR00121431").all()
    for site, w in [("BR00121431-A01-1", "A01"), ("BR00121431-A02-1", "A02")]:
        ref = jump_reference(jump_folder / site)
        got = df[df["Metadata_Well"] == w]
        assert len(got) == len(ref) == len(pd.read_csv(jump_folder / site / "Cells.csv"))
        assert got["Metadata_ObjectNumber"].tolist() == ref["Cells_ObjectNumber"].astype(str).tolist()
        for col in ["Cells_AreaShape_Area", "Cytoplasm_Intensity_MeanIntensity_Mito", "Nuclei_AreaShape_Area",
                    "Nuclei_Texture_Variance_DNA_3_00_256"]:
            assert col in feats
            np.testing.assert_array_equal(got[col].to_numpy(), ref[col].to_numpy(np.float32))


def write_site(folder: Path, well: str, image_numbers: list[int], rng, n: int = 12) -> None:
    """A CellProfiler site folder: objects in shuffled order, a Cytoplasm whose parents are missing (0, blank, an
    object that does not exist), and cells of an image that Image.csv does not list."""
    folder.mkdir(parents=True)
    pd.DataFrame({"ImageNumber": image_numbers, "Metadata_Plate": "P1", "Metadata_Well": well}).to_csv(
        folder / "Image.csv", index=False)
    images = np.repeat([*image_numbers, 99], n)
    objects = np.tile(np.arange(1, n + 1), len(image_numbers) + 1)
    for c in COMPARTMENTS:
        df = pd.DataFrame({"ImageNumber": images, "ObjectNumber": objects,
                           "AreaShape_Area": rng.integers(10, 500, len(images)),
                           "Intensity_MeanIntensity_DNA": rng.standard_normal(len(images))})
        if c == "Cytoplasm":
            df["Parent_Cells"] = df["ObjectNumber"].astype(object)
            df["Parent_Nuclei"] = rng.permutation(df["ObjectNumber"].to_numpy())
            df.loc[1, "Parent_Cells"], df.loc[2, "Parent_Cells"], df.loc[3, "Parent_Nuclei"] = 0, None, n + 5
        if c == "Nuclei":
            df.loc[rng.choice(len(df), 5), "Intensity_MeanIntensity_DNA"] = np.nan
        df.sample(frac=1, random_state=int(rng.integers(1000))).to_csv(folder / f"{c}.csv", index=False)


def test_csv_folders_merged_as_pycytominer_merges(tmp_path, monkeypatch):
    """Per-site folders, each numbering its images from 1, merged by object numbers: the same cells and values as
    pandas' inner merges (rows without a parent dropped, blank parents matching nothing), ordered by well, image,
    object; cells of an image missing from Image.csv counted and dropped; in slices of one site here."""
    from cytoagg.ingest import single_cell

    rng = np.random.default_rng(3)
    plate = tmp_path / "plate"
    for name, w, numbers in [("s1", "B02", [1]), ("s2", "A01", [1, 2]), ("s3", "A01", [3]), ("s4", "C10", [1])]:
        write_site(plate / name, w, numbers, rng)
    monkeypatch.setattr(single_cell, "SLICE_BYTES", 1)
    out = tmp_path / "out.parquet"
    summary = ingest(plate, out, plate="P1", max_cells_without_image=0.5)
    got = pd.read_parquet(out)
    refs = []
    for folder in sorted(plate.iterdir()):
        tables = {c: pd.read_csv(folder / f"{c}.csv").rename(columns=lambda k, c=c: k if k == "ImageNumber" else f"{c}_{k}")
                  for c in COMPARTMENTS}
        ref = tables["Cytoplasm"].merge(tables["Cells"], left_on=["ImageNumber", "Cytoplasm_Parent_Cells"],
                                        right_on=["ImageNumber", "Cells_ObjectNumber"])
        ref = ref.merge(tables["Nuclei"], left_on=["ImageNumber", "Cytoplasm_Parent_Nuclei"],
                        right_on=["ImageNumber", "Nuclei_ObjectNumber"])
        ref = ref.merge(pd.read_csv(folder / "Image.csv"), on="ImageNumber")
        refs.append(ref.sort_values(["ImageNumber", "Cytoplasm_ObjectNumber"]))
    ref = pd.concat(refs).sort_values("Metadata_Well", kind="stable")
    assert summary["n_cells"] == len(ref) == len(got)
    assert sum(summary["cells_per_well"].values()) == len(ref)
    assert got["Metadata_Well"].tolist() == ref["Metadata_Well"].tolist()
    assert got["Metadata_ImageNumber"].tolist() == ref["ImageNumber"].astype(str).tolist()
    assert got["Metadata_ObjectNumber"].tolist() == ref["Cells_ObjectNumber"].astype(str).tolist()
    feats = [c for c in got if not c.startswith("Metadata_")]
    assert len(feats) == 6
    np.testing.assert_array_equal(got[feats].to_numpy(), ref[feats].to_numpy(np.float32))


@pytest.mark.parametrize("name, message", [("Nuclei.csv", "repeats within ImageNumber"),
                                           ("Cytoplasm.csv", "repeats within ImageNumber"),  # the hub
                                           ("Image.csv", "has more than one row")])
def test_csv_folder_repeated_object_or_image_is_an_input_error(tmp_path, name, message):
    rng = np.random.default_rng(4)
    write_site(tmp_path / "plate" / "s1", "A01", [1], rng)
    path = tmp_path / "plate" / "s1" / name
    df = pd.read_csv(path)
    pd.concat([df, df.iloc[[len(df) - 1]]]).to_csv(path, index=False)
    assert_rejected(tmp_path / "plate", tmp_path / "out.parquet", str(path), message, plate="P1",
                    max_cells_without_image=0.5)


# ---------------------------------------------------------------- single-cell Parquet and CSV


@pytest.fixture(scope="module")
def fibrosis(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("fibrosis") / "plate.parquet"
    return ingest(FIBROSIS, out, plate="plate2", chunk_rows=100), out


def test_fibrosis_parquet_passthrough(fibrosis):
    summary, out = fibrosis
    _, feats = assert_layout(out)
    df = pd.read_parquet(out)
    ref = pd.read_parquet(FIBROSIS).sort_values("Metadata_Well", kind="stable")
    assert summary["cells_per_well"] == ref.groupby("Metadata_Well").size().to_dict()
    assert summary["n_cells"] == len(ref) == 458
    assert (df["Metadata_Plate"] == "plate2").all()
    assert df["Metadata_cell_type"].tolist() == ref["Metadata_cell_type"].tolist()
    assert df["Metadata_ImageNumber"].tolist() == ref["Metadata_ImageNumber"].astype(str).tolist()
    np.testing.assert_array_equal(df[feats].to_numpy(), ref[feats].to_numpy(np.float32))


def test_single_cell_csv_matches_parquet(fibrosis, tmp_path):
    _, parquet_out = fibrosis
    csv = tmp_path / "cells.csv"
    pd.read_parquet(FIBROSIS).to_csv(csv, index=False)
    out = tmp_path / "plate.parquet"
    ingest(csv, out, plate="plate2", chunk_rows=100)
    a, b = pd.read_parquet(out), pd.read_parquet(parquet_out)
    feats = [c for c in b if not c.startswith("Metadata_")]
    assert list(a.columns) == list(b.columns)
    np.testing.assert_array_equal(a[feats].to_numpy(), b[feats].to_numpy())
    pd.testing.assert_frame_equal(a[["Metadata_Well", "Metadata_cell_type"]], b[["Metadata_Well", "Metadata_cell_type"]])
    assert not list(tmp_path.glob(".ingest-*"))


def single_cell_frame(n: int, seed: int = 1) -> pd.DataFrame:
    """pycytominer-like single cells in acquisition order (wells out of order): integer and float features, NaN."""
    rng = np.random.default_rng(seed)
    ref = pd.DataFrame({"Image_Metadata_Well": rng.choice(["B02", "A01", "A10", "C03"], n), "Image_Metadata_Plate": "P1",
                        "Metadata_ImageNumber": rng.integers(1, 9, n), "Cells_AreaShape_Area": rng.integers(50, 900, n)})
    for j in range(8):
        ref[f"Cells_Intensity_Mean_{j}"] = rng.standard_normal(n) * 10 ** j
    ref.loc[rng.choice(n, 50), "Cells_Intensity_Mean_3"] = np.nan
    return ref


def assert_single_cells(out: Path, ref: pd.DataFrame) -> None:
    """``out`` holds ``ref``'s cells in well order (stable), features as float32."""
    got = pd.read_parquet(out)
    ref = ref.sort_values("Image_Metadata_Well", kind="stable")
    feats = [c for c in ref if c.startswith("Cells_")]
    assert got["Metadata_Well"].tolist() == ref["Image_Metadata_Well"].tolist()
    assert got["Metadata_ImageNumber"].tolist() == ref["Metadata_ImageNumber"].astype(str).tolist()
    assert (got[feats].dtypes == np.float32).all()
    np.testing.assert_array_equal(got[feats].to_numpy(), ref[feats].to_numpy(np.float32))


def count_reads(monkeypatch, method: str) -> list[int]:
    """The number of columns of each call of ``pq.ParquetFile.<method>``."""
    reads, original = [], getattr(pq.ParquetFile, method)

    def counted(self, *args, columns=None, **kw):
        reads.append(len(columns))
        return original(self, *args, columns=columns, **kw)

    monkeypatch.setattr(pq.ParquetFile, method, counted)
    return reads


def test_one_row_group_out_of_well_order_is_decoded_once(tmp_path, monkeypatch):
    """pycytominer writes a plate as one row group, in acquisition order: read chunk by chunk, it would be decoded
    once per chunk. It is read once instead (metadata, then a block of 3 feature columns at a time), the features
    spilled in well order and read back in slices of 1,000 rows: the same as reading it whole."""
    from cytoagg.ingest import single_cell

    n = 3000
    ref = single_cell_frame(n)
    src = tmp_path / "sc.parquet"
    ref.to_parquet(src, index=False)  # one row group
    assert pq.ParquetFile(src).metadata.num_row_groups == 1
    monkeypatch.setattr(single_cell, "BLOCK_BYTES", 3 * 8 * n)
    monkeypatch.setattr(single_cell, "SLICE_BYTES", 1)  # slices of 1,000 rows
    reads, by_group = count_reads(monkeypatch, "read"), count_reads(monkeypatch, "read_row_group")
    out = tmp_path / "out" / "plate.parquet"
    ingest(src, out, plate="P1", chunk_rows=1000)  # 3 chunks: 3 passes chunk by chunk
    assert reads == [1, 3, 3, 3, 3] and not by_group  # the well column; 3 metadata; 9 features in 3 blocks
    assert_single_cells(out, ref)
    assert not list(out.parent.glob(".ingest-*"))  # the spill file removed


def test_spilled_text_feature_is_an_input_error_naming_it(tmp_path):
    ref = single_cell_frame(300)
    ref["Cells_Intensity_Mean_5"] = ref["Cells_Intensity_Mean_5"].astype(str)  # numbers as text: read as numbers
    src = tmp_path / "sc.parquet"
    ref.to_parquet(src, index=False)
    ingest(src, tmp_path / "ok.parquet", plate="P1", chunk_rows=100)
    assert_single_cells(tmp_path / "ok.parquet", ref.astype({"Cells_Intensity_Mean_5": float}))
    ref.loc[7, "Cells_Intensity_Mean_5"] = "n/a?"
    ref.to_parquet(src, index=False)
    assert_rejected(src, tmp_path / "bad.parquet", "Cells_Intensity_Mean_5", "'n/a?'", plate="P1", chunk_rows=100)
    assert not list(tmp_path.glob(".ingest-*"))


def test_row_groups_in_well_order_are_read_chunk_by_chunk(tmp_path, monkeypatch):
    """Row groups already in well order are read chunk by chunk (each row group once, a block of columns at a
    time), without a spill file."""
    from cytoagg.ingest import single_cell

    n = 3000
    ref = single_cell_frame(n).sort_values("Image_Metadata_Well", kind="stable")
    src = tmp_path / "sc.parquet"
    ref.to_parquet(src, index=False, row_group_size=500)
    monkeypatch.setattr(single_cell, "BLOCK_BYTES", 6 * 8 * 500)
    reads, whole = count_reads(monkeypatch, "read_row_group"), count_reads(monkeypatch, "read")
    out = tmp_path / "out.parquet"
    ingest(src, out, plate="P1", chunk_rows=1000)
    assert reads == [6, 6] * 6 and whole == [1]  # 6 row groups, each once, in 2 blocks of the 12 columns
    assert_single_cells(out, ref)


# ---------------------------------------------------------------- bad input


def assert_rejected(source, out: Path, *names: str, **kwargs) -> None:
    kwargs.setdefault("plate", "001")
    with pytest.raises(InputError) as err:
        ingest(source, out, **kwargs)
    for name in (str(source), *names):
        assert name in str(err.value)
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*"))


def test_text_file_named_sqlite(tmp_path):
    bad = tmp_path / "plate.sqlite"
    bad.write_text("ImageNumber,Cells_AreaShape_Area\n1,2\n")
    assert_rejected(bad, tmp_path / "out.parquet")


def test_truncated_sqlite(tmp_path):
    bad = tmp_path / "plate.sqlite"
    bad.write_bytes(NF1_SQLITE.read_bytes()[: NF1_SQLITE.stat().st_size // 2])
    assert_rejected(bad, tmp_path / "out.parquet", "truncated")


def test_truncated_parquet(tmp_path):
    bad = tmp_path / "plate.parquet"
    bad.write_bytes(FIBROSIS.read_bytes()[:100_000])
    assert_rejected(bad, tmp_path / "out.parquet", "truncated")


def test_missing_compartment_table(tmp_path):
    bad = tmp_path / "plate.sqlite"
    shutil.copy(NF1_SQLITE, bad)
    with sqlite3.connect(bad) as con:
        con.execute("DROP TABLE Per_Nuclei")
    assert_rejected(bad, tmp_path / "out.parquet", "Per_Nuclei")


def test_missing_well_column_sqlite(tmp_path):
    bad = tmp_path / "plate.sqlite"
    shutil.copy(NF1_SQLITE, bad)
    with sqlite3.connect(bad) as con:
        con.execute("ALTER TABLE Per_Image RENAME COLUMN Image_Metadata_Well TO Image_Metadata_Position")
    assert_rejected(bad, tmp_path / "out.parquet", "Metadata_Well")


def test_missing_well_column_parquet(tmp_path):
    bad = tmp_path / "cells.parquet"
    pq.write_table(pq.read_table(FIBROSIS).drop_columns(["Metadata_Well"]), bad)
    assert_rejected(bad, tmp_path / "out.parquet", "Metadata_Well")


def test_missing_explicit_feature(tmp_path):
    names = features_file(tmp_path / "keep.txt", ["Cells_AreaShape_Area", "Cells_AreaShape_NotThere"])
    assert_rejected(NF1_SQLITE, tmp_path / "out.parquet", "Cells_AreaShape_NotThere", features_file=names)


def test_empty_features_file(tmp_path):
    names = features_file(tmp_path / "e.txt", [])
    with pytest.raises(InputError, match=f"{names}: the list is empty"):
        ingest(NF1_SQLITE, tmp_path / "out.parquet", "001", features_file=names)
    assert not (tmp_path / "out.parquet").exists()


def test_missing_compartment_csv(jump_folder, tmp_path):
    bad = tmp_path / "plate"
    shutil.copytree(jump_folder, bad)
    (bad / "BR00121431-A02-1" / "Nuclei.csv").unlink()
    with pytest.raises(InputError, match="Nuclei.csv"):
        ingest(bad, tmp_path / "out.parquet", plate="BR00121431")
    assert not (tmp_path / "out.parquet").exists()


# ---------------------------------------------------------------- SQLite read by worker processes


def merged_by_hand(path: Path) -> pd.DataFrame:
    """The compartments merged as pycytominer does (independent of cytoagg), ordered by well, image, object."""
    with sqlite3.connect(path) as con:
        image = pd.read_sql("SELECT ImageNumber, Image_Metadata_Well FROM Per_Image", con)
        cyto, cells, nuclei = (pd.read_sql(f"SELECT * FROM Per_{t}", con) for t in ("Cytoplasm", "Cells", "Nuclei"))
    ref = cyto.merge(cells, left_on=["ImageNumber", "Cytoplasm_Parent_Cells"],
                     right_on=["ImageNumber", "Cells_Number_Object_Number"])
    ref = ref.merge(nuclei, left_on=["ImageNumber", "Cytoplasm_Parent_Nuclei"],
                    right_on=["ImageNumber", "Nuclei_Number_Object_Number"])
    ref = ref.merge(image, on="ImageNumber")
    ref["well"] = ref["Image_Metadata_Well"].map(well)
    return ref.sort_values(["well", "ImageNumber", "Cytoplasm_Number_Object_Number"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def shuffled_sqlite(tmp_path_factory) -> Path:
    """A synthetic CellProfiler plate whose ImageNumbers do not follow the wells (acquisition order)."""
    from cytoagg.synthetic.screen import write_cellprofiler_sqlite
    from helpers import synthetic_spec

    spec = synthetic_spec(n_compounds=6, replicates=2, negcon_wells=4, cells_per_well=25, features_per_compartment=4,
                          n_latent=3)
    path = tmp_path_factory.mktemp("sqlite") / "P1.sqlite"
    write_cellprofiler_sqlite(spec, "P1", path)
    with sqlite3.connect(path) as con:
        n = con.execute("SELECT MAX(ImageNumber) FROM Per_Image").fetchone()[0]
        new = {old: n + 1 + (old * 7919) % n for old in range(1, n + 1)}  # a permutation, shifted above n
        for table in ("Per_Image", "Per_Cells", "Per_Cytoplasm", "Per_Nuclei"):
            con.executemany(f"UPDATE {table} SET ImageNumber = ? WHERE ImageNumber = ?",
                            [(v, k) for k, v in new.items()])
    return path


@pytest.mark.parametrize("workers", [1, 2])
def test_sqlite_read_in_groups_by_workers_matches_the_merge(shuffled_sqlite, tmp_path, workers):
    out = tmp_path / "plate.parquet"
    summary = ingest(shuffled_sqlite, out, plate="P1", chunk_rows=40, workers=workers)
    df = pd.read_parquet(out)
    ref = merged_by_hand(shuffled_sqlite)
    assert summary["n_cells"] == len(df) == len(ref)
    assert df["Metadata_Well"].tolist() == ref["well"].tolist()
    assert df["Metadata_ImageNumber"].tolist() == ref["ImageNumber"].astype(str).tolist()
    assert df["Metadata_ObjectNumber"].tolist() == ref["Cells_Number_Object_Number"].astype(str).tolist()
    feats = [c for c in df if not c.startswith("Metadata_")]
    assert len(feats) == 12
    np.testing.assert_array_equal(df[feats].to_numpy(), ref[feats].to_numpy(np.float32))
    assert pq.read_metadata(out).num_row_groups == -(-len(df) // 40)


def test_sqlite_workers_give_the_same_file(shuffled_sqlite, tmp_path):
    ingest(shuffled_sqlite, tmp_path / "one.parquet", plate="P1", chunk_rows=30, workers=1)
    ingest(shuffled_sqlite, tmp_path / "two.parquet", plate="P1", chunk_rows=30, workers=2)
    assert pq.read_table(tmp_path / "one.parquet").equals(pq.read_table(tmp_path / "two.parquet"))


def test_every_image_metadata_column_is_kept_and_no_integer_bookkeeping_is_a_feature(nf1):
    _, df, path = nf1
    with sqlite3.connect(NF1_SQLITE) as con:
        image_meta = [r[1] for r in con.execute("PRAGMA table_info(Per_Image)") if r[1].startswith("Image_Metadata_")]
        integer = [r[1] for t in ("Per_Cells", "Per_Cytoplasm", "Per_Nuclei")
                   for r in con.execute(f"PRAGMA table_info({t})") if r[2].upper() == "INTEGER"]
    assert image_meta and all(m.removeprefix("Image_") in df.columns for m in image_meta)
    _, feats = assert_layout(path)
    bookkeeping = [c for c in integer if not c.endswith("_NumberOfNeighbors_Adjacent")]
    assert bookkeeping and not set(bookkeeping) & set(feats)
    assert "Cells_Neighbors_NumberOfNeighbors_Adjacent" in feats  # an integer measurement is a feature


def test_sqlite_null_feature_is_nan(shuffled_sqlite, tmp_path):
    bad = tmp_path / "plate.sqlite"
    shutil.copy(shuffled_sqlite, bad)
    with sqlite3.connect(bad) as con:
        con.execute("UPDATE Per_Nuclei SET Nuclei_AreaShape_Area = NULL WHERE rowid <= 3")
    ingest(bad, tmp_path / "out.parquet", plate="P1", workers=1)
    assert pd.read_parquet(tmp_path / "out.parquet")["Nuclei_AreaShape_Area"].isna().sum() == 3


@pytest.mark.parametrize("workers", [1, 2])
def test_sqlite_text_in_a_feature_is_an_input_error_naming_it(shuffled_sqlite, tmp_path, workers):
    bad = tmp_path / "plate.sqlite"
    shutil.copy(shuffled_sqlite, bad)
    with sqlite3.connect(bad) as con:
        con.execute("UPDATE Per_Nuclei SET Nuclei_AreaShape_Area = 'n/a' WHERE rowid = 100")
    assert_rejected(bad, tmp_path / "out.parquet", "Nuclei_AreaShape_Area", "'n/a'", plate="P1", chunk_rows=30,
                    workers=workers)


def test_sqlite_repeated_object_number_is_an_input_error(shuffled_sqlite, tmp_path):
    bad = tmp_path / "plate.sqlite"
    shutil.copy(shuffled_sqlite, bad)
    with sqlite3.connect(bad) as con:
        con.execute("INSERT INTO Per_Cells SELECT * FROM Per_Cells WHERE rowid = 10")
    assert_rejected(bad, tmp_path / "out.parquet", "repeats", plate="P1")


def test_sqlite_without_image_index_still_works(shuffled_sqlite, tmp_path, caplog):
    plain = tmp_path / "plate.sqlite"
    shutil.copy(shuffled_sqlite, plain)
    with sqlite3.connect(plain) as con:
        for table in ("Per_Cells", "Per_Cytoplasm", "Per_Nuclei"):
            con.execute(f"DROP INDEX {table}_image")
    with caplog.at_level(logging.WARNING):
        ingest(plain, tmp_path / "plain.parquet", plate="P1", workers=1)
    assert "no index on ImageNumber" in caplog.text
    ingest(shuffled_sqlite, tmp_path / "indexed.parquet", plate="P1", workers=1)
    assert pq.read_table(tmp_path / "plain.parquet").equals(pq.read_table(tmp_path / "indexed.parquet"))


def test_truncated_single_cell_csv(fibrosis, tmp_path):
    csv_path = tmp_path / "cells.csv"
    pd.read_parquet(FIBROSIS).to_csv(csv_path, index=False)
    data = csv_path.read_bytes()
    csv_path.write_bytes(data[: len(data) - 5000])  # cut mid-row
    assert_rejected(csv_path, tmp_path / "out.parquet", "truncated")


def test_truncated_gzip_csv(tmp_path):
    gz = tmp_path / "cells.csv.gz"
    with gzip.open(gz, "wb") as fh:
        fh.write(pd.read_parquet(FIBROSIS).to_csv(index=False).encode())
    gz.write_bytes(gz.read_bytes()[:-2000])
    assert_rejected(gz, tmp_path / "out.parquet")


def test_truncated_cellprofiler_csv(jump_folder, tmp_path):
    bad = tmp_path / "plate"
    shutil.copytree(jump_folder, bad)
    cells = bad / "BR00121431-A02-1" / "Cells.csv"
    cells.write_bytes(cells.read_bytes()[:-300])
    with pytest.raises(InputError, match="truncated"):
        ingest(bad, tmp_path / "out.parquet", plate="BR00121431")
    assert not (tmp_path / "out.parquet").exists()


# ---------------------------------------------------------------- formats labs have (issue: read the plates labs have)


def test_pycytominer_single_cell_output_is_read_as_it_is(nf1, tmp_path):
    """pycytominer's SingleCells.merge_single_cells writes Image_Metadata_Well, Metadata_TableNumber, ...: read as is."""
    pytest.importorskip("pycytominer")
    from pycytominer.cyto_utils.cells import SingleCells
    from sqlalchemy import text

    sc = SingleCells(  # pycytominer's recipe for a CellProfiler ExportToDatabase file (Per_ tables)
        f"sqlite:///{NF1_SQLITE}", strata=["Image_Metadata_Plate", "Image_Metadata_Well"],
        image_cols=["ImageNumber", "Image_Metadata_Site"], merge_cols=["ImageNumber"], image_table_name="Per_Image",
        compartments=["cells", "cytoplasm", "nuclei"],
        compartment_linking_cols={"cytoplasm": {"cells": "Cytoplasm_Parent_Cells", "nuclei": "Cytoplasm_Parent_Nuclei"},
                                  "cells": {"cytoplasm": "Cells_Number_Object_Number"},
                                  "nuclei": {"cytoplasm": "Nuclei_Number_Object_Number"}},
        fields_of_view_feature="Image_Metadata_Site",
    )
    for c in COMPARTMENTS:
        sc.conn.execute(text(f"CREATE TEMP VIEW {c.lower()} AS SELECT * FROM Per_{c}"))
    merged = sc.merge_single_cells()
    assert "Image_Metadata_Well" in merged.columns and "Metadata_Well" not in merged.columns
    for suffix, write in ((".parquet", lambda df, p: df.to_parquet(p)), (".csv.gz", lambda df, p: df.to_csv(p, index=False))):
        src = tmp_path / f"pycytominer{suffix}"
        write(merged, src)
        out = tmp_path / f"out{suffix}.parquet"
        summary = ingest(src, out, plate="001", perturbation_col="Metadata_Plate")
        _, ours, _ = nf1
        got = pd.read_parquet(out)
        assert summary["cells_per_well"] == ours.groupby("Metadata_Well").size().to_dict()
        assert {"Metadata_Well", "Metadata_Site", "Metadata_Cells_Number_Object_Number"} <= set(got.columns)
        got = got.rename(columns={"Metadata_Cells_Number_Object_Number": "Metadata_ObjectNumber"})
        key = ["Metadata_Well", "Metadata_ImageNumber", "Metadata_ObjectNumber"]
        got = got.astype({"Metadata_ImageNumber": float, "Metadata_ObjectNumber": float}).astype(
            {"Metadata_ImageNumber": int, "Metadata_ObjectNumber": int}).sort_values(key).reset_index(drop=True)
        ref = ours.astype({"Metadata_ImageNumber": int, "Metadata_ObjectNumber": int}).sort_values(key).reset_index(drop=True)
        for col in ("Cells_AreaShape_Area", "Nuclei_Intensity_MeanIntensity_DAPI"):
            np.testing.assert_allclose(got[col].to_numpy(), ref[col].to_numpy(), rtol=1e-6)


def test_cytominer_database_csv_folder_lower_case_and_several_wells(jump_folder, tmp_path):
    """One folder holding both sites (several wells), files named image.csv, cells.csv, ...: as the per-site folders."""
    folder = tmp_path / "plate" / "all_sites"
    folder.mkdir(parents=True)
    offset = 0
    for i, site in enumerate(sorted(p for p in jump_folder.iterdir() if p.is_dir())):
        for name in ("Image", *COMPARTMENTS):
            df = pd.read_csv(site / f"{name}.csv", float_precision="round_trip")  # the same values written back
            df["ImageNumber"] += offset
            target = folder / f"{name.lower()}.csv"
            df.to_csv(target, mode="a" if i else "w", header=not i, index=False)
        offset += 10
    reference = tmp_path / "per_site.parquet"
    ingest(jump_folder, reference, plate="BR00121431")
    summary = ingest(tmp_path / "plate", tmp_path / "one_folder.parquet", plate="BR00121431")
    assert summary["cells_per_well"] == {"A01": 89, "A02": 36}
    got, ref = pd.read_parquet(tmp_path / "one_folder.parquet"), pd.read_parquet(reference)
    feats = [c for c in ref.columns if not c.startswith("Metadata_")]
    np.testing.assert_array_equal(got[feats].to_numpy(), ref[feats].to_numpy())
    assert got["Metadata_Well"].tolist() == ref["Metadata_Well"].tolist()


def test_other_segmentations_name_their_hub_and_links(tmp_path):
    """dataset.hub / dataset.links: here Cells as the hub, linked to Nuclei by Cells_Parent_Nuclei (no Cytoplasm)."""
    out = tmp_path / "plate.parquet"
    summary = ingest(NF1_SQLITE, out, plate="001", compartments=["Cells", "Nuclei"], hub="Cells",
                     links={"Nuclei": "Cells_Parent_Nuclei"})
    with sqlite3.connect(NF1_SQLITE) as con:
        n = con.execute("""SELECT COUNT(*) FROM Per_Cells c JOIN Per_Nuclei n ON n.ImageNumber = c.ImageNumber
                           AND n.Nuclei_Number_Object_Number = c.Cells_Parent_Nuclei""").fetchone()[0]
    assert summary["n_cells"] == n
    assert not [c for c in pd.read_parquet(out).columns if c.startswith("Cytoplasm_")]
    with pytest.raises(InputError, match="no column Cells_Parent_Nope.*dataset.links"):
        ingest(NF1_SQLITE, tmp_path / "x.parquet", plate="001", compartments=["Cells", "Nuclei"], hub="Cells",
               links={"Nuclei": "Cells_Parent_Nope"})


def test_empty_object_csv_names_the_file(jump_folder, tmp_path):
    bad = tmp_path / "plate"
    shutil.copytree(jump_folder, bad)
    empty = bad / "BR00121431-A02-1" / "Nuclei.csv"
    empty.write_text("")
    assert_rejected(bad, tmp_path / "out.parquet", str(empty), "empty file", plate="BR00121431")


def test_metadata_strings_are_the_text_str_gives():
    """to_arrow converts text and integer metadata with Arrow: the same strings as ``str`` per value (floats keep
    Python's ``1.0``, bytes their repr, missing values null)."""
    from cytoagg.io.parquet import to_arrow

    columns = {
        "Metadata_text": ["a", None, "b", np.nan], "Metadata_int": [1, 2, -3, 2**62],
        "Metadata_float": [1.0, np.nan, 2.5, 3.0], "Metadata_bool": [True, False, True, False],
        "Metadata_mixed": [1, "a", 2.0, None], "Metadata_bytes": [b"ab", "c", "d", "e"],
        "Metadata_object_floats": pd.Series([1.5, 2.0, 3.0, 4.0], dtype=object),
        "Metadata_nullable": pd.Series([1, None, 3, 4], dtype="Int64"),
        "Metadata_category": pd.Categorical(["x", "y", None, "x"]),
    }
    frame = pd.DataFrame(columns)
    got = to_arrow(frame)
    for name in columns:
        expected = [None if pd.isna(v) else str(v) for v in frame[name].astype(object)]
        assert got.column(name).to_pylist() == expected, name
