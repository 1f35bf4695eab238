"""The cell store: a training plate's normalized cells packed once on disk, one ``.npy`` float32 array
grouped by well (training memory-maps it, so drawing a set is index arithmetic on one array), plus a
per-well index (Parquet: the wells' metadata, ``offset`` and ``n_cells``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..io.cells import PlateCells, load_plate_cells
from ..io.files import InputError, atomic_path, write_table


def pack_cell_store(path, features: list[str], out_cells, out_wells, *, plate: str, well_col: str, perturbation_col: str) -> dict:
    """Pack one normalized plate: ``out_cells`` (.npy, float32, cells grouped by well) and ``out_wells``
    (Parquet: one row per well, its metadata, ``offset`` and ``n_cells``)."""
    cells, wells, dropped = load_plate_cells(path, features, plate=plate, well_col=well_col, perturbation_col=perturbation_col)
    with atomic_path(out_cells) as tmp, open(tmp, "wb") as f:
        np.save(f, cells.x)
    index = wells.reset_index(drop=True).copy()
    index["offset"] = cells.offsets[:-1]
    index["n_cells"] = cells.counts
    write_table(index, out_wells)
    return {"plate": plate, "n_cells": int(len(cells.x)), "n_wells": int(len(cells.wells)), "n_dropped": int(dropped.sum())}


def open_cell_store(cells_npy, wells_parquet, *, plate: str, well_col: str, perturbation_col: str) -> tuple[PlateCells, pd.DataFrame]:
    """A packed plate, its cells memory-mapped (read-only): the OS pages them in as sampling touches them."""
    x = np.load(cells_npy, mmap_mode="r")
    wells = pd.read_parquet(wells_parquet)
    offsets = np.r_[wells["offset"].to_numpy(np.int64), len(x)]
    if (np.diff(offsets) != wells["n_cells"].to_numpy()).any():
        raise InputError(f"{wells_parquet}: well offsets do not match {cells_npy}")
    cells = PlateCells(plate, x, offsets, wells[well_col].astype(str).to_numpy(), wells[perturbation_col].astype(str).to_numpy())
    return cells, wells.drop(columns=["offset", "n_cells"])
