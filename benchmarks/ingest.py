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


def run_pycytominer(src: Path, out: Path) -> None:
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
    sc.merge_single_cells(sc_output_file=str(out), output_type="parquet")


def run_cytotable(src: Path, out: Path) -> None:
    import cytotable

    shutil.rmtree(out, ignore_errors=True)
    cytotable.convert(source_path=str(src), dest_path=str(out), dest_datatype="parquet",
                      preset="cellprofiler_sqlite")


# The ingest step's settings as the workflow passes them (the schema's defaults; the benchmark plate has no
# platemap, so no perturbation column: the plate column stands in, and there are no controls to check).
INGEST_SETTINGS = {
    "annotation": {"plate_col": "Metadata_Plate", "well_col": "Metadata_Well", "perturbation_col": "Metadata_Plate",
                   "negcon_col": "Metadata_Plate", "negcon_value": None},
    "format": "sqlite", "platemap": None, "compartments": list(COMPARTMENTS), "hub": None, "links": {},
    "features": None, "blocklist": [], "max_cells_without_image": 0.01, "require_negcon": False,
}


def run_tool(tool: str, src: Path, out: Path) -> None:
    if tool == "floor":
        run_floor(src, out)
    elif tool == "cytoagg":  # exec: the measured process is the CLI itself
        os.execv(sys.executable, [sys.executable, "-m", "cytoagg", "ingest", "--source", str(src), "--out", str(out),
                                  "--plate", "BENCH1", "--params", json.dumps(INGEST_SETTINGS)])
    elif tool == "pycytominer":
        run_pycytominer(src, out)
    elif tool == "cytotable":
        run_cytotable(src, out)
    else:
        raise SystemExit(f"unknown tool {tool!r}; choose from {TOOLS}")


# ---------------------------------------------------------------- measuring


def measure(cmd: list[str], env: dict | None = None, interval: float = 0.05) -> dict:
    """Wall time and peak RSS of a command: the largest sum, polled every ``interval``, over its process tree and
    every process that inherited a marker in its environment (CytoTable's Parsl workers leave the tree);
    also the kernel's peak for the largest single process (``ru_maxrss`` of the reaped child)."""
    import uuid

    import psutil

    marker = uuid.uuid4().hex
    env = dict(env or os.environ, CYTOAGG_BENCH_MARKER=marker)
    t0 = time.perf_counter()
    started = time.time() - 1
    proc = subprocess.Popen(cmd, env=env)
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


def bench(src: Path, tools: list[str], repeat: int, do_check: bool, cytotable_python: str | None,
          repeat_slow: int | None = None) -> None:
    outdir = WORK / "ingest-out"
    outdir.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    n_images = con.execute("SELECT COUNT(*) FROM Per_Image").fetchone()[0]
    n_cols = {c: len(con.execute(f"PRAGMA table_info(Per_{c})").fetchall()) for c in COMPARTMENTS}
    con.close()
    print(f"# {src}: {src.stat().st_size / 1e9:.2f} GB, {n_images} images, columns per table {n_cols}", flush=True)
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
            res = measure([python, __file__, "run", tool, "--src", str(src), "--out", str(out)], env=env)
            res["load_before"] = before
            runs[tool].append(res)
            print(f"{tool} run {r + 1}: {res['wall_s']:.1f} s, peak RSS {res['peak_rss_tree_gb']:.2f} GB "
                  f"(ru_maxrss {res['ru_maxrss_gb']:.2f} GB), load before {before}", flush=True)
    results = {tool: {"best_wall_s": min(x["wall_s"] for x in rs), "peak_rss_gb": max(x["peak_rss_tree_gb"] for x in rs),
                      "runs": rs} for tool, rs in runs.items()}
    print("\n| tool | wall (best of the runs) | peak RSS (max) |")
    print("|---|---:|---:|")
    for tool, r in results.items():
        print(f"| {tool} | {r['best_wall_s']:.1f} s | {r['peak_rss_gb']:.2f} GB |")
    if "cytoagg" in results:
        for other in ("pycytominer", "cytotable", "floor"):
            if other in results:
                print(f"cytoagg speedup over {other}: "
                      f"{results[other]['best_wall_s'] / results['cytoagg']['best_wall_s']:.2f}x")
    if do_check and "cytoagg" in results:
        print("check:", check(src, outdir / "cytoagg.parquet"))
    (WORK / f"ingest_results_{src.stem}.json").write_text(json.dumps(results, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--cells", type=int, default=200_000)
    g.add_argument("--features-per-compartment", type=int, default=300)
    g.add_argument("--sites", type=int, default=9)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", type=Path, required=True)
    b = sub.add_parser("bench")
    b.add_argument("--src", type=Path, required=True)
    b.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    b.add_argument("--repeat", type=int, default=3)
    b.add_argument("--repeat-slow", type=int, default=None, help="runs of the slow reference tools (default: --repeat)")
    b.add_argument("--check", action="store_true")
    b.add_argument("--cytotable-python", default=None)
    r = sub.add_parser("run")
    r.add_argument("tool", choices=TOOLS)
    r.add_argument("--src", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.cmd == "generate":
        generate(args.out, args.cells, args.features_per_compartment, args.sites, args.seed)
    elif args.cmd == "bench":
        bench(args.src, args.tools, args.repeat, args.check, args.cytotable_python, args.repeat_slow)
    else:
        run_tool(args.tool, args.src, args.out)


if __name__ == "__main__":
    main()
