"""File helpers shared by every step: atomic outputs and Parquet with features kept as float32."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .columns import is_metadata, metadata_columns

ROW_GROUP_SIZE = 65_536
_UMASK = os.umask(0)
os.umask(_UMASK)


class InputError(ValueError):
    """Bad user input: the message names the file, column or setting."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    No reader ever sees a half-written file, and a failed step leaves nothing behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():
            tmp.chmod(0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, as Slurm and taskset set it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, log: logging.Logger | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) while the block runs; wait for a holder.

    For steps that keep state between runs (training's resume state): when snakemake itself is killed,
    its running job lives on, and a rerun must not work on the same files at the same time. The
    kernel releases the lock when its holder exits, killed or not, so a stale lock file never blocks.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = log or logging.getLogger("cytoagg")
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            log.warning("%s is held by another process (pid %s), e.g. a job left running when snakemake was killed; "
                        "waiting for it to end", path, holder)
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError as e:  # a file system without flock (some NFS or Lustre mounts): run unlocked
            log.warning("%s: cannot lock on this file system (%s); going on without the lock", path, e)
            yield
            return
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a small table atomically; format from the suffix (.parquet, .csv, .md)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        elif path.suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            raise ValueError(f"unsupported table suffix: {path}")


def write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


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
            values = col.astype(object).where(col.notna(), None)
            arrays.append(pa.array([None if v is None else str(v) for v in values], type=pa.string()))
        else:
            arrays.append(pa.array(np.asarray(col, dtype=np.float32), type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def write_profiles(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a per-cell or per-well table (``Metadata_*`` strings + float32 features) atomically."""
    with atomic_path(path) as tmp:
        pq.write_table(to_arrow(df), tmp, row_group_size=ROW_GROUP_SIZE)


def parquet_columns(path: str | os.PathLike) -> list[str]:
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
    table = pq.read_table(path, columns=list(meta_cols) + list(features))
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
    try:
        return pq.ParquetFile(path, pre_buffer=False)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet file ({e})") from e


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
    return pq.ParquetWriter(path, schema, use_dictionary=metadata, compression=compression)
