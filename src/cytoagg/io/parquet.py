"""Parquet layouts of cytoagg: per-well profiles and per-cell tables (``Metadata_*`` strings, float32 features).

Every Parquet file cytoagg writes carries page checksums (CRC32), and every read verifies them: bytes damaged
after writing (a bad disk, a partial copy that kept its footer) are an error naming the file, not silently
different numbers. Reads go through :func:`reading`, which turns Arrow's errors into one line naming the file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .columns import is_metadata, metadata_columns
from .files import InputError, atomic_path

ROW_GROUP_SIZE = 65_536
CHECKSUMS = {"write_page_checksum": True}  # the options of every Parquet write


@contextlib.contextmanager
def reading(path) -> Iterator[None]:
    """Arrow's read errors (damaged pages, failed checksums, truncation) as one InputError naming ``path``."""
    try:
        yield
    except (pa.ArrowException, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: damaged or unreadable Parquet file ({type(e).__name__}: {first})") from e


def read_arrow(path, columns: Sequence[str] | None = None) -> pa.Table:
    """A Parquet file's table (page checksums verified); a bad file is an InputError naming it."""
    check_parquet_file(Path(path))
    with reading(path):
        return pq.read_table(path, columns=None if columns is None else list(columns), page_checksum_verification=True)


def read_parquet(path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A Parquet file as a DataFrame (page checksums verified); a bad file is an InputError naming it."""
    table = read_arrow(path, columns)
    with reading(path):
        return table.to_pandas()


def profile_schema(df: pd.DataFrame) -> pa.Schema:
    """Metadata as strings, features as float32: the layout of every per-cell and per-well Parquet."""
    fields = []
    for col in df.columns:
        if col.startswith("Metadata_"):
            fields.append(pa.field(col, pa.string()))
        else:
            fields.append(pa.field(col, pa.float32()))
    return pa.schema(fields)


def to_arrow(df: pd.DataFrame, schema: pa.Schema | None = None) -> pa.Table:
    schema = schema or profile_schema(df)
    arrays = []
    for field in schema:
        col = df[field.name]
        if pa.types.is_string(field.type):
            arrays.append(_strings(col))
        else:
            arrays.append(pa.array(np.asarray(col, dtype=np.float32), type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _strings(col: pd.Series) -> pa.Array:
    """``str`` of every value, missing values null. Text and integer columns are converted by Arrow (the same
    strings, without a Python object per value); others (floats: ``str(1.0)`` is ``1.0``) value by value."""
    if col.dtype == object or pd.api.types.is_string_dtype(col) or pd.api.types.is_integer_dtype(col):
        try:
            values = pa.array(col, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            values = None  # mixed objects
        if values is not None and (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
                                   or pa.types.is_integer(values.type) or pa.types.is_null(values.type)):
            return values.cast(pa.string())
    values = col.astype(object).where(col.notna(), None)
    return pa.array([None if v is None else str(v) for v in values], type=pa.string())


# Key-value metadata (provenance) cytoagg writes into the Parquet files of model outputs: the model profiles, and
# the AP and sampling-sweep files made from them; the summaries say it beside their tables.
PRECISION_KEY = "cytoagg.precision"  # the arithmetic the model profiles were computed in: fp32 | bf16
MODEL_PRECISION_KEY = "cytoagg.model_precision"  # the arithmetic the model was trained in


def write_profiles(df: pd.DataFrame, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write a per-cell or per-well table (``Metadata_*`` strings + float32 features) atomically;
    ``metadata``: key-value pairs for the file's footer (see :func:`provenance`)."""
    table = to_arrow(df)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_SIZE, **CHECKSUMS)


def provenance(path: str | os.PathLike) -> dict[str, str]:
    """The ``cytoagg.*`` key-value metadata of a Parquet file (e.g. :data:`PRECISION_KEY`); {} if it has none."""
    meta = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if k.startswith(b"cytoagg.")}


def merged_provenance(paths) -> dict[str, str]:
    """The provenance of several files in one: a key's distinct values joined by ``, `` (sorted)."""
    values: dict[str, set[str]] = {}
    for path in paths:
        for k, v in provenance(path).items():
            values.setdefault(k, set()).add(v)
    return {k: ", ".join(sorted(v)) for k, v in values.items()}


def parquet_columns(path: str | os.PathLike) -> list[str]:
    check_parquet_file(Path(path))
    with reading(path):
        return list(pq.read_schema(path).names)


def read_profiles(
    path: str | os.PathLike, features: Sequence[str] | None = None
) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """Read metadata (DataFrame) and features (float32 matrix) of a profile Parquet.

    ``features`` selects and orders feature columns (default: every non-``Metadata_`` column, so
    learned embeddings work too); a missing one is an error naming the file.
    """
    names = parquet_columns(path)
    meta_cols = metadata_columns(names)
    if features is None:
        features = [c for c in names if c not in set(meta_cols)]
    else:
        missing = [f for f in features if f not in set(names)]
        if missing:
            raise InputError(
                f"{path}: {len(missing)} feature(s) required by the model/feature list are missing, "
                f"e.g. {missing[:5]}"
            )
    table = read_arrow(path, list(meta_cols) + list(features))
    meta = table.select(meta_cols).to_pandas()
    if features:
        x = np.column_stack(
            [table.column(f).to_numpy(zero_copy_only=False).astype(np.float32, copy=False) for f in features]
        )
    else:
        x = np.empty((table.num_rows, 0), dtype=np.float32)
    return meta, x, list(features)


# --- per-cell Parquet files (written by ingest and normalize, read by every later step) ---

PARQUET_MAGIC = b"PAR1"


def check_parquet_file(path: Path) -> None:
    """A Parquet file starts and ends with ``PAR1``; a missing footer means a truncated copy."""
    if not path.is_file() or path.stat().st_size < 12:
        raise InputError(f"{path}: not a Parquet file")
    with open(path, "rb") as fh:
        head = fh.read(4)
        fh.seek(-4, os.SEEK_END)
        tail = fh.read(4)
    if head != PARQUET_MAGIC:
        raise InputError(f"{path}: not a Parquet file")
    if tail != PARQUET_MAGIC:
        raise InputError(f"{path}: truncated Parquet file (no footer)")


def open_parquet(path: str | os.PathLike) -> pq.ParquetFile:
    """A Parquet file opened for reading; not Parquet, truncated or unreadable is an InputError naming it.

    Column chunks are read as needed (no pre-buffering of a whole row group's raw bytes: half the memory,
    same speed on local disks).
    """
    path = Path(path)
    check_parquet_file(path)
    with reading(path):
        return pq.ParquetFile(path, pre_buffer=False, page_checksum_verification=True)


ROW_GROUP_VALUES = 2**26  # feature values per row group at most (256 MB of float32): what ingest buffers, normalize reads at once


def rows_per_group(n_features: int, chunk_rows: int) -> int:
    """Rows per written row group: ``chunk_rows``, fewer for wide plates (row groups stay <= 256 MB)."""
    return max(1, min(int(chunk_rows), ROW_GROUP_VALUES // max(n_features, 1)))


def cell_writer(path: str | os.PathLike, schema: pa.Schema) -> pq.ParquetWriter:
    """The writer of every per-cell Parquet (ingest, normalize): features plain and uncompressed, ``Metadata_*``
    dictionary-encoded and snappy-compressed.

    Float features rarely repeat and hardly compress (snappy saves 1-8% on real and synthetic plates):
    pyarrow's defaults, trying a dictionary on every column and compressing every page, cost most of
    the time of writing and reading them (benchmarks/normalize.md).
    """
    metadata = [f.name for f in schema if is_metadata(f.name)]
    compression = {f.name: "snappy" if is_metadata(f.name) else "none" for f in schema}
    return pq.ParquetWriter(path, schema, use_dictionary=metadata, compression=compression, **CHECKSUMS)
