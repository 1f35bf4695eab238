"""The normalize step: one plate's cells normalized per plate, streamed within a memory bound.

Statistics (``cytoagg.preprocess.statistics``) are computed in float64 and the output is float32. A plate
is never held in memory. Pass 1 reads batches of whole feature columns (the fit cells' values, in the
file's float type) on ``threads`` threads. Pass 2 reads row groups (or blocks of their rows when a row
group is larger than the memory), transforms them column by column and writes each block as a row group
on a second thread, so that encoding overlaps reading. The output goes to
a temporary file renamed only when complete. Batches are sized from ``memory_mb``: peak RSS is about the
interpreter's 130 MB plus ``0.8 * memory_mb``, plus the Parquet footers pyarrow holds (~0.9 KB per row group and
column, for the input and the output): 0.92 GB on a 768,000 x 1,000 plate, 1.75 GB on 768,000 x 5,200 (16 GB)
at the default 1024 (``benchmarks/normalize.md``).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..io.columns import Annotation, is_metadata, measurement_columns, metadata_columns
from ..io.files import InputError, atomic_path, available_cpus
from ..io.parquet import cell_writer, open_parquet, reading
from ..settings import Settings
from .statistics import (
    PCA_COLUMN_PREFIX,
    NormalizerParams,
    _fit,
    _well_means,
    _well_sums,
    check_method,
    transform_block,
    transform_kept,
)

logger = logging.getLogger(__name__)

_MB = 2**20
# Memory model (bytes held per value at once), used to size batches from memory_mb.
_ARRAY_SHARE = 0.7  # of memory_mb for arrays; the rest covers the allocators' slack and the interpreter
_TILE_SHARE = 0.1  # of the array share for the (row group x columns) tile being read
_BYTES_PER_TILE_VALUE = 8  # a decoded column chunk and the decoder's freed but not yet reused buffers
_BYTES_PER_SORT_VALUE = 4  # pass 1: the fit cells of a batch of columns, in the file's float type (float32)
_BYTES_PER_SORT_THREAD_ROW = 24  # pass 1, per thread and fit cell: the float64 deviations of the column in hand
_BYTES_PER_STAT_VALUE = 24  # spherize's passes over whole columns: the batch, its float64 copy, masks
_BYTES_PER_WRITE_VALUE = 8  # pass 2: a block's float32 output, and the previous block's, being written
_BYTES_PER_ROW_VALUE = {"transform": 24, "qr": 32}  # float64 row blocks (well means, spherize): in, out, copies
_BYTES_PER_METADATA_VALUE = 64

def _column_values(col, dtype) -> np.ndarray:
    """A Parquet column (Arrow) as a numpy array of ``dtype``; nulls become NaN. Zero-copy when it can be."""
    values = col.to_numpy()
    return values if values.dtype == dtype else values.astype(dtype)


class PlateColumns:
    """A Parquet plate read in pieces that fit ``memory_mb``.

    Parquet stores a row group column by column, so every read is a tile (row group x some columns):
    batches of whole columns for the statistics, row groups (or blocks of their rows) for the
    transform. A row group too large for the memory is read once per block of its rows (more
    reading, same memory).
    """

    def __init__(self, pf: pq.ParquetFile, path, features: list[str], memory_mb: float, threads: int = 1):
        self.pf, self.path, self.features, self.threads = pf, path, features, max(1, int(threads))
        self.budget = memory_mb * _MB * _ARRAY_SHARE
        meta = pf.metadata
        self.group_rows = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        self.group_starts = np.concatenate([[0], np.cumsum(self.group_rows, dtype=np.int64)])
        self.n_rows, self.n_features = meta.num_rows, len(features)
        schema = pf.schema_arrow
        self.dtype = np.float32 if all(schema.field(f).type == pa.float32() for f in features) else np.float64
        self.n_column_batches = 0  # counted over all passes, for the summary
        self.n_row_batches = 0
        self.max_rereads = 1  # most times a row group was read in one pass over rows

    def _read(self, group: int, names: list[str]) -> pa.Table:
        with reading(self.path):
            return self.pf.read_row_group(group, columns=names, use_threads=self.threads > 1)

    def column_arrays(self, rows=None, columns=None, bytes_per_value=_BYTES_PER_SORT_VALUE,
                      bytes_per_thread_row=_BYTES_PER_SORT_THREAD_ROW):
        """(feature indices, features x fit cells array, C order) for batches of whole columns.

        A batch is filled row group by row group, from tiles of at most ``_TILE_SHARE`` of the memory.
        """
        columns = np.arange(self.n_features) if columns is None else np.asarray(columns)
        n = self.n_rows if rows is None else int(rows.sum())
        room = self.budget * (1 - _TILE_SHARE) - bytes_per_thread_row * n * self.threads
        width = max(1, int(room // max(bytes_per_value * n, 1)))
        tile_width = max(1, int(self.budget * _TILE_SHARE // (_BYTES_PER_TILE_VALUE * max(self.group_rows, default=1))))
        for start in range(0, len(columns), width):
            chunk = columns[start:start + width]
            names = [self.features[i] for i in chunk]
            out = np.empty((len(chunk), n), dtype=self.dtype)
            filled = 0
            for group in range(len(self.group_rows)):
                take = None if rows is None else rows[self.group_starts[group]:self.group_starts[group + 1]]
                size = self.group_rows[group] if take is None else int(take.sum())
                if size == 0:
                    continue
                for t in range(0, len(names), tile_width):
                    tile = self._read(group, names[t:t + tile_width])
                    for j, name in enumerate(names[t:t + tile_width], start=t):
                        values = _column_values(tile.column(name), self.dtype)
                        out[j, filled:filled + size] = values if take is None else values[take]
                    del tile
                filled += size
            self.n_column_batches += 1
            yield chunk, out

    def column_batches(self, rows=None, columns=None):
        """(feature indices, float64 fit cells x those features, +-inf as NaN) for batches of whole columns."""
        for chunk, x in self.column_arrays(rows, columns, _BYTES_PER_STAT_VALUE, 0):
            x64 = np.array(x.T, dtype=np.float64, order="C")
            del x
            x64[np.isinf(x64)] = np.nan
            yield chunk, x64

    def blocks(self, columns, metadata=(), bytes_per_value=_BYTES_PER_WRITE_VALUE):
        """(first row, number of rows, Arrow table of ``metadata``, tiles) for consecutive row blocks.

        ``tiles`` yields (position in ``columns``, one array per feature) for tiles of columns, each read
        when iterated, so a block's input is never in memory at once. A row group is one block if its
        output (``bytes_per_value``) fits the memory, else it is cut into blocks of rows and read once per block.
        """
        names = [self.features[i] for i in columns]
        metadata = list(metadata)
        bytes_per_row = bytes_per_value * len(names) + _BYTES_PER_METADATA_VALUE * len(metadata)
        for group, n_group in enumerate(self.group_rows):
            start = int(self.group_starts[group])
            block = int(np.clip(self.budget * (1 - _TILE_SHARE) // max(bytes_per_row, 1), 1, max(n_group, 1)))
            tile_width = max(1, int(self.budget * _TILE_SHARE // (_BYTES_PER_TILE_VALUE * max(n_group, 1))))
            self.max_rereads = max(self.max_rereads, -(-n_group // block))
            for first in range(0, n_group, block):
                m = min(block, n_group - first)
                meta = None
                if metadata:
                    meta = self._read(group, metadata)
                    meta = meta if m == n_group else meta.slice(first, m)
                self.n_row_batches += 1
                yield start + first, m, meta, self._tiles(group, names, tile_width, first, m)

    def _tiles(self, group, names, width, first, m):
        whole = first == 0 and m == self.group_rows[group]
        for t in range(0, len(names), width):
            tile = self._read(group, names[t:t + width])
            if whole:
                arrays = [_column_values(tile.column(name), self.dtype) for name in names[t:t + width]]
            else:  # copies, so that the tile is freed
                arrays = [np.array(_column_values(tile.column(name).slice(first, m), self.dtype))
                          for name in names[t:t + width]]
            del tile
            yield t, arrays

    def row_blocks(self, columns, use="transform", metadata=()):
        """(first row, float64 cells x ``columns``, Arrow table of ``metadata``) for consecutive row blocks."""
        for start, m, meta, tiles in self.blocks(columns, metadata, _BYTES_PER_ROW_VALUE[use]):
            x = np.empty((m, len(columns)))
            for t, arrays in tiles:
                for j, values in enumerate(arrays, start=t):
                    x[:, j] = values
            x[np.isinf(x)] = np.nan
            yield start, x, meta


def _metadata_row_groups(pf: pq.ParquetFile, columns: Sequence[str], path) -> Iterator[pa.Table]:
    for group in range(pf.num_row_groups):
        with reading(path):
            table = pf.read_row_group(group, columns=list(columns))
        yield table


# --------------------------------------------------------------------------------------------------
# The plate
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NormalizeSettings(Settings):
    """Config ``normalize:`` (its schema documents each field) and the metadata columns."""

    annotation: Annotation
    method: str
    samples: str
    epsilon: float | None
    spherize_method: str
    spherize_center: bool
    well_center: bool
    memory_mb: float


def normalize_plate(src, out, settings: NormalizeSettings, *, threads: int | None = None,
                    log: logging.Logger | None = None) -> dict:
    """Normalize one plate's cells (Parquet ``src`` -> Parquet ``out``) within about ``memory_mb`` of RAM.

    Statistics come from the cells ``samples`` selects ("all" or a pandas query on the metadata, e.g.
    ``"Metadata_broad_sample == 'DMSO'"``) and are applied to every cell; ``well_center`` then
    subtracts each well's mean. ``Metadata_*`` columns pass through unchanged; columns that are
    neither metadata nor features (CellProfiler bookkeeping) are left out, so that readers taking
    every non-metadata column as a feature see only normalized ones. ``threads`` (default: the CPUs this
    process may use) sort columns and decode Parquet in parallel and write on a second thread. Returns a summary.
    """
    log = log or logger
    method, samples, memory_mb = settings.method, settings.samples, settings.memory_mb
    spherize_method, well_center, well_col = settings.spherize_method, settings.well_center, settings.annotation.well_col
    method, epsilon = check_method(method, settings.epsilon, spherize_method, settings.spherize_center)
    if not memory_mb or memory_mb <= 0:
        raise InputError(f"memory_mb must be positive, got {memory_mb!r}")
    threads = available_cpus() if threads is None else int(threads)
    if threads < 1:
        raise InputError(f"threads must be at least 1, got {threads!r}")
    pf = open_parquet(src)
    names = pf.schema_arrow.names
    features = measurement_columns(names)
    if not features:
        raise InputError(f"{src}: no feature columns (Cells_/Cytoplasm_/Nuclei_*) found")
    if well_center and well_col not in names:
        raise InputError(f"{src}: well column {well_col!r} not found; needed for well_center")

    others = [c for c in names if not is_metadata(c) and c not in set(features)]
    if others:
        log.warning("%s: %d column(s) neither metadata nor feature left out of the output: %s",
                    src, len(others), others)
    fit_rows = _query_rows(pf, samples, src)
    source = PlateColumns(pf, src, features, memory_mb, threads)
    if method == "spherize" and 8 * 3 * len(features) ** 2 > source.budget:
        log.warning("%s: spherize of %d features needs ~%.0f MB for its matrices, more than memory_mb=%s allows",
                    src, len(features), 24 * len(features) ** 2 / _MB, memory_mb)
    params = _fit(source, fit_rows, method, epsilon, spherize_method, settings.spherize_center)
    if params.n_out == 0:
        raise InputError(f"{src}: every feature is constant or all-NaN on the fit cells ({samples})")

    kept = set(params.kept.tolist())
    dropped = [f for i, f in enumerate(features) if i not in kept]
    if dropped:
        log.warning("%s: dropped %d feature(s) constant, zero-spread or all-NaN on the fit cells (%s): %s",
                    src, len(dropped), samples, dropped)
    well_means = wells = None
    if well_center:
        wells = _well_codes(pf, well_col, src)
        well_means = _plate_well_means(source, params, wells)
    _write_normalized(source, out, _output_names(features, params), params, wells, well_means)
    if source.max_rereads > 1:
        log.info("%s: row groups too large for memory_mb=%s are read up to %d times per pass",
                 src, memory_mb, source.max_rereads)

    summary = {
        "src": str(src), "out": str(out), "method": method,
        "spherize_method": spherize_method if method == "spherize" else None,
        "samples": samples, "well_center": bool(well_center),
        "n_cells": pf.metadata.num_rows, "n_fit_cells": params.n_fit,
        "n_features_in": len(features), "n_features_out": params.n_out, "dropped_features": dropped,
        "dropped_columns": others,
        "n_column_batches": source.n_column_batches,
        "n_row_batches": source.n_row_batches,
        "row_group_reads": source.max_rereads,
        "threads": threads,
    }
    log.info("%s -> %s: %s (samples=%s%s) on %d of %d cells, %d -> %d features, %d column / %d row batches",
             src, out, method if method != "spherize" else f"spherize {spherize_method}", samples,
             ", well-centered" if well_center else "", params.n_fit, summary["n_cells"], len(features),
             params.n_out, summary["n_column_batches"], summary["n_row_batches"])
    return summary


def _output_names(features: list[str], params: NormalizerParams) -> list[str]:
    if params.spherize_method in ("PCA", "PCA-cor"):
        return [f"{PCA_COLUMN_PREFIX}{i}" for i in range(1, params.n_out + 1)]
    return [features[i] for i in params.kept]


def _query_rows(pf: pq.ParquetFile, samples: str, src) -> np.ndarray | None:
    """Boolean mask of the cells a ``samples`` query selects (None for "all"), evaluated per row group."""
    if samples == "all":
        return None
    if not isinstance(samples, str) or not samples.strip():
        raise InputError(f"samples must be 'all' or a pandas query on metadata columns, got {samples!r}")
    masks = []
    for table in _metadata_row_groups(pf, metadata_columns(pf.schema_arrow.names), src):
        try:
            mask = table.to_pandas().eval(samples)
        except Exception as err:  # pandas raises many kinds for a bad query
            raise InputError(f"{src}: samples query {samples!r} failed on the metadata columns: {err}") from err
        if not isinstance(mask, pd.Series) or mask.dtype != bool or len(mask) != table.num_rows:
            raise InputError(f"{src}: samples query {samples!r} does not give one True/False per cell")
        masks.append(mask.to_numpy())
    rows = np.concatenate(masks) if masks else np.zeros(0, dtype=bool)
    if not rows.any():
        raise InputError(f"{src}: samples query {samples!r} matches no cell (metadata values are strings)")
    return rows


def _well_codes(pf: pq.ParquetFile, well_col: str, src) -> np.ndarray:
    """Index of each cell's well, over the whole plate."""
    index: dict = {}
    codes = []
    for table in _metadata_row_groups(pf, [well_col], src):
        values = table.column(well_col).to_pylist()
        codes.append(np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int64,
                                 count=len(values)))
    return np.concatenate(codes) if codes else np.zeros(0, dtype=np.int64)


def _plate_well_means(source: PlateColumns, params: NormalizerParams, wells: np.ndarray) -> np.ndarray:
    """Mean normalized profile of each well: a pass over row blocks accumulating per-well sums."""
    n_wells = int(wells.max()) + 1 if len(wells) else 0
    sums, counts = np.zeros((n_wells, params.n_out)), np.zeros((n_wells, params.n_out))
    for start, x, _ in source.row_blocks(params.kept):
        s, c = _well_sums(transform_kept(x, params), wells[start:start + len(x)], n_wells)
        sums += s
        counts += c
    return _well_means(sums, counts)

class _BackgroundWriter:
    """Writes row groups on a second thread (pyarrow releases the GIL while encoding), so that writing one
    block overlaps reading and transforming the next. At most two blocks are in flight."""

    def __init__(self, writer: pq.ParquetWriter, threaded: bool):
        self.writer, self.error = writer, None
        self.slots = threading.Semaphore(2 if threaded else 1)
        self.queue: queue.Queue | None = queue.Queue() if threaded else None
        self.thread = threading.Thread(target=self._run, daemon=True) if threaded else None
        if self.thread:
            self.thread.start()

    def _run(self) -> None:
        while (table := self.queue.get()) is not None:
            try:
                if self.error is None:
                    self.writer.write_table(table, row_group_size=max(table.num_rows, 1))
            except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
                self.error = err
            finally:
                del table
                self.slots.release()

    def reserve(self) -> None:
        """Wait until fewer than two blocks are in flight (call before reading the next block)."""
        self.slots.acquire()
        if self.error is not None:
            raise self.error

    def write(self, table: pa.Table) -> None:
        if self.queue is None:
            try:
                self.writer.write_table(table, row_group_size=max(table.num_rows, 1))
            finally:
                self.slots.release()
        else:
            self.queue.put(table)

    def close(self) -> None:
        """Wait for the queued blocks; re-raise a write error."""
        if self.thread is not None and self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if self.error is not None:
            raise self.error


def _write_normalized(source: PlateColumns, out, out_features, params, wells, well_means) -> None:
    """Transform row block by row block into a temporary file, renamed onto ``out`` when complete.

    Column-wise methods transform each tile of columns as it is read; spherize needs a block's every
    feature at once (its rotation mixes them), so its blocks are sized for float64 rows.
    """
    passthrough = [f for f in source.pf.schema_arrow if is_metadata(f.name)]
    schema = pa.schema(passthrough + [pa.field(name, pa.float32()) for name in out_features])
    rotate = params.rotation is not None
    per_value = _BYTES_PER_ROW_VALUE["transform"] if rotate else _BYTES_PER_WRITE_VALUE
    ring: list[np.ndarray | None] = [None, None]  # outputs of the block in hand and of the one being written
    with atomic_path(out) as tmp:
        with cell_writer(tmp, schema) as writer:
            background = _BackgroundWriter(writer, threaded=source.threads > 1)
            written = 0
            try:
                blocks = source.blocks(params.kept, [f.name for f in passthrough], per_value)
                for i in itertools.count():
                    background.reserve()  # the block that used ring[i % 2] is written by now
                    block = next(blocks, None)
                    if block is None:
                        background.slots.release()
                        break
                    start, n, meta, tiles = block
                    if ring[i % 2] is None or ring[i % 2].shape[1] < n:
                        ring[i % 2] = None
                        ring[i % 2] = np.empty((params.n_out, n), dtype=np.float32)
                    y = ring[i % 2][:, :n]
                    codes = None if well_means is None else wells[start:start + n]
                    if rotate:
                        cols = [values for _, arrays in tiles for values in arrays]
                        transform_block(cols, params, None if codes is None else well_means[codes], out=y)
                        del cols
                    else:
                        for t, arrays in tiles:
                            part = params.columns(t, t + len(arrays))
                            offsets = None if codes is None else well_means[:, t:t + len(arrays)][codes]
                            transform_block(arrays, part, offsets, out=y[t:t + len(arrays)])
                            del arrays
                    arrays = [meta.column(f.name) for f in passthrough] + [pa.array(v) for v in y]
                    del y, meta
                    background.write(pa.Table.from_arrays(arrays, schema=schema))
                    del arrays
                    written += n
            finally:
                background.close()
            if written == 0:
                writer.write_table(schema.empty_table())
