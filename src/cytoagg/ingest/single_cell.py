"""Single-cell tables already in pycytominer layout: Parquet, or CSV (converted to a temporary Parquet).

pycytominer's own single-cell outputs (``SingleCells.merge_single_cells``: ``Image_Metadata_Well``,
``Image_Metadata_Plate``, ``Metadata_TableNumber``, ...) are read as they are: ``Image_Metadata_X`` is read as
``Metadata_X`` (:func:`cytoagg.ingest.source.image_metadata_names`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..io.parquet import cell_writer, check_parquet_file, profile_schema
from .formats import arrow_csv_batches, check_csv_complete
from .source import Source, image_metadata_names, normalize_wells, to_float32


BLOCK_BYTES = 64 << 20  # bytes of one row group's columns (as 8-byte values) read at once
SLICE_BYTES = 32 << 20  # float32 bytes of the rows handed on as one pandas frame
MAX_PASSES = 1.25  # a file that chunk-by-chunk reading would decode more often than this goes through a spill file


class SingleCellParquet(Source):
    """Single-cell Parquet in pycytominer layout. Rows are taken in well order (stable): chunk by chunk, each
    chunk's row groups read a block of columns at a time, when that decodes the file about once (row groups in
    well order); otherwise the file is decoded once, its features spilled in well order to a temporary file in
    ``workdir`` (float32: 4 bytes per value) and read back in slices. Memory: a block of columns and a chunk."""

    format = "parquet"

    def __init__(self, path: Path, well_col: str, label: Path | None = None, workdir: Path | None = None):
        self.path = label or path
        self.workdir = workdir or path.parent  # where a file read out of well order is spilled (benchmarks/ingest.md)
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

    def _take(self, rows: np.ndarray, columns: list[str], features: set[str]) -> pa.Table:
        """``rows`` (file positions) of ``columns``, in that order. Row groups are read a block of columns at a time
        (about ``BLOCK_BYTES`` of one row group), and numeric ``features`` cast to float32 at once, so memory holds
        one block and the float32 rows taken, however long the row groups (pycytominer writes a plate of up to
        1,048,576 cells as one row group). Each call reads its rows' row groups whole: a file out of well order
        is decoded once per chunk (benchmarks/ingest.md)."""
        sizes, starts = self._row_groups()
        groups = np.searchsorted(starts, rows, side="right") - 1
        touched = np.unique(groups)
        where = {g: np.flatnonzero(groups == g) for g in touched}
        back = np.argsort(np.concatenate([where[g] for g in touched]), kind="stable")
        width = max(1, BLOCK_BYTES // (8 * max(sizes[g] for g in touched)))
        arrays = []
        for i in range(0, len(columns), width):
            block = columns[i : i + width]
            parts = [self.file.read_row_group(g, columns=block).take(rows[where[g]] - starts[g]) for g in touched]
            table = pa.concat_tables(parts).take(back)
            for name, column in zip(block, table.columns):
                arrays.append(pc.cast(column, pa.float32(), safe=False) if name in features and numeric(column)
                              else column)
            del parts, table
        return pa.Table.from_arrays(arrays, names=columns)

    def _row_groups(self) -> tuple[list[int], np.ndarray]:
        """Rows per row group, and the first row of each (and the end)."""
        meta = self.file.metadata
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        return sizes, np.cumsum([0, *sizes])

    def _passes(self, order: np.ndarray, chunk_rows: int) -> float:
        """How many times reading chunk by chunk (each chunk's row groups whole) decodes the file's rows."""
        sizes, starts = self._row_groups()
        groups = np.searchsorted(starts, order, side="right") - 1
        decoded = sum(int(np.asarray(sizes)[np.unique(groups[s : s + chunk_rows])].sum())
                      for s in range(0, len(order), chunk_rows))
        return decoded / max(len(order), 1)

    def _feature_column(self, name: str, column: pa.ChunkedArray) -> np.ndarray:
        """A feature as float32 (NaN for missing); text that is not a number is an InputError naming it."""
        if numeric(column):
            return pc.cast(column, pa.float32(), safe=False).to_numpy(zero_copy_only=False)
        return to_float32(pd.DataFrame({name: column.to_pandas()}), [name], self.path)[name].to_numpy()

    def _spilled(self, order: np.ndarray, metadata: list[str], features: list[str], slice_rows: int):
        """The rows in ``order``, decoding the file once: metadata taken in memory; features a block of columns at a
        time (about ``BLOCK_BYTES`` for all rows), rows taken, cast to float32 and written one feature after the
        other to a temporary file, then read back a slice of rows at a time (one read per feature). For files whose
        rows are far from well order or whose row groups are longer than a chunk (pycytominer's plate as one row
        group), where chunk-by-chunk reading decodes the file once per chunk."""
        n, rows = len(order), pa.array(order)
        meta = self.file.read(columns=metadata).take(rows)
        width = max(1, BLOCK_BYTES // (8 * max(n, 1)))
        self.workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.workdir, prefix=".ingest-") as tmp:
            spill = Path(tmp) / "features.f32"  # feature-major: feature j's values, in well order, at j * n
            with open(spill, "wb") as fh:
                for i in range(0, len(features), width):
                    block = self.file.read(columns=features[i : i + width]).take(rows)
                    for name, column in zip(block.column_names, block.columns):
                        fh.write(memoryview(self._feature_column(name, column)))
                    del block
            with open(spill, "rb") as fh:
                for first in range(0, n, slice_rows):
                    size = min(slice_rows, n - first)
                    values = np.empty((len(features), size), np.float32)
                    for j, row in enumerate(values):
                        if os.preadv(fh.fileno(), [row], 4 * (j * n + first)) != row.nbytes:
                            raise OSError(f"{spill}: short read")
                    yield self._metadata(meta.slice(first, size)), list(values)

    def _metadata(self, table: pa.Table) -> pd.DataFrame:
        frame = table.to_pandas(ignore_metadata=True).rename(columns=self.renames, copy=False)
        return frame.assign(**{self.well_col: normalize_wells(frame[self.well_col], self.path, self.well_col)})

    def split_batches(self, metadata, features, chunk_rows):
        order = self._order()
        physical = [self._physical.get(c, c) for c in metadata]
        slice_rows = max(1000, SLICE_BYTES // (4 * max(len(features), 1)))
        if self._passes(order, chunk_rows) > MAX_PASSES:
            yield from self._spilled(order, physical, features, slice_rows)
            return
        for start in range(0, len(order), chunk_rows):
            table = self._take(order[start : start + chunk_rows], [*physical, *features], set(features))
            for first in range(0, table.num_rows, slice_rows):  # in slices: the pandas copies stay small
                part = table.slice(first, slice_rows)
                yield (self._metadata(part.select(physical)),
                       [self._feature_column(f, part.column(f)) for f in features])


def numeric(column) -> bool:
    return pa.types.is_floating(column.type) or pa.types.is_integer(column.type)


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
        """The CSV as Parquet in row groups of ``chunk_rows`` (at most ``SLICE_BYTES`` of features: the rows
        buffered), read with Arrow's CSV reader (pandas' parser took most of the time on big plates,
        benchmarks/ingest.md): metadata as text, features parsed as float64 and rounded to float32 (the values the
        other routes give)."""
        chunk_rows = max(1, min(chunk_rows, SLICE_BYTES // (4 * max(len(features), 1))))
        schema = profile_schema(pd.DataFrame(columns=[*metadata, *features]))
        physical = [self._physical.get(c, c) for c in metadata]
        types = {**dict.fromkeys(features, pa.float64()), **dict.fromkeys(physical, pa.string())}
        pending, n_pending = [], 0
        with cell_writer(target, schema) as writer:  # features plain, as every per-cell file
            for batch in arrow_csv_batches(self.path, [*physical, *features], types):
                table = pa.Table.from_batches([batch]).select([*physical, *features])
                pending.append(table.rename_columns(schema.names).cast(schema, safe=False))
                n_pending += batch.num_rows
                while n_pending >= chunk_rows:
                    buffered = pa.concat_tables(pending)
                    writer.write_table(buffered.slice(0, chunk_rows))
                    pending, n_pending = [buffered.slice(chunk_rows)], n_pending - chunk_rows
            if n_pending:
                writer.write_table(pa.concat_tables(pending))

    def split_batches(self, metadata, features, chunk_rows):
        self.workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.workdir, prefix=".ingest-") as tmp:
            target = Path(tmp) / "cells.parquet"
            self._to_parquet(target, metadata, features, chunk_rows)
            source = SingleCellParquet(target, self.well_col, label=self.path, workdir=Path(tmp))
            try:
                yield from source.split_batches(metadata, features, chunk_rows)
            finally:
                source.close()
