"""The cell store: a training plate's normalized cells packed once on disk, in a folder holding one ``.npy``
float32 array grouped by well (training memory-maps it, so drawing a set is index arithmetic on one array)
and a per-well index (Parquet: the wells' metadata, ``offset`` and ``n_cells``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..io.cells import PlateCells, load_plate_cells
from ..io.columns import Annotation
from ..io.files import InputError, atomic_dir
from ..io.parquet import CHECKSUMS, read_arrow


CELLS, WELLS = "cells.npy", "wells.parquet"  # the two files of a cell store folder


def pack_cell_store(path, features: list[str], out_dir, plate: str, annotation: Annotation) -> dict:
    """Pack one normalized plate into the cell store folder ``out_dir``: ``cells.npy`` (float32, cells grouped by
    well) and ``wells.parquet`` (one row per well: its metadata, ``offset`` and ``n_cells``; the plate's name in
    the file's metadata)."""
    cells, wells, dropped = load_plate_cells(path, features, plate, annotation)
    index = wells.reset_index(drop=True).copy()
    index["offset"] = cells.offsets[:-1]
    index["n_cells"] = cells.counts
    table = pa.Table.from_pandas(index, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"cytoagg_plate": plate.encode()})
    with atomic_dir(out_dir) as tmp:
        with open(tmp / CELLS, "wb") as f:
            np.save(f, cells.x)
        pq.write_table(table, tmp / WELLS, **CHECKSUMS)
    return {"plate": plate, "n_cells": int(len(cells.x)), "n_wells": int(len(cells.wells)), "n_dropped": int(dropped.sum())}


def open_cell_store(store, annotation: Annotation) -> tuple[PlateCells, pd.DataFrame]:
    """A packed plate, its cells memory-mapped (read-only): the OS pages them in as sampling touches them."""
    store = Path(store)
    if not (store / CELLS).is_file() or not (store / WELLS).is_file():
        raise InputError(f"{store}: not a cell store (no {CELLS} and {WELLS} inside)")
    x = np.load(store / CELLS, mmap_mode="r")
    table = read_arrow(store / WELLS)
    plate = (table.schema.metadata or {}).get(b"cytoagg_plate", store.name.encode()).decode()
    wells = table.to_pandas()
    offsets = np.r_[wells["offset"].to_numpy(np.int64), len(x)]
    if (np.diff(offsets) != wells["n_cells"].to_numpy()).any():
        raise InputError(f"{store}: well offsets in {WELLS} do not match {CELLS}")
    cells = PlateCells(
        plate, x, offsets, wells[annotation.well_col].astype(str).to_numpy(),
        wells[annotation.perturbation_col].astype(str).to_numpy(),
    )
    return cells, wells.drop(columns=["offset", "n_cells"])
