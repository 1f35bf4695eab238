"""Single-cell tables already in pycytominer layout: Parquet, or CSV (converted to a temporary Parquet).

pycytominer's own single-cell outputs (``SingleCells.merge_single_cells``: ``Image_Metadata_Well``,
``Image_Metadata_Plate``, ``Metadata_TableNumber``, ...) are read as they are: ``Image_Metadata_X`` is read as
``Metadata_X`` (:func:`cytoagg.ingest.source.image_metadata_names`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..io.parquet import CHECKSUMS, check_parquet_file, profile_schema, to_arrow
from .formats import check_csv_complete
from .source import Source, image_metadata_names, normalize_wells, to_float32


class SingleCellParquet(Source):
    """Single-cell Parquet in pycytominer layout. Rows are taken in well order (stable), row group by row group,
    so memory holds one row group and one output chunk."""

    format = "parquet"

    def __init__(self, path: Path, well_col: str, label: Path | None = None):
        self.path = label or path
        check_parquet_file(path)
        self.file = pq.ParquetFile(path, page_checksum_verification=True)
        self.well_col = well_col
        physical = list(self.file.schema_arrow.names)
        self.renames = image_metadata_names(physical)
        self.columns = [self.renames.get(c, c) for c in physical]
        self._physical = {out: c for c, out in self.renames.items()}

    def close(self) -> None:
        self.file.close()

    def _order(self) -> np.ndarray:
        wells = self.file.read(columns=[self._physical.get(self.well_col, self.well_col)]).column(0).to_pandas()
        wells = normalize_wells(wells.astype(object), self.path, self.well_col)
        return np.argsort(wells.to_numpy(dtype=str), kind="stable")

    def _take(self, rows: np.ndarray, columns: list[str]) -> pa.Table:
        meta = self.file.metadata
        starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        groups = np.searchsorted(starts, rows, side="right") - 1
        parts, positions = [], []
        for g in np.unique(groups):
            where = np.flatnonzero(groups == g)
            parts.append(self.file.read_row_group(g, columns=columns).take(rows[where] - starts[g]))
            positions.append(where)
        table = pa.concat_tables(parts)
        return table.take(np.argsort(np.concatenate(positions)))

    def batches(self, metadata, features, chunk_rows):
        order = self._order()
        for start in range(0, len(order), chunk_rows):
            frame = self._take(order[start : start + chunk_rows], [self._physical.get(c, c) for c in [*metadata, *features]])
            frame = frame.to_pandas(ignore_metadata=True).rename(columns=self.renames)
            yield frame.assign(**{self.well_col: normalize_wells(frame[self.well_col], self.path, self.well_col)})


class SingleCellCsv(Source):
    """Single-cell CSV in pycytominer layout; converted to a temporary Parquet (in chunks) and read as one."""

    format = "csv"

    def __init__(self, path: Path, well_col: str, workdir: Path):
        self.path, self.well_col, self.workdir = path, well_col, workdir
        check_csv_complete(path)
        physical = list(pd.read_csv(path, nrows=0).columns)
        self.renames = image_metadata_names(physical)
        self.columns = [self.renames.get(c, c) for c in physical]
        self._physical = {out: c for c, out in self.renames.items()}

    def _to_parquet(self, target: Path, metadata: list[str], features: list[str], chunk_rows: int) -> None:
        schema = profile_schema(pd.DataFrame(columns=[*metadata, *features]))
        physical = [self._physical.get(c, c) for c in metadata]
        reader = pd.read_csv(
            self.path, usecols=[*physical, *features], dtype=dict.fromkeys(physical, str), chunksize=chunk_rows
        )
        with pq.ParquetWriter(target, schema, **CHECKSUMS) as writer:
            for chunk in reader:
                chunk = chunk.rename(columns=self.renames)
                frame = pd.concat([chunk[metadata], to_float32(chunk, features, self.path)], axis=1)
                writer.write_table(to_arrow(frame, schema))

    def batches(self, metadata, features, chunk_rows):
        self.workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.workdir, prefix=".ingest-") as tmp:
            target = Path(tmp) / "cells.parquet"
            self._to_parquet(target, metadata, features, chunk_rows)
            source = SingleCellParquet(target, self.well_col, label=self.path)
            try:
                yield from source.batches(metadata, features, chunk_rows)
            finally:
                source.close()
