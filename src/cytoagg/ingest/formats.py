"""Which kind of file a plate is, and checks that catch truncated copies before any reading."""

from __future__ import annotations

import csv
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from ..io.files import InputError
from ..io.parquet import PARQUET_MAGIC

FORMATS = ("sqlite", "cp_csv", "parquet", "csv")
SQLITE_MAGIC = b"SQLite format 3\x00"


def detect_format(source: str | os.PathLike) -> str:
    """``sqlite``/``parquet`` by magic bytes, ``csv`` by suffix, ``cp_csv`` for a folder."""
    path = Path(source)
    if path.is_dir():
        return "cp_csv"
    if not path.is_file():
        raise InputError(f"{path}: no such file or folder")
    with open(path, "rb") as fh:
        head = fh.read(len(SQLITE_MAGIC))
    if head.startswith(SQLITE_MAGIC):
        return "sqlite"
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    if path.name.lower().endswith((".csv", ".csv.gz")):
        return "csv"
    raise InputError(f"{path}: not a CellProfiler SQLite, Parquet or CSV file (starts with {head!r})")


def check_sqlite_file(path: Path) -> None:
    """Reject non-SQLite and truncated files: the header records the page size and page count."""
    header = b""
    if path.is_file():
        with open(path, "rb") as fh:
            header = fh.read(100)
    if not header.startswith(SQLITE_MAGIC):
        raise InputError(f"{path}: not an SQLite file")
    if len(header) < 100:
        raise InputError(f"{path}: truncated SQLite file (header incomplete)")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    n_pages = int.from_bytes(header[28:32], "big")
    if path.stat().st_size < page_size * n_pages:
        raise InputError(
            f"{path}: truncated SQLite file ({path.stat().st_size} bytes, header says {page_size * n_pages})"
        )


def check_csv_complete(path: Path) -> None:
    """A CSV cut off mid-row (a copy that stopped early) is an InputError: pandas would read the last row short,
    with NaN. Checked on plain (not compressed) files: the last line must end the file or have all its fields."""
    if path.name.lower().endswith(".gz") or not path.is_file():
        return
    size = path.stat().st_size
    with open(path, "rb") as fh:
        header = fh.readline()
        fh.seek(max(0, size - 65536))
        tail = fh.read()
    if not tail or tail.endswith(b"\n") or b"\n" not in tail:
        return
    last = tail.rsplit(b"\n", 1)[1]
    fields = lambda line: len(next(csv.reader([line.decode("utf-8", "replace")]), []))  # noqa: E731
    if fields(last) < fields(header.rstrip(b"\r\n")):
        raise InputError(f"{path}: truncated CSV (the last row has {fields(last)} of {fields(header.rstrip())} fields)")


def arrow_csv_batches(path: Path, columns: list[str], types: dict[str, pa.DataType],
                      block_bytes: int = 16 << 20) -> Iterator[pa.RecordBatch]:
    """``columns`` of a CSV (plain or gzipped), streamed with Arrow's reader in blocks of ``block_bytes``,
    ``types`` forced (others inferred); pandas' missing-value spellings ("", "NA", "nan", ...) read as missing.
    A bad file (cut off, a row of the wrong length, text in a number column) is an InputError naming it."""
    with _arrow_csv(path) as stream:
        yield from pacsv.open_csv(stream, read_options=pacsv.ReadOptions(block_size=block_bytes),
                                  convert_options=_convert(columns, types))


def read_arrow_csv(path: Path, columns: list[str], types: dict[str, pa.DataType], threads: bool = True) -> pa.Table:
    """As :func:`arrow_csv_batches`, the whole file at once: one table, parsed with Arrow's threads or (``threads``
    false: a small file among several parsed at once) in the calling thread."""
    with _arrow_csv(path) as stream:
        return pacsv.read_csv(stream, read_options=pacsv.ReadOptions(use_threads=threads),
                              convert_options=_convert(columns, types))


def _convert(columns: list[str], types: dict[str, pa.DataType]) -> pacsv.ConvertOptions:
    return pacsv.ConvertOptions(include_columns=columns, column_types=types, strings_can_be_null=True)


@contextmanager
def _arrow_csv(path: Path) -> Iterator[pa.NativeFile]:
    """The file's byte stream (gunzipped for ``.gz``); Arrow's and the OS's read errors as an InputError naming it."""
    try:
        with pa.OSFile(str(path)) as raw:
            yield pa.CompressedInputStream(raw, "gzip") if path.name.lower().endswith(".gz") else raw
    except (pa.ArrowException, OSError, EOFError, zlib.error) as e:
        raise InputError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
