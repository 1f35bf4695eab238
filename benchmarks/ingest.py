"""Ingest benchmark: cytoagg vs pycytominer's ``SingleCells`` merge vs CytoTable's ``convert`` (run by hand).

Not part of the test suite (pytest collects ``tests/`` only). Results go to ``benchmarks/ingest.md``.

Setup. The system Python with cytoagg installed (``pip install -e ".[test]"``, for pycytominer 1.7.1) and
psutil runs everything but CytoTable. CytoTable goes into its own venv, with duckdb pinned to the release
whose extension packages exist on PyPI (offline, duckdb cannot download its sqlite extension; see
shared/notes/duckdb_offline.md)::

    python -m venv /tmp/cytotable-venv
    /tmp/cytotable-venv/bin/pip install cytotable duckdb==1.5.5 duckdb-extensions==1.5.5 \\
        duckdb-extension-sqlite==1.5.5 duckdb-extension-httpfs==1.5.5 psutil
    # once: copy the extensions where duckdb looks for them ($HOME/.duckdb/extensions/v1.5.5/...)
    /tmp/cytotable-venv/bin/python -c "from duckdb_extensions import import_extension; \
        import_extension('sqlite'); import_extension('httpfs')"

Usage::

    # a CellProfiler-like SQLite plate (384 wells x 9 sites, 200,000 cells, 900 features), in /tmp, never committed
    python benchmarks/ingest.py generate --cells 200000 --features-per-compartment 300 --out /tmp/cytoagg-bench/plate.sqlite
    # each tool in its own process: wall time and peak RSS of its processes (polled), in rounds, best run
    python benchmarks/ingest.py bench --src /tmp/cytoagg-bench/plate.sqlite --repeat 3 --repeat-slow 1 --check \\
        --cytotable-python /tmp/cytotable-venv/bin/python

The tools (``run TOOL``, one process each, same file):

- ``floor``: one single-threaded ``sqlite3`` query joining the four tables, ``fetchmany`` batches turned
  into Arrow tables and streamed into a ``pq.ParquetWriter`` (pyarrow's defaults);
- ``cytoagg``: ``python -m cytoagg ingest`` as the Snakemake rule calls it (format sqlite, default settings);
- ``pycytominer``: ``SingleCells(...).merge_single_cells(sc_output_file=..., output_type="parquet")``, with
  the linking columns of a CellProfiler ``ExportToDatabase`` file. ``SingleCells`` selects from tables named
  after the compartments (``cells``...), as cytominer-database writes them: temporary views ``cells`` ->
  ``Per_Cells``... are created on its own connection (the file is not changed);
- ``cytotable``: ``cytotable.convert(preset="cellprofiler_sqlite", dest_datatype="parquet")`` in the venv above
  (its defaults: a local Parsl HighThroughputExecutor, chunk_size 1000).

``--check`` then compares cytoagg's output with the floor's join: same cells, same values, every
``Image_Metadata_*`` column present as ``Metadata_*``, no bookkeeping column among the features.

The same plate in the other layouts (issue 17)::

    python benchmarks/ingest.py export --src plate.sqlite --out plate_csv         # per-site CellProfiler CSV folders
    python benchmarks/ingest.py export --src plate.sqlite --out plate.parquet     # pycytominer's merge_single_cells
    python benchmarks/ingest.py export --src plate.parquet --out plate.csv.gz     # that table as CSV.gz (Arrow's writer)
    python benchmarks/ingest.py verify-layout                                     # the exporter against pycytominer
    python benchmarks/ingest.py bench --src plate_csv --check --reference <cytoagg's output from plate.sqlite>

``bench`` runs the tools that read the layout: CSV folders ``floor`` (plain pandas), ``cytoagg``, ``pycytominer``
(its ``load_profiles`` per file, merged as ``SingleCells`` merges: it has no CSV-folder reader) and ``cytotable``
(preset ``cellprofiler_csv``); single cells ``cytoagg`` and ``pycytominer`` (``load_profiles`` + ``output``).
``--check --reference`` compares cytoagg's output with its output from the SQLite plate; ``--time-limit`` kills a
run (and every process it measured) after that many seconds and reports it as not finished.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WORK = Path(os.environ.get("CYTOAGG_BENCH_DIR", "/tmp/cytoagg-bench"))
TOOLS = ("floor", "cytoagg", "pycytominer", "cytotable")
COMPARTMENTS = ("Cells", "Cytoplasm", "Nuclei")
CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")


# ---------------------------------------------------------------- synthetic CellProfiler SQLite


def wells() -> list[tuple[str, int]]:
    return [(r, c) for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25)]


def feature_names(compartment: str, n: int) -> list[str]:
    """``n`` measurement columns: AreaShape_Area and Neighbors_NumberOfNeighbors (integer-valued) first."""
    kinds = ["Intensity_MeanIntensity", "Intensity_IntegratedIntensity", "Texture_Contrast_3_00_256",
             "Granularity_1", "RadialDistribution_FracAtD_1of4", "Correlation_Correlation", "AreaShape_Zernike_2_0"]
    names = [f"{compartment}_AreaShape_Area", f"{compartment}_Neighbors_NumberOfNeighbors_Adjacent"]
    i = 0
    while len(names) < n:
        names.append(f"{compartment}_{kinds[i % len(kinds)]}_{CHANNELS[(i // len(kinds)) % 5]}_{i:04d}")
        i += 1
    return names[:n]


def bookkeeping(compartment: str) -> list[tuple[str, str]]:
    """The integer and position columns CellProfiler's ExportToDatabase writes beside the measurements."""
    cols = [("ImageNumber", "INTEGER"), (f"{compartment}_Number_Object_Number", "integer")]
    if compartment == "Cells":
        cols += [("Cells_Parent_Nuclei", "integer"), ("Cells_Children_Cytoplasm_Count", "integer")]
    elif compartment == "Cytoplasm":
        cols += [("Cytoplasm_Parent_Cells", "integer"), ("Cytoplasm_Parent_Nuclei", "integer")]
    else:
        cols += [("Nuclei_Children_Cells_Count", "integer"), ("Nuclei_Children_Cytoplasm_Count", "integer")]
    cols += [(f"{compartment}_Location_Center_X", "float"), (f"{compartment}_Location_Center_Y", "float"),
             (f"{compartment}_Neighbors_FirstClosestObjectNumber_Adjacent", "integer")]
    return cols


IMAGE_COLUMNS = (
    [("ImageNumber", "INTEGER"), ("Image_Metadata_Plate", "TEXT"), ("Image_Metadata_Well", "TEXT"),
     ("Image_Metadata_Site", "INTEGER"), ("Image_Metadata_Row", "TEXT"), ("Image_Metadata_Col", "INTEGER"),
     ("Image_Metadata_AbsTime", "TEXT"), ("Image_Count_Cells", "INTEGER"), ("Image_Count_Cytoplasm", "INTEGER"),
     ("Image_Count_Nuclei", "INTEGER"), ("Image_Group_Number", "INTEGER"), ("Image_Group_Index", "INTEGER")]
    + [(f"Image_{kind}_{c}", "TEXT") for c in CHANNELS for kind in ("FileName", "PathName")]
    + [(f"Image_Intensity_MeanIntensity_{c}", "float") for c in CHANNELS]
    + [(f"Image_Granularity_{g}_{c}", "float") for c in CHANNELS for g in (1, 2, 3)]
)


def generate(out: Path, n_cells: int, n_features: int, sites: int = 9, seed: int = 0) -> None:
    """Per_Image + Per_Cells/Per_Cytoplasm/Per_Nuclei as CellProfiler's ExportToDatabase writes them.

    Images are numbered in acquisition order (a serpentine over the plate: row B runs from column 24
    back to 1), so well order is not ImageNumber order. Object tables have PRIMARY KEY (ImageNumber,
    <X>_Number_Object_Number), which indexes them by ImageNumber. 1% of the nuclei have no cell (the
    merge drops them). ``n_features`` measurements per compartment.
    """
    rng = np.random.default_rng(seed)
    plate_wells = wells()
    order = []
    for i, row in enumerate("ABCDEFGHIJKLMNOP"):
        cols = range(1, 25) if i % 2 == 0 else range(24, 0, -1)
        order += [(row, c) for c in cols]
    images = [(r, c, s) for r, c in order for s in range(1, sites + 1)]
    counts = rng.poisson(n_cells / len(images), len(images))
    counts = np.maximum(counts, 1)
    while counts.sum() != n_cells:  # exactly n_cells cells
        diff = n_cells - counts.sum()
        idx = rng.choice(len(counts), abs(diff))
        np.add.at(counts, idx, np.sign(diff))
        counts = np.maximum(counts, 0)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    tmp.unlink(missing_ok=True)
    con = sqlite3.connect(tmp)
    con.execute("PRAGMA journal_mode = OFF")
    con.execute("PRAGMA synchronous = OFF")
    decl = ", ".join(f"{n} {t}" for n, t in IMAGE_COLUMNS)
    con.execute(f"CREATE TABLE Per_Image ({decl}, PRIMARY KEY (ImageNumber))")
    names = {c: feature_names(c, n_features) for c in COMPARTMENTS}
    for c in COMPARTMENTS:
        cols = bookkeeping(c) + [(f, "float") for f in names[c]]
        decl = ",\n".join(f"{n} {t}" for n, t in cols)
        con.execute(f"CREATE TABLE Per_{c} ({decl},\nPRIMARY KEY (ImageNumber, {c}_Number_Object_Number))")
    loc = {c: rng.uniform(-2, 6, n_features) for c in COMPARTMENTS}
    scale = {c: rng.uniform(0.1, 1.5, n_features) for c in COMPARTMENTS}
    well_shift = {w: rng.normal(0, 0.2, n_features) for w in plate_wells}
    t0 = time.perf_counter()
    image_rows = []
    for number, ((row, col, site), k) in enumerate(zip(images, counts), start=1):
        well = f"{row}{col:02d}"
        extra = int(rng.random() < 0.5)  # a nucleus without a cell in half of the images
        image_rows.append(
            (number, "BENCH1", well, site, row, col, f"2026-11-22T{number % 24:02d}:00:00", int(k), int(k),
             int(k) + extra, number, site)
            + tuple(v for ch in CHANNELS for v in (f"r{row}c{col}f{site}-{ch}.tiff", "/images/BENCH1"))
            + tuple(rng.uniform(100, 1000, 5 + 15).round(3)))
        objects = np.arange(1, k + 1)
        for c in COMPARTMENTS:
            n = k + extra if c == "Nuclei" else k
            obj = np.arange(1, n + 1)
            x = rng.standard_normal((n, n_features)) * scale[c] + loc[c] + well_shift[(row, col)]
            x[:, 0] = np.round(np.exp(x[:, 0] + 4))  # AreaShape_Area: integer-valued
            x[:, 1] = np.clip(np.round(x[:, 1] + 3), 0, None)  # NumberOfNeighbors: small integers
            x[:, 2::3] = np.exp(x[:, 2::3])
            if c == "Cells":
                book = [obj, obj, np.ones(n, dtype=int)]
            elif c == "Cytoplasm":
                book = [obj, obj, obj]
            else:
                book = [obj, (obj <= k).astype(int), (obj <= k).astype(int)]
            book += [rng.uniform(0, 2000, n).round(2), rng.uniform(0, 2000, n).round(2),
                     rng.integers(1, max(n, 2), n)]
            columns = [np.full(n, number)] + book
            rows = zip(*(col.tolist() for col in columns), *x.T.tolist())
            ph = ", ".join("?" * (len(columns) + n_features))
            con.executemany(f"INSERT INTO Per_{c} VALUES ({ph})", rows)
        del objects
        if number % 200 == 0:
            print(f"\r{number}/{len(images)} images", end="", file=sys.stderr)
    ph = ", ".join("?" * len(IMAGE_COLUMNS))
    con.executemany(f"INSERT INTO Per_Image VALUES ({ph})", image_rows)
    con.commit()
    con.close()
    os.replace(tmp, out)
    print(f"\n{out}: {len(images)} images, {n_cells:,} cells, {3 * n_features} features, "
          f"{out.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


# ---------------------------------------------------------------- the same plate in the other layouts


def _image_rows(con: sqlite3.Connection) -> tuple[list[str], list[tuple]]:
    names = [r[1] for r in con.execute("PRAGMA table_info(Per_Image)")]
    return names, con.execute("SELECT * FROM Per_Image ORDER BY ImageNumber").fetchall()


def export_cp_csv(src: Path, out: Path) -> None:
    """The plate as CellProfiler's ExportToSpreadsheet writes it in a distributed run (one CellProfiler job per
    site): a folder per site (``BENCH1-A01-1``) holding Image.csv and Cells/Cytoplasm/Nuclei.csv, columns without
    the table prefix in name order (ImageNumber and ObjectNumber first in the object files), ImageNumber 1 in every
    folder, floats written as Python's csv module writes them. One image at a time: memory holds one site."""
    import csv

    con = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    image_names, images = _image_rows(con)
    image_cols = [n.removeprefix("Image_") for n in image_names]
    image_order = sorted(range(len(image_cols)), key=lambda j: image_cols[j])
    tables = {}
    for c in COMPARTMENTS:
        names = [r[1] for r in con.execute(f"PRAGMA table_info(Per_{c})")]
        measured = sorted((n.removeprefix(f"{c}_"), j) for j, n in enumerate(names) if n != "ImageNumber")
        number = names.index(f"{c}_Number_Object_Number")
        tables[c] = (["ImageNumber", "ObjectNumber", *(n for n, _ in measured)], number, [j for _, j in measured])
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    for i, image in enumerate(images, start=1):
        row = dict(zip(image_names, image))
        folder = tmp / f"{row['Image_Metadata_Plate']}-{row['Image_Metadata_Well']}-{row['Image_Metadata_Site']}"
        folder.mkdir(parents=True)
        values = [1 if image_names[j] == "ImageNumber" else image[j] for j in image_order]
        with open(folder / "Image.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow([image_cols[j] for j in image_order])
            w.writerow(values)
        for c, (header, number, measured) in tables.items():
            rows = con.execute(f"SELECT * FROM Per_{c} WHERE ImageNumber = ? ORDER BY {c}_Number_Object_Number",
                               (image[0],)).fetchall()
            with open(folder / f"{c}.csv", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(header)
                w.writerows([1, r[number], *(r[j] for j in measured)] for r in rows)
        if i % 200 == 0:
            print(f"\r{i}/{len(images)} sites", end="", file=sys.stderr)
    con.close()
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    size = sum(f.stat().st_size for f in out.rglob("*.csv"))
    print(f"\n{out}: {len(images)} site folders, {size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)


# pycytominer's SingleCells(...).merge_single_cells(sc_output_file=...) on this plate (the recipe of run_pycytominer):
# image columns first, then Cytoplasm, Cells and Nuclei columns (ImageNumber once), every object column as float64,
# the linking columns renamed to Metadata_*, rows in the merge's order (ImageNumber, then the cytoplasm's object).
# `verify-layout` checks this against pycytominer itself on a small plate.
SC_IMAGE_COLUMNS = [("ImageNumber", "Metadata_ImageNumber"), ("Image_Metadata_Plate", "Image_Metadata_Plate"),
                    ("Image_Metadata_Site", "Image_Metadata_Site"), ("Image_Metadata_Well", "Image_Metadata_Well")]
SC_RENAMES = {"Cytoplasm_Parent_Cells": "Metadata_Cytoplasm_Parent_Cells",
              "Cytoplasm_Parent_Nuclei": "Metadata_Cytoplasm_Parent_Nuclei",
              "Cells_Number_Object_Number": "Metadata_Cells_Number_Object_Number",
              "Nuclei_Number_Object_Number": "Metadata_Nuclei_Number_Object_Number"}


def single_cell_batches(src: Path, batch_cells: int = 4000):
    """pycytominer's merged single cells, as pandas frames of about ``batch_cells`` cells, in its row order."""
    import pandas as pd

    con = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    alias = {"Cytoplasm": "cy", "Cells": "ce", "Nuclei": "nu"}
    select, names = [], []
    for c in ("Cytoplasm", "Cells", "Nuclei"):
        for r in con.execute(f"PRAGMA table_info(Per_{c})"):
            if r[1] != "ImageNumber":
                select.append(f"{alias[c]}.{r[1]}")
                names.append(SC_RENAMES.get(r[1], r[1]))
    sql = (f"SELECT cy.ImageNumber, {', '.join(select)} FROM Per_Cytoplasm cy "
           "JOIN Per_Cells ce ON ce.ImageNumber = cy.ImageNumber AND ce.Cells_Number_Object_Number = cy.Cytoplasm_Parent_Cells "
           "JOIN Per_Nuclei nu ON nu.ImageNumber = cy.ImageNumber AND nu.Nuclei_Number_Object_Number = cy.Cytoplasm_Parent_Nuclei "
           "WHERE cy.ImageNumber IN ({images}) ORDER BY cy.ImageNumber, cy.Cytoplasm_Number_Object_Number")
    image_names = [r[1] for r in con.execute("PRAGMA table_info(Per_Image)")]
    images = pd.DataFrame(con.execute("SELECT * FROM Per_Image ORDER BY ImageNumber").fetchall(), columns=image_names)
    images = images[[c for c, _ in SC_IMAGE_COLUMNS]].set_axis([n for _, n in SC_IMAGE_COLUMNS], axis=1)
    counts = dict(con.execute("SELECT ImageNumber, COUNT(*) FROM Per_Cytoplasm GROUP BY ImageNumber"))
    group, n = [], 0
    numbers = images["Metadata_ImageNumber"].tolist()
    for k, number in enumerate(numbers):
        group.append(number)
        n += counts.get(number, 0)
        if n >= batch_cells or k == len(numbers) - 1:
            rows = con.execute(sql.format(images=", ".join(map(str, group)))).fetchall()
            x = np.array(rows, dtype=np.float64).reshape(len(rows), len(names) + 1)
            cells = pd.DataFrame(x[:, 1:], columns=names)
            meta = images.set_index("Metadata_ImageNumber").loc[x[:, 0].astype(np.int64)].reset_index()
            yield pd.concat([meta, cells], axis=1)
            group, n = [], 0
    con.close()


def single_cell_kind(path: Path) -> str | None:
    """``parquet`` or ``csv`` (plain or ``.csv.gz``) for a single-cell file name, else None."""
    name = path.name.lower()
    return "parquet" if name.endswith(".parquet") else "csv" if name.endswith((".csv", ".csv.gz")) else None


def export_single_cells(src: Path, out: Path, row_group_rows: int = 1 << 20) -> None:
    """The plate as pycytominer's merge_single_cells writes it: ``.parquet`` as its ``output_type="parquet"``
    (pandas' ``to_parquet``: snappy, row groups of ``row_group_rows``, pyarrow's default 1,048,576 rows, so this
    plate's file is one row group), ``.csv.gz`` as ``output_type="csv"`` with pycytominer's usual gzip
    ``compression_options`` (pandas' ``to_csv`` through gzip, level 9 as pandas' default) or ``.csv`` as
    ``output_type="csv"`` with its default (no compression).

    Streamed a batch of cells at a time; a Parquet row group is written whole, so memory holds one row group as
    Arrow arrays (the whole 200,000-cell plate is one row group in pycytominer's file: ~1.5 GB here; pass a smaller
    ``row_group_rows`` to bound it)."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = out.with_name(out.name + ".part")
    tmp.unlink(missing_ok=True)
    t0 = time.perf_counter()
    n = 0
    if single_cell_kind(out) == "csv":
        gz = out.name.lower().endswith(".gz")
        with (gzip.open(tmp, "wt", compresslevel=9, newline="") if gz else open(tmp, "w", newline="")) as fh:
            for i, frame in enumerate(single_cell_batches(src)):
                frame.to_csv(fh, header=i == 0, index=False)
                n += len(frame)
                print(f"\r{n:,} cells", end="", file=sys.stderr)
    else:
        writer, pending, n_pending = None, [], 0

        def flush(rows):
            table = pa.concat_tables(pending)
            writer.write_table(table.slice(0, rows), row_group_size=row_group_rows)
            return [table.slice(rows)] if rows < table.num_rows else []

        for frame in single_cell_batches(src):
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="snappy")
            pending.append(table)
            n_pending += len(frame)
            n += len(frame)
            if n_pending >= row_group_rows:  # row groups of row_group_rows, as one write_table call makes them
                pending = flush(row_group_rows)
                n_pending -= row_group_rows
            print(f"\r{n:,} cells", end="", file=sys.stderr)
        if n_pending:
            flush(n_pending)
        writer.close()
    os.replace(tmp, out)
    print(f"\n{out}: {n:,} cells, {out.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)


def parquet_to_csv(src: Path, out: Path, level: int = 6) -> None:
    """A single-cell Parquet (``export_single_cells``') as CSV (gzipped for ``.gz``, at ``level``) with Arrow's
    writer: the same table as ``export_single_cells`` writes through pandas, in minutes instead of most of an hour
    on a 2-core machine (pandas' ``to_csv`` + gzip level 9). Numbers in their shortest round-trip form as pandas
    writes them; text quoted only where needed."""
    import gzip

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    tmp = out.with_name(out.name + ".part")
    t0 = time.perf_counter()
    file = pq.ParquetFile(src)
    gz = out.name.lower().endswith(".gz")
    options = pacsv.WriteOptions(quoting_style="needed")
    with (gzip.open(tmp, "wb", compresslevel=level) if gz else open(tmp, "wb")) as sink, \
            pacsv.CSVWriter(sink, file.schema_arrow, write_options=options) as w:
        for batch in file.iter_batches(batch_size=10_000):
            w.write_batch(batch)
    os.replace(tmp, out)
    print(f"{out}: {file.metadata.num_rows:,} cells, {out.stat().st_size / 1e9:.2f} GB in "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)


def verify_layout(workdir: Path) -> str:
    """The exporters against the tools they imitate, on a small plate of the same generator: ``export_single_cells``
    against pycytominer's ``merge_single_cells`` (Parquet: same schema and values; CSV.gz: the same text)."""
    import gzip

    import pandas as pd
    import pyarrow.parquet as pq

    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / "layout.sqlite"
    generate(src, 3000, 12, sites=2)
    problems = []
    for suffix, output_type in ((".parquet", "parquet"), (".csv.gz", "csv")):
        ours, theirs = workdir / f"ours{suffix}", workdir / f"pycytominer{suffix}"
        export_single_cells(src, ours, row_group_rows=1000)  # several row groups: batches joined as pycytominer's
        # merge_single_cells writes plain CSV unless given compression_options (pycytominer's output() default)
        pycytominer_single_cells(src).merge_single_cells(sc_output_file=str(theirs), output_type=output_type,
                                                         compression_options={"method": "gzip", "mtime": 1})
        if output_type == "csv":  # the same text, both gzip (the gzip headers differ: file name, time)
            if theirs.read_bytes()[:2] != b"\x1f\x8b":
                problems.append("pycytominer's .csv.gz is not gzip")
            elif gzip.decompress(ours.read_bytes()) != gzip.decompress(theirs.read_bytes()):
                problems.append("CSV text differs")
            continue
        a, b = pq.read_table(ours), pq.read_table(theirs)
        if a.schema.remove_metadata() != b.schema.remove_metadata():
            problems.append(f"Parquet schemas differ: {a.schema} vs {b.schema}")
        elif not a.replace_schema_metadata().equals(b.replace_schema_metadata()):
            problems.append("Parquet values differ")
        pd.testing.assert_frame_equal(a.to_pandas(), b.to_pandas())
    return "OK: the exported Parquet and CSV.gz are pycytominer's" if not problems else "; ".join(problems)


# ---------------------------------------------------------------- the tools (one process each)


def floor_query(con: sqlite3.Connection) -> tuple[str, list[str]]:
    """The plain join: image metadata + every object column (ImageNumber once)."""
    def cols(table):
        return [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
    select = [f"i.{c}" for c in cols("Per_Image") if c.startswith("Image_Metadata_")]
    select += [f"cy.{c}" for c in cols("Per_Cytoplasm")]
    select += [f"ce.{c}" for c in cols("Per_Cells") if c != "ImageNumber"]
    select += [f"nu.{c}" for c in cols("Per_Nuclei") if c != "ImageNumber"]
    sql = (f"SELECT {', '.join(select)} FROM Per_Cytoplasm cy "
           "JOIN Per_Cells ce ON ce.ImageNumber = cy.ImageNumber AND ce.Cells_Number_Object_Number = cy.Cytoplasm_Parent_Cells "
           "JOIN Per_Nuclei nu ON nu.ImageNumber = cy.ImageNumber AND nu.Nuclei_Number_Object_Number = cy.Cytoplasm_Parent_Nuclei "
           "JOIN Per_Image i ON i.ImageNumber = cy.ImageNumber")
    return sql, [s.split(".", 1)[1] for s in select]


def run_floor(src: Path, out: Path, batch: int = 10_000) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    con = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    sql, names = floor_query(con)
    cur = con.execute(sql)
    writer = None
    while rows := cur.fetchmany(batch):
        table = pa.Table.from_arrays([pa.array(col) for col in zip(*rows)], names=names)
        if writer is None:
            writer = pq.ParquetWriter(out, table.schema)
        writer.write_table(table.cast(writer.schema))
    writer.close()


def pycytominer_single_cells(src: Path):
    """pycytominer's ``SingleCells`` on a CellProfiler ExportToDatabase file (see the module docstring)."""
    from pycytominer.cyto_utils.cells import SingleCells
    from sqlalchemy import text

    sc = SingleCells(
        f"sqlite:///{src}",
        strata=["Image_Metadata_Plate", "Image_Metadata_Well"],
        image_cols=["ImageNumber", "Image_Metadata_Site"],
        merge_cols=["ImageNumber"],
        image_table_name="Per_Image",
        compartments=["cells", "cytoplasm", "nuclei"],
        compartment_linking_cols={
            "cytoplasm": {"cells": "Cytoplasm_Parent_Cells", "nuclei": "Cytoplasm_Parent_Nuclei"},
            "cells": {"cytoplasm": "Cells_Number_Object_Number"},
            "nuclei": {"cytoplasm": "Nuclei_Number_Object_Number"},
        },
        fields_of_view_feature="Image_Metadata_Site",
    )
    for c in COMPARTMENTS:
        sc.conn.execute(text(f"CREATE TEMP VIEW {c.lower()} AS SELECT * FROM Per_{c}"))
    return sc


def run_pycytominer(src: Path, out: Path) -> None:
    """pycytominer's route for each kind of plate (see the module docstring)."""
    kind = source_kind(src)
    if kind == "sqlite":
        pycytominer_single_cells(src).merge_single_cells(sc_output_file=str(out), output_type="parquet")
    elif kind == "cp_csv":
        run_pycytominer_csv_folders(src, out)
    else:  # what pycytominer's aggregate/normalize/annotate read single cells with, and its writer
        from pycytominer.cyto_utils import load_profiles, output

        output(load_profiles(src), output_filename=str(out), output_type="parquet")


def run_pycytominer_csv_folders(src: Path, out: Path, load=None) -> None:
    """pycytominer has no reader for CellProfiler CSV folders (its ``SingleCells`` reads SQLite; the CSV route
    was cytominer-database, now CytoTable). The pandas route a pycytominer user writes: each site's files through
    ``load_profiles``, object columns prefixed by their compartment, merged as ``SingleCells`` merges (the
    Cytoplasm's parent columns to the Cells' and Nuclei's object numbers, then the image's metadata), all sites
    concatenated and written with pycytominer's ``output``. ``load``: the reader instead of ``load_profiles``
    (which sniffs each file's dialect with clevercsv before ``pd.read_csv``): the ``floor`` passes ``pd.read_csv``."""
    import pandas as pd
    from pycytominer.cyto_utils import load_profiles, output

    load_profiles = load or load_profiles

    def objects(folder: Path, c: str) -> pd.DataFrame:
        frame = load_profiles(folder / f"{c}.csv")
        return frame.rename(columns={n: n if n == "ImageNumber" else f"{c}_{n}" for n in frame.columns})

    sites = []
    for folder in sorted(p for p in src.iterdir() if (p / "Image.csv").is_file()):
        image = load_profiles(folder / "Image.csv")
        image = image[["ImageNumber", *(n for n in image.columns if n.startswith("Metadata_"))]]
        cells = objects(folder, "Cytoplasm").merge(
            objects(folder, "Cells"), left_on=["ImageNumber", "Cytoplasm_Parent_Cells"],
            right_on=["ImageNumber", "Cells_Number_Object_Number"], how="inner",
        ).merge(
            objects(folder, "Nuclei"), left_on=["ImageNumber", "Cytoplasm_Parent_Nuclei"],
            right_on=["ImageNumber", "Nuclei_Number_Object_Number"], how="inner",
        )
        sites.append(image.merge(cells, on="ImageNumber", how="inner"))
    output(pd.concat(sites, ignore_index=True), output_filename=str(out), output_type="parquet")


def run_cytotable(src: Path, out: Path) -> None:
    import cytotable

    shutil.rmtree(out, ignore_errors=True)
    preset = "cellprofiler_csv" if source_kind(src) == "cp_csv" else "cellprofiler_sqlite"
    cytotable.convert(source_path=str(src), dest_path=str(out), dest_datatype="parquet", preset=preset)


# The ingest step's settings as the workflow passes them (the schema's defaults, format auto; the benchmark plate
# has no platemap, so no perturbation column: the plate column stands in, and there are no controls to check).
INGEST_SETTINGS = {
    "annotation": {"plate_col": "Metadata_Plate", "well_col": "Metadata_Well", "perturbation_col": "Metadata_Plate",
                   "negcon_col": "Metadata_Plate", "negcon_value": None},
    "format": "auto", "platemap": None, "compartments": list(COMPARTMENTS), "hub": None, "links": {},
    "features_file": None, "blocklist": [], "max_cells_without_image": 0.01, "require_negcon": False,
}


def source_kind(src: Path) -> str:
    """``sqlite``, ``cp_csv`` (a folder of per-site CellProfiler CSV folders), or single cells: ``parquet``/``csv``."""
    return "cp_csv" if src.is_dir() else single_cell_kind(src) or "sqlite"


# which tools read which kind of plate (CytoTable reads CellProfiler's outputs, not merged single cells)
TOOLS_BY_KIND = {"sqlite": TOOLS, "cp_csv": ("floor", "cytoagg", "pycytominer", "cytotable"),
                 "parquet": ("cytoagg", "pycytominer"), "csv": ("cytoagg", "pycytominer")}


def run_tool(tool: str, src: Path, out: Path) -> None:
    if tool not in TOOLS_BY_KIND[source_kind(src)]:
        raise SystemExit(f"{tool} does not read a {source_kind(src)} plate")
    if tool == "floor" and source_kind(src) == "cp_csv":  # the same pandas route, without the dialect sniffing
        import pandas as pd

        run_pycytominer_csv_folders(src, out, load=pd.read_csv)
    elif tool == "floor":
        run_floor(src, out)
    elif tool == "cytoagg":  # exec: the measured process is the CLI itself
        os.execv(sys.executable, [sys.executable, "-m", "cytoagg", "ingest", "--source", str(src), "--out", str(out),
                                  "--plate", "BENCH1", "--params", json.dumps(INGEST_SETTINGS)])
    elif tool == "pycytominer":
        run_pycytominer(src, out)
    else:
        run_cytotable(src, out)


# ---------------------------------------------------------------- measuring


def measure(cmd: list[str], env: dict | None = None, interval: float = 0.05, limit: float | None = None,
            cwd: Path | None = None) -> dict:
    """Wall time and peak RSS of a command: the largest sum, polled every ``interval``, over its process tree and
    every process that inherited a marker in its environment (CytoTable's Parsl workers leave the tree);
    also the kernel's peak for the largest single process (``ru_maxrss`` of the reaped child). A run past
    ``limit`` seconds is killed (with every process it measured) and reported as not finished."""
    import uuid

    import psutil

    marker = uuid.uuid4().hex
    env = dict(env or os.environ, CYTOAGG_BENCH_MARKER=marker)
    t0 = time.perf_counter()
    started = time.time() - 1
    proc = subprocess.Popen(cmd, env=env, cwd=cwd)
    root = psutil.Process(proc.pid)
    marked: dict[int, bool] = {}
    peak = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        procs = {}
        try:
            procs = {p.pid: p for p in [root, *root.children(recursive=True)]}
        except psutil.Error:
            pass
        for p in psutil.process_iter(["create_time"]):
            if p.pid in procs or (p.info["create_time"] or 0) < started:
                continue
            if p.pid not in marked:
                try:
                    marked[p.pid] = p.environ().get("CYTOAGG_BENCH_MARKER") == marker
                except psutil.Error:
                    marked[p.pid] = False
            if marked[p.pid]:
                procs[p.pid] = p
        total = 0
        for p in procs.values():
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        peak = max(peak, total)
        if limit is not None and time.perf_counter() - t0 > limit:
            for p in procs.values():
                try:
                    p.kill()
                except psutil.Error:
                    pass
            os.wait4(proc.pid, 0)
            return {"wall_s": None, "not_finished_after_s": limit, "peak_rss_tree_gb": peak / 1e9}
        time.sleep(interval)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise SystemExit(f"{cmd} failed with exit code {code}")
    return {"wall_s": wall, "peak_rss_tree_gb": peak / 1e9, "ru_maxrss_gb": usage.ru_maxrss * 1024 / 1e9}


def check(src: Path, ours: Path) -> str:
    """cytoagg's file against the plain join: cells, values, metadata, no bookkeeping column as a feature."""
    import pyarrow.parquet as pq

    from cytoagg.io.columns import is_bookkeeping

    schema = pq.read_schema(ours)
    meta = [n for n in schema.names if n.startswith("Metadata_")]
    feats = [n for n in schema.names if not n.startswith("Metadata_")]
    con = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    image_meta = [r[1].removeprefix("Image_") for r in con.execute("PRAGMA table_info(Per_Image)")
                  if r[1].startswith("Image_Metadata_")]
    problems = [f"missing {m}" for m in image_meta if m not in meta]
    problems += [f"bookkeeping column as feature: {f}" for f in feats if is_bookkeeping(f)]
    problems += [f"non-float feature {f}" for f in feats if str(schema.field(f).type) != "float"]
    sql, names = floor_query(con)
    n_ref = con.execute(f"SELECT COUNT(*) FROM ({sql})").fetchone()[0]
    n_ours = pq.read_metadata(ours).num_rows
    if n_ref != n_ours:
        problems.append(f"{n_ours} cells, the join has {n_ref}")
    # values: 20 random images, every feature
    rng = np.random.default_rng(0)
    images = rng.choice(con.execute("SELECT ImageNumber FROM Per_Image").fetchall(), 20).ravel().tolist()
    table = pq.read_table(ours, filters=[("Metadata_ImageNumber", "in", [str(i) for i in images])])
    got = table.to_pandas().set_index(["Metadata_ImageNumber", "Metadata_ObjectNumber"]).sort_index()
    ids = ", ".join(map(str, images))
    rows = con.execute(f"SELECT * FROM ({sql}) WHERE Cytoplasm_Number_Object_Number > 0 AND ImageNumber IN ({ids})").fetchall()
    import pandas as pd

    ref = pd.DataFrame(rows, columns=names)
    ref.index = pd.MultiIndex.from_arrays([ref["ImageNumber"].astype(str), ref["Cells_Number_Object_Number"].astype(str)])
    ref = ref.sort_index()
    if len(ref) != len(got):
        problems.append(f"{len(got)} cells in 20 images, the join has {len(ref)}")
    else:
        x = got[feats].to_numpy(np.float64)
        y = ref[feats].to_numpy(np.float64).astype(np.float32).astype(np.float64)
        if not np.array_equal(x, y, equal_nan=True):
            problems.append(f"values differ: max |diff| {np.nanmax(np.abs(x - y))}")
        for m in image_meta:
            if not (got[m].to_numpy() == ref[f"Image_{m}"].astype(str).to_numpy()).all() and m != "Metadata_Well":
                problems.append(f"{m} differs")
    wells = pq.read_table(ours, columns=["Metadata_Well"]).column(0).to_pylist()
    if wells != sorted(wells):
        problems.append("rows not ordered by well")
    return (f"OK: {n_ours:,} cells, {len(feats)} float32 features, {len(meta)} metadata columns "
            f"({', '.join(meta)})") if not problems else "PROBLEMS: " + "; ".join(problems[:10])


def describe(src: Path) -> str:
    """Size and shape of the plate, for the log."""
    kind = source_kind(src)
    if kind == "sqlite":
        con = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
        n_images = con.execute("SELECT COUNT(*) FROM Per_Image").fetchone()[0]
        n_cols = {c: len(con.execute(f"PRAGMA table_info(Per_{c})").fetchall()) for c in COMPARTMENTS}
        con.close()
        return f"{src.stat().st_size / 1e9:.2f} GB, {n_images} images, columns per table {n_cols}"
    if kind == "cp_csv":
        files = [f for f in src.rglob("*") if f.is_file()]
        folders = len({f.parent for f in files})
        return f"{sum(f.stat().st_size for f in files) / 1e9:.2f} GB, {folders} site folders, {len(files)} files"
    return f"{src.stat().st_size / 1e9:.2f} GB"


def bench(src: Path, tools: list[str] | None, repeat: int, do_check: bool, cytotable_python: str | None,
          repeat_slow: int | None = None, reference: Path | None = None, limit: float | None = None) -> None:
    """Each tool in rounds on ``src``; ``reference``: cytoagg's output from the SQLite plate, for --check on the
    other layouts; ``limit``: seconds after which a run is killed and reported as not finished."""
    kind = source_kind(src)
    tools = tools or list(TOOLS_BY_KIND[kind])
    outdir = WORK / "ingest-out" / src.name
    outdir.mkdir(parents=True, exist_ok=True)
    print(f"# {src} ({kind}): {describe(src)}", flush=True)
    print(f"# {datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.node()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}", flush=True)
    runs = {tool: [] for tool in tools}
    n_runs = {t: repeat_slow if t in ("pycytominer", "cytotable") and repeat_slow else repeat for t in tools}
    for r in range(max(n_runs.values())):  # rounds: each tool once per round, so load changes hit all alike
        for tool in tools:
            if r >= n_runs[tool]:
                continue
            out = outdir / (tool if tool == "cytotable" else f"{tool}.parquet")
            shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
            python, env = sys.executable, None
            if tool == "cytotable":
                if not cytotable_python:
                    raise SystemExit("--cytotable-python: the venv's python (see the module docstring)")
                python = cytotable_python
                env = dict(os.environ, PATH=f"{Path(cytotable_python).parent}:{os.environ['PATH']}")
            before = " ".join(f"{x:.2f}" for x in os.getloadavg())
            # in the output folder: Parsl (CytoTable) writes its runinfo/ into the working directory
            res = measure([python, str(Path(__file__).resolve()), "run", tool, "--src", str(src.resolve()), "--out",
                           str(out.resolve())], env=env, limit=limit, cwd=outdir)
            res["load_before"] = before
            runs[tool].append(res)
            took = (f"{res['wall_s']:.1f} s, ru_maxrss {res['ru_maxrss_gb']:.2f} GB" if res["wall_s"] is not None
                    else f"NOT FINISHED after {limit:.0f} s (killed)")
            print(f"{tool} run {r + 1}: {took}, peak RSS {res['peak_rss_tree_gb']:.2f} GB, load before {before}",
                  flush=True)
    results = {}
    for tool, rs in runs.items():
        walls = [x["wall_s"] for x in rs if x["wall_s"] is not None]
        results[tool] = {"best_wall_s": min(walls) if walls else None,
                         "peak_rss_gb": max(x["peak_rss_tree_gb"] for x in rs), "runs": rs}
    print("\n| tool | wall (best of the runs) | peak RSS (max) |")
    print("|---|---:|---:|")
    for tool, r in results.items():
        wall = f"{r['best_wall_s']:.1f} s" if r["best_wall_s"] is not None else f"not finished in {limit:.0f} s"
        print(f"| {tool} | {wall} | {r['peak_rss_gb']:.2f} GB |")
    ours = results.get("cytoagg", {}).get("best_wall_s")
    for other in ("pycytominer", "cytotable", "floor"):
        if ours and other in results:
            theirs = results[other]["best_wall_s"]
            print(f"cytoagg speedup over {other}: " + (f"{theirs / ours:.2f}x" if theirs else
                                                       f"> {limit / ours:.1f}x (not finished)"))
    if do_check and ours:
        if kind == "sqlite":
            print("check:", check(src, outdir / "cytoagg.parquet"))
        elif reference is not None:
            print("check against the SQLite plate's output:", check_same_cells(reference, outdir / "cytoagg.parquet"))
        else:
            print("check: --reference (cytoagg's output from the SQLite plate) is needed for this layout")
    (WORK / f"ingest_results_{src.name}.json").write_text(json.dumps(results, indent=1))


def check_same_cells(reference: Path, ours: Path, batch_rows: int = 20_000) -> str:
    """cytoagg's output from another layout of the plate against its output from the SQLite plate (checked
    against the plain join by ``check``): the same features in the same order, the same cells in the same order
    (wells row by row), the same values as float32; metadata columns listed, not compared."""
    import pyarrow.parquet as pq

    a, b = pq.ParquetFile(reference), pq.ParquetFile(ours)
    feats = [n for n in a.schema_arrow.names if not n.startswith("Metadata_")]
    ours_feats = [n for n in b.schema_arrow.names if not n.startswith("Metadata_")]
    meta = [n for n in b.schema_arrow.names if n.startswith("Metadata_")]
    problems, notes = [], []
    if set(feats) != set(ours_feats):
        problems.append(f"features differ: {len(ours_feats)} vs {len(feats)}; only ours "
                        f"{sorted(set(ours_feats) - set(feats))[:5]}, only the reference's {sorted(set(feats) - set(ours_feats))[:5]}")
        feats = [f for f in feats if f in set(ours_feats)]
    elif feats != ours_feats:  # the source's column order is kept (pycytominer's merge: Cytoplasm first)
        notes.append("features in the source's order")
    if a.metadata.num_rows != b.metadata.num_rows:
        problems.append(f"{b.metadata.num_rows} cells, the reference has {a.metadata.num_rows}")
    else:
        columns = ["Metadata_Well", *feats]
        n_diff, worst = 0, 0.0
        for x, y in zip(a.iter_batches(batch_rows, columns=columns), b.iter_batches(batch_rows, columns=columns)):
            if x.column(0).to_pylist() != y.column(0).to_pylist():
                problems.append("wells differ row by row")
                break
            u = np.column_stack([c.to_numpy(zero_copy_only=False) for c in x.columns[1:]])
            v = np.column_stack([c.to_numpy(zero_copy_only=False) for c in y.columns[1:]])
            same = (u == v) | (np.isnan(u) & np.isnan(v))
            n_diff += int((~same).sum())
            if (~same).any():
                worst = max(worst, float(np.nanmax(np.abs(u - v))))
        if n_diff:
            problems.append(f"{n_diff} values differ (max |diff| {worst:g})")
    return (f"OK: {b.metadata.num_rows:,} cells in the same order, {len(feats)} float32 features equal to the "
            f"reference's ({'; '.join(notes) or 'same order'}); metadata {', '.join(meta)}") if not problems \
        else "PROBLEMS: " + "; ".join(problems)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--cells", type=int, default=200_000)
    g.add_argument("--features-per-compartment", type=int, default=300)
    g.add_argument("--sites", type=int, default=9)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", type=Path, required=True)
    e = sub.add_parser("export", help="the SQLite plate as CellProfiler CSV folders or pycytominer single cells")
    e.add_argument("--src", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True,
                   help="a folder (CSV folders), or a .parquet, .csv or .csv.gz file (single cells)")
    e.add_argument("--row-group-rows", type=int, default=1 << 20)
    v = sub.add_parser("verify-layout", help="the single-cell exports against pycytominer's own, on a small plate")
    v.add_argument("--workdir", type=Path, default=WORK / "layout")
    b = sub.add_parser("bench")
    b.add_argument("--src", type=Path, required=True)
    b.add_argument("--tools", nargs="+", default=None, choices=TOOLS, help="default: those that read this layout")
    b.add_argument("--repeat", type=int, default=3)
    b.add_argument("--repeat-slow", type=int, default=None, help="runs of the slow reference tools (default: --repeat)")
    b.add_argument("--check", action="store_true")
    b.add_argument("--cytotable-python", default=None)
    b.add_argument("--reference", type=Path, default=None,
                   help="cytoagg's output from the SQLite plate: --check compares the other layouts' output with it")
    b.add_argument("--time-limit", type=float, default=None, help="seconds; a run past it is killed, not finished")
    r = sub.add_parser("run")
    r.add_argument("tool", choices=TOOLS)
    r.add_argument("--src", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.cmd == "generate":
        generate(args.out, args.cells, args.features_per_compartment, args.sites, args.seed)
    elif args.cmd == "export":
        if single_cell_kind(args.out) == "csv" and source_kind(args.src) == "parquet":
            parquet_to_csv(args.src, args.out)
        elif single_cell_kind(args.out):
            export_single_cells(args.src, args.out, args.row_group_rows)
        else:
            export_cp_csv(args.src, args.out)
    elif args.cmd == "verify-layout":
        print(verify_layout(args.workdir))
    elif args.cmd == "bench":
        bench(args.src, args.tools, args.repeat, args.check, args.cytotable_python, args.repeat_slow,
              args.reference, args.time_limit)
    else:
        run_tool(args.tool, args.src, args.out)


if __name__ == "__main__":
    main()
