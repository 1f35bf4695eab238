"""A plate's cells: one contiguous float32 array grouped by well, with per-well offsets, read from a
normalized (or any per-cell) Parquet, so that a well's cells are one slice (``cytoagg.model.cellstore``
packs them once on disk for training)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .columns import Annotation, is_metadata
from .files import InputError
from .parquet import open_parquet, read_arrow, read_profiles, reading

logger = logging.getLogger(__name__)


@dataclass
class PlateCells:
    """All cells of one plate, grouped by well: cells of well w are ``x[offsets[w]:offsets[w + 1]]``."""

    plate: str
    x: np.ndarray  # (n_cells, n_features) float32
    offsets: np.ndarray  # (n_wells + 1,) int64
    wells: np.ndarray  # (n_wells,) well names
    perturbations: np.ndarray  # (n_wells,) perturbation of each well

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def well_index(self) -> np.ndarray:
        """Well of each cell, (n_cells,)."""
        return np.repeat(np.arange(len(self.wells)), self.counts)

    @classmethod
    def from_cells(cls, plate: str, x: np.ndarray, well: np.ndarray, perturbation: np.ndarray) -> "PlateCells":
        """Group cells by well (stable), whatever their order on disk."""
        well = np.asarray(well).astype(str)
        perturbation = np.asarray(perturbation).astype(str)
        if len(well) > 1 and not (well[1:] >= well[:-1]).all():  # ingest writes wells in order: no copy then
            order = np.argsort(well, kind="stable")
            well, perturbation, x = well[order], perturbation[order], x[order]
        starts = np.r_[0, np.flatnonzero(well[1:] != well[:-1]) + 1] if len(well) else np.zeros(0, dtype=np.int64)
        offsets = np.r_[starts, len(well)].astype(np.int64)
        return cls(plate, np.ascontiguousarray(x, dtype=np.float32), offsets, well[starts], perturbation[starts])



def load_plate_cells(path, features: list[str], plate: str, annotation: Annotation) -> tuple[PlateCells, pd.DataFrame, pd.Series]:
    """Read a normalized plate: its cells grouped by well, each well's metadata, and cells dropped per well.

    Cells with NaN/inf in any of ``features`` are dropped (counted per well); a well left with no
    cell disappears.
    """
    meta, x, _ = read_profiles(path, features)
    well_col, perturbation_col = annotation.well_col, annotation.perturbation_col
    for col in (well_col, perturbation_col):
        if col not in meta.columns:
            raise InputError(f"{path}: metadata column {col!r} not found (have {sorted(meta.columns)[:10]}...)")
    finite = np.isfinite(x).all(axis=1)
    dropped = meta.loc[~finite, well_col].value_counts().sort_index()
    if len(dropped):
        logger.warning("%s: dropped %d cells with NaN/inf features in %d wells", path, int((~finite).sum()), len(dropped))
    if not finite.all():
        meta, x = meta.loc[finite].reset_index(drop=True), x[finite]
    cells = PlateCells.from_cells(plate, x, meta[well_col].to_numpy(), meta[perturbation_col].to_numpy())
    return cells, plate_wells(meta, path, annotation), dropped


def plate_wells(meta: pd.DataFrame, path, annotation: Annotation) -> pd.DataFrame:
    """:func:`well_metadata` of a plate's cells, refusing a well whose cells name several perturbations."""
    well_col, perturbation_col = annotation.well_col, annotation.perturbation_col
    wells = well_metadata(meta, well_col)
    if perturbation_col not in wells.columns:  # never write a profile without what it is a profile of
        varies = meta.groupby(well_col)[perturbation_col].nunique(dropna=False)
        raise InputError(f"{path}: {perturbation_col!r} differs between the cells of well(s) "
                         f"{sorted(varies.index[varies > 1])[:10]}: each well must hold one perturbation")
    return wells


class CellStream:
    """A per-cell Parquet read a chunk of cells at a time: every cell's metadata in memory, the features streamed.

    For steps that need each cell once (embed): memory holds one chunk of features, not the plate. ``well_index``
    numbers each cell's well in sorted well order, as :class:`PlateCells` orders them.
    """

    def __init__(self, path, features: list[str], annotation: Annotation):
        self.path, self.features = path, list(features)
        columns = open_parquet(path).schema_arrow.names
        names = set(columns)
        for col in (annotation.well_col, annotation.perturbation_col):
            if col not in names:
                raise InputError(f"{path}: metadata column {col!r} not found (have {sorted(names)[:10]}...)")
        missing = [f for f in self.features if f not in names]
        if missing:
            raise InputError(
                f"{path}: {len(missing)} feature(s) required by the model/feature list are missing, e.g. {missing[:5]}"
            )
        self.meta = read_arrow(path, [c for c in columns if is_metadata(c)]).to_pandas()
        self.well_index, self.well_names = pd.factorize(self.meta[annotation.well_col].astype(str).to_numpy(), sort=True)

    def chunks(self, chunk_cells: int):
        """(first row, (n, n_features) float32 features) for consecutive chunks of the file's rows."""
        return feature_chunks(self.path, self.features, chunk_cells)


def feature_chunks(path, features: list[str], chunk_cells: int):
    """(first row, (n, len(features)) float32) for consecutive chunks of a per-cell Parquet's rows, in ``features``'
    order; a damaged page met on the way is an InputError naming the file."""
    start = 0
    pf = open_parquet(path)
    with reading(path):
        for batch in pf.iter_batches(batch_size=chunk_cells, columns=list(features)):
            x = np.empty((batch.num_rows, len(features)), dtype=np.float32)
            for j, name in enumerate(features):
                x[:, j] = batch.column(name).to_numpy(zero_copy_only=False)
            yield start, x
            start += len(x)


def plate_name(path, annotation: Annotation) -> str:
    """The plate a per-cell or per-well file holds: its plate column's value (one per file)."""
    values = read_arrow(path, [annotation.plate_col]).column(0).unique().to_pylist()
    if len(values) != 1:
        raise InputError(f"{path}: expected one plate in column {annotation.plate_col}, found {values[:5]}")
    return str(values[0])


_MISSING = "\x00missing"


def well_metadata(meta: pd.DataFrame, well_col: str) -> pd.DataFrame:
    """One row per well (sorted by well): the metadata columns that are constant within every well, plus n_cells."""
    meta = meta.sort_values(well_col, kind="stable").reset_index(drop=True)
    wells = meta[well_col].astype(str).to_numpy()
    first = np.r_[0, np.flatnonzero(wells[1:] != wells[:-1]) + 1]
    keep = {}
    for col in meta.columns:
        values = meta[col].astype("string").fillna(_MISSING).to_numpy(dtype=object)  # a missing value equals itself
        broadcast = np.repeat(values[first], np.diff(np.r_[first, len(values)]))
        if (values == broadcast).all():
            keep[col] = meta[col].to_numpy()[first]
    out = pd.DataFrame(keep)
    out["Metadata_n_cells"] = np.diff(np.r_[first, len(wells)]).astype(str)
    return out
