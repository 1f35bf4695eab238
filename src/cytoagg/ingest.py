"""Ingest one plate: raw CellProfiler output or a single-cell table -> one per-cell Parquet.

Sources: a CellProfiler SQLite file, a folder of per-site CellProfiler CSV folders, or a single-cell
Parquet/CSV already in pycytominer layout. The output holds ``Metadata_*`` strings (plate, well, source
metadata, platemap annotations) and then float32 features. Rows are ordered by well, so later steps can read
each well as one contiguous run. Sources are read in chunks and written row group by row group
(``rows_per_group``: 50,000 cells, fewer on plates wider than 1,342 features, so a row group stays <= 256 MB).

A SQLite plate is read by worker processes (``workers``), each running the compartments' join for a group of
images; the main process adds the metadata with Arrow and writes (benchmarks/ingest.md). Its peak memory is
about 0.4 GB per process plus one row group, whatever the plate's length.
"""

from __future__ import annotations

import collections
import csv
import gzip
import itertools
import logging
import multiprocessing
import os
import sqlite3
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .columns import (
    COMPARTMENTS,
    METADATA_PREFIX,
    feature_columns,
    is_bookkeeping,
    is_metadata,
    metadata_columns,
    normalize_well,
)
from .io import (
    PARQUET_MAGIC,
    InputError,
    atomic_path,
    available_cpus,
    cell_writer,
    check_parquet_file,
    profile_schema,
    rows_per_group,
    to_arrow,
)
from .platemap import load_platemap

FORMATS = ("sqlite", "cp_csv", "parquet", "csv")
SQLITE_MAGIC = b"SQLite format 3\x00"
IMAGE_NUMBER = "ImageNumber"
OBJECT_NUMBER = "Metadata_ObjectNumber"
IMAGE_NUMBER_META = "Metadata_ImageNumber"
_RANK = "_image_rank"

_log = logging.getLogger(__name__)


# ---------------------------------------------------------------- format detection and file checks


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




# ---------------------------------------------------------------- shared helpers


def normalize_wells(values: pd.Series, path: Path, column: str) -> pd.Series:
    """``normalize_well`` over a column, once per distinct value; a bad name is an InputError."""
    mapping = {}
    for value in values.dropna().unique():
        try:
            mapping[value] = normalize_well(value)
        except ValueError as e:
            raise InputError(f"{path}: column {column}: {e}") from e
    if values.isna().any():
        raise InputError(f"{path}: column {column} has empty wells")
    return values.map(mapping)


def to_float32(frame: pd.DataFrame, features: Sequence[str], path: Path) -> pd.DataFrame:
    """Features as float32; text that is not a number is an InputError (not a silent NaN)."""
    out = {}
    for name in features:
        col = frame[name]
        try:
            out[name] = col.to_numpy(dtype=np.float32, na_value=np.nan)
        except (TypeError, ValueError) as e:
            bad = col[pd.to_numeric(col, errors="coerce").isna() & col.notna()]
            example = bad.iloc[0] if len(bad) else e
            raise InputError(f"{path}: feature column {name} holds a non-number: {example!r}") from e
    return pd.DataFrame(out, index=frame.index)


def order_images(images: pd.DataFrame, well_col: str, path: Path, by: Sequence[str]) -> pd.DataFrame:
    """Sort images by well and then ``by``; record the position as the image rank used to order cells."""
    images = images.assign(**{well_col: normalize_wells(images[well_col], path, well_col)})
    images = images.sort_values([well_col, *by], kind="stable").reset_index(drop=True)
    images[_RANK] = np.arange(len(images))
    return images


def select_features(
    columns: Sequence[str],
    path: Path,
    compartments: Sequence[str] = COMPARTMENTS,
    features: Sequence[str] | None = None,
    blocklist: Sequence[str] | None = None,
) -> tuple[list[str], dict[str, list[str]]]:
    """The features to write, in source order (or the order of ``features``), and what was dropped, by reason."""
    measured = [c for c in columns if not is_metadata(c) and c != IMAGE_NUMBER]
    candidates = feature_columns(measured, compartments)
    known = set(candidates)
    dropped = {
        "bookkeeping": [c for c in measured if is_bookkeeping(c)],
        "not_in_compartments": [c for c in measured if c not in known and not is_bookkeeping(c)],
        "not_selected": [],
        "blocklist": [],
    }
    if features is not None:
        missing = [f for f in features if f not in known]
        if missing:
            absent = [f for f in missing if f not in set(columns)]
            raise InputError(
                f"{path}: requested feature(s) not available: {missing[:10]}"
                + (f" ({len(absent)} absent from the file)" if absent else " (not features of the compartments)")
            )
        wanted = set(features)
        dropped["not_selected"] = [c for c in candidates if c not in wanted]
        candidates = list(dict.fromkeys(features))
    blocked = set(blocklist or ())
    dropped["blocklist"] = [c for c in candidates if c in blocked]
    kept = [c for c in candidates if c not in blocked]
    if not kept:
        raise InputError(f"{path}: no feature columns left for compartments {list(compartments)}")
    return kept, dropped


class Links(NamedTuple):
    """How compartment tables join: the hub's ``<hub>_Parent_<X>`` column points at X's object number."""

    hub: str
    parent: dict[str, str]  # compartment -> parent column in the hub table
    object_number: dict[str, str]  # compartment -> its object number column

    def columns(self, compartment: str) -> list[str]:
        cols = [IMAGE_NUMBER, self.object_number[compartment]]
        return cols + list(self.parent.values()) if compartment == self.hub else cols

    def cell_number(self) -> str:
        return self.object_number.get("Cells", self.object_number[self.hub])


def object_number_column(columns: Sequence[str], compartment: str, where: str) -> str:
    for name in (f"{compartment}_Number_Object_Number", f"{compartment}_ObjectNumber"):
        if name in columns:
            return name
    raise InputError(f"{where}: no object number column {compartment}_Number_Object_Number")


def link_compartments(columns: dict[str, list[str]], where: dict[str, str]) -> Links:
    """pycytominer's default merge: Cytoplasm is the hub, linked to Cells and Nuclei by its parent columns."""
    hub = "Cytoplasm" if "Cytoplasm" in columns else next(iter(columns))
    parent = {}
    for compartment in columns:
        if IMAGE_NUMBER not in columns[compartment]:
            raise InputError(f"{where[compartment]}: no column {IMAGE_NUMBER}")
        if compartment != hub:
            parent[compartment] = f"{hub}_Parent_{compartment}"
            if parent[compartment] not in columns[hub]:
                raise InputError(f"{where[hub]}: no column {parent[compartment]} to link {compartment} to {hub}")
    numbers = {c: object_number_column(cols, c, where[c]) for c, cols in columns.items()}
    return Links(hub, parent, numbers)


def merge_objects(frames: dict[str, pd.DataFrame], links: Links) -> pd.DataFrame:
    """One row per hub object with a parent in every other compartment (inner joins, as pycytominer)."""
    cells = frames[links.hub]
    for compartment, parent in links.parent.items():
        cells = cells.merge(
            frames[compartment],
            left_on=[IMAGE_NUMBER, parent],
            right_on=[IMAGE_NUMBER, links.object_number[compartment]],
            how="inner",
            validate="many_to_one",
        )
    return cells


def attach_images(cells: pd.DataFrame, images: pd.DataFrame, links: Links) -> pd.DataFrame:
    """Add image metadata and object/image numbers; order by image rank, then object number."""
    cells = cells.merge(images, on=IMAGE_NUMBER, how="inner", validate="many_to_one")
    cells = cells.sort_values([_RANK, links.object_number[links.hub]], kind="stable")
    numbers = pd.DataFrame(
        {
            IMAGE_NUMBER_META: cells[IMAGE_NUMBER].astype("int64").astype(str),
            OBJECT_NUMBER: cells[links.cell_number()].astype("int64").astype(str),
        },
        index=cells.index,
    )
    return pd.concat([cells, numbers], axis=1)


def compartment_features(features: Sequence[str], compartment: str) -> list[str]:
    return [f for f in features if f.startswith(f"{compartment}_")]


# ---------------------------------------------------------------- sources


class Source:
    """One plate's cells. ``columns`` lists every column in the merged layout (image metadata as ``Metadata_*``);
    ``batches`` yields cells ordered by well, with the given metadata and features."""

    format: str
    path: Path
    columns: list[str]

    def batches(self, metadata: list[str], features: list[str], chunk_rows: int) -> Iterator[pd.DataFrame]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class SqliteSource(Source):
    """CellProfiler SQLite: an Image table and one table per compartment, with or without ``Per_``.

    Cells are read by one SQL join per group of images (the compartments' inner join on the hub's parent
    columns, as pycytominer merges them), by ``workers`` processes at once (SQLite allows concurrent
    readers; the ``sqlite3`` module spends most of its time turning values into Python objects, under
    the GIL, so threads would not help). The main process adds the metadata with Arrow and writes.
    """

    format = "sqlite"

    def __init__(self, path: Path, compartments: Sequence[str], well_col: str):
        check_sqlite_file(path)
        self.path, self.well_col = path, well_col
        self.con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        tables = [r[0] for r in self.con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        self.image_table = self._table(tables, "Image")
        self.tables = {c: self._table(tables, c) for c in compartments}
        self.table_columns = {c: self._columns(t) for c, t in self.tables.items()}
        self.links = link_compartments(self.table_columns, {c: f"{path}: table {t}" for c, t in self.tables.items()})
        self.image_metadata = self._image_metadata()
        self.columns = [*self.image_metadata.values(), IMAGE_NUMBER_META, OBJECT_NUMBER]
        self.columns += [c for cols in self.table_columns.values() for c in cols if c != IMAGE_NUMBER]

    def close(self) -> None:
        self.con.close()

    def _table(self, tables: list[str], name: str) -> str:
        for candidate in (f"Per_{name}", name):
            for table in tables:
                if table.lower() == candidate.lower():
                    return table
        raise InputError(f"{self.path}: no table Per_{name} or {name} (tables: {tables})")

    def _columns(self, table: str) -> list[str]:
        return [r[1] for r in self.con.execute(f"PRAGMA table_info({_quote(table)})")]

    def _image_metadata(self) -> dict[str, str]:
        """Image table column -> output name: ``Image_Metadata_X`` -> ``Metadata_X``; other columns are dropped."""
        names = {}
        for col in self._columns(self.image_table):
            name = col.removeprefix("Image_")
            if name.startswith(METADATA_PREFIX) and name not in names.values():
                names[col] = name
        return names

    def _images(self) -> pd.DataFrame:
        cols = ", ".join(f"CAST({_quote(c)} AS TEXT) AS {_quote(n)}" for c, n in self.image_metadata.items())
        images = pd.read_sql_query(f"SELECT ImageNumber, {cols} FROM {_quote(self.image_table)}", self.con)
        return order_images(images, self.well_col, self.path, [IMAGE_NUMBER])

    def _cell_counts(self) -> dict[int, int]:
        hub = _quote(self.tables[self.links.hub])
        return dict(self.con.execute(f"SELECT ImageNumber, COUNT(*) FROM {hub} GROUP BY ImageNumber"))

    def _unindexed(self) -> list[str]:
        """Compartment tables with no index starting with ImageNumber (each group of images rescans them)."""
        unindexed = []
        for table in self.tables.values():
            leading = set()
            for index in self.con.execute(f"PRAGMA index_list({_quote(table)})").fetchall():
                info = self.con.execute(f"PRAGMA index_info({_quote(index[1])})").fetchall()
                if info:
                    leading.add(min(info)[2])
            if IMAGE_NUMBER not in leading:
                unindexed.append(table)
        return unindexed

    def _alias(self) -> dict[str, str]:
        return {c: f"t{i}" for i, c in enumerate(self.tables)}

    def _join(self, select: list[str]) -> str:
        """``SELECT <select> FROM`` the hub inner-joined with every other compartment, for a list of images."""
        alias = self._alias()
        hub = self.links.hub
        sql = f"SELECT {', '.join(select)} FROM {_quote(self.tables[hub])} AS {alias[hub]}"
        for compartment, parent in self.links.parent.items():
            a = alias[compartment]
            sql += (f" JOIN {_quote(self.tables[compartment])} AS {a} ON {a}.ImageNumber = {alias[hub]}.ImageNumber"
                    f" AND {a}.{_quote(self.links.object_number[compartment])} = {alias[hub]}.{_quote(parent)}")
        return sql + f" WHERE {alias[hub]}.ImageNumber IN ({{images}})"

    def cell_query(self, features: list[str]) -> CellQuery:
        alias = self._alias()
        hub = self.links.hub
        cell = "Cells" if "Cells" in self.tables else hub
        select = [f"{alias[hub]}.ImageNumber", f"{alias[hub]}.{_quote(self.links.object_number[hub])}",
                  f"{alias[cell]}.{_quote(self.links.object_number[cell])}"]
        owner = {}
        for compartment, cols in self.table_columns.items():
            for col in cols:
                owner.setdefault(col, compartment)
        select += [f"{alias[owner[f]]}.{_quote(f)}" for f in features]
        names = (IMAGE_NUMBER, self.links.object_number[hub], self.links.object_number[cell], *features)
        return CellQuery(str(self.path.resolve()), self._join(select), names)

    def arrow_batches(self, columns: list[str], features: list[str], chunk_rows: int, plate: str, plate_col: str,
                      annotations: pd.DataFrame | None, tally: Tally, workers: int, log: logging.Logger):
        """Final Arrow tables (``columns`` metadata, then float32 ``features``), cells ordered by well, image, object."""
        images = self._images()
        if plate_col in images:
            tally.source_plates.update(images[plate_col].dropna().astype(str).unique())
        images = images.assign(**{plate_col: plate})
        if annotations is not None:
            known = images[self.well_col].isin(annotations.index).to_numpy()
            self._count_dropped(images.loc[~known], tally)
            images = images.loc[known].reset_index(drop=True)
            for col in annotations.columns:
                images[col] = images[self.well_col].map(annotations[col]).to_numpy()
        per_image = pa.Table.from_arrays(
            [_strings(images[c]) for c in columns if c not in (IMAGE_NUMBER_META, OBJECT_NUMBER)],
            names=[c for c in columns if c not in (IMAGE_NUMBER_META, OBJECT_NUMBER)],
        )
        numbers = images[IMAGE_NUMBER].to_numpy(np.int64)
        sorter = np.argsort(numbers)
        wells = images[self.well_col].to_numpy(object)
        unindexed = self._unindexed()
        per_task = max(1, min(chunk_rows, TASK_VALUES // max(len(features), 1)))
        if unindexed:
            log.warning("%s: no index on ImageNumber in %s: each group of %d cells rescans them",
                        self.path, unindexed, chunk_rows)
            per_task = chunk_rows
        counts = self._cell_counts()
        tasks = [(group, sum(counts.get(i, 0) for i in group))
                 for group in chunk_images(numbers.tolist(), counts, per_task)]
        query = self.cell_query(features)
        schema = profile_schema(pd.DataFrame(columns=[*columns, *features]))
        for keys, values in fetch_in_order(query, tasks, workers):
            position = sorter[np.searchsorted(numbers, keys[0], sorter=sorter)]
            tally.add(pd.Series(wells[position]))
            meta = per_image.take(position)
            arrays = {name: meta.column(name) for name in meta.column_names}
            arrays[IMAGE_NUMBER_META] = pa.array(keys[0]).cast(pa.string())
            arrays[OBJECT_NUMBER] = pa.array(keys[2]).cast(pa.string())
            arrays.update((name, pa.array(values[j])) for j, name in enumerate(features))
            del values
            yield pa.Table.from_arrays([arrays.pop(f.name) for f in schema], schema=schema)

    def _count_dropped(self, images: pd.DataFrame, tally: Tally) -> None:
        """Cells (after the merge) of images whose well is not in the platemap, per well."""
        if images.empty:
            return
        hub = f"{self._alias()[self.links.hub]}.ImageNumber"
        sql = self._join([hub, "COUNT(*)"]).format(images=", ".join(map(str, images[IMAGE_NUMBER])))
        counts = dict(self.con.execute(f"{sql} GROUP BY {hub}").fetchall())
        for number, well in zip(images[IMAGE_NUMBER], images[self.well_col]):
            if counts.get(number):
                tally.dropped_cells[well] = tally.dropped_cells.get(well, 0) + counts[number]


def _strings(values: pd.Series) -> pa.Array:
    return pa.array([None if v is None or v != v else str(v) for v in values], type=pa.string())


def chunk_images(image_numbers: list[int], counts: dict[int, int], chunk_rows: int) -> Iterator[list[int]]:
    """Consecutive groups of images holding about ``chunk_rows`` cells (at least one image per group)."""
    group, n = [], 0
    for image in image_numbers:
        if group and n + counts.get(image, 0) > chunk_rows:
            yield group
            group, n = [], 0
        group.append(image)
        n += counts.get(image, 0)
    if group:
        yield group


# ---------------------------------------------------------------- SQLite readers (run in worker processes)

TASK_VALUES = 2**22  # feature values per group of images read at once (16 MB of float32)
_FETCH_ROWS = 256
_CONNECTIONS: dict[str, sqlite3.Connection] = {}


class CellQuery(NamedTuple):
    """The join of one plate's compartments; ``{images}`` in ``sql`` takes a list of image numbers.

    Selected: ImageNumber, the hub's and the cell's object numbers, then the features (``names``)."""

    path: str
    sql: str
    names: tuple[str, ...]


def _connection(path: str) -> sqlite3.Connection:
    con = _CONNECTIONS.get(path)
    if con is None:
        con = _CONNECTIONS[path] = sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True)
    return con


def _float64_rows(rows: list[tuple], query: CellQuery) -> np.ndarray:
    """Rows of numbers (NULL -> NaN) as float64; text that is not a number is an InputError naming the column."""
    try:
        return np.array(rows, dtype=np.float64)
    except (TypeError, ValueError):
        for j, name in enumerate(query.names):
            for row in rows:
                try:
                    float(np.float64(row[j] if row[j] is not None else np.nan))
                except (TypeError, ValueError):
                    raise InputError(f"{query.path}: column {name} holds a non-number: {row[j]!r}") from None
        raise


def fetch_cells(query: CellQuery, images: Sequence[int], max_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The merged cells of ``images`` (at most ``max_rows``), ordered as ``images`` and then by the hub's object number.

    Returns int64 keys (3 x cells: ImageNumber, hub object number, cell object number) and float32
    features (features x cells, each feature contiguous).
    """
    cursor = _connection(query.path).execute(query.sql.format(images=", ".join(str(int(i)) for i in images)))
    n_features = len(query.names) - 3
    keys = np.empty((max_rows, 3), dtype=np.int64)
    values = np.empty((max_rows, n_features), dtype=np.float32)
    n = 0
    while rows := cursor.fetchmany(_FETCH_ROWS):
        if n + len(rows) > max_rows:
            raise InputError(f"{query.path}: the merge gives more cells than the hub table has objects "
                             f"(images {images[0]}..{images[-1]}): an object number repeats in some table")
        x = _float64_rows(rows, query)
        keys[n:n + len(rows)] = x[:, :3]
        values[n:n + len(rows)] = x[:, 3:]
        n += len(rows)
        del x, rows
    keys = keys[:n]
    images = np.asarray(images, dtype=np.int64)
    sorter = np.argsort(images)
    order = np.lexsort((keys[:, 1], sorter[np.searchsorted(images, keys[:, 0], sorter=sorter)]))
    keys = keys[order]
    same = np.flatnonzero((np.diff(keys[:, 0]) == 0) & (np.diff(keys[:, 1]) == 0))
    if len(same):
        image, obj = keys[same[0]][:2]
        raise InputError(f"{query.path}: several rows for one object after the merge (ImageNumber {image}, "
                         f"{query.names[1]} {obj}): an object number repeats within an image in some table")
    out = np.empty((n_features, n), dtype=np.float32)
    step = max(1, 2**20 // max(n, 1))
    for j in range(0, n_features, step):
        out[j:j + step] = values[order, j:j + step].T
    return np.ascontiguousarray(keys.T), out


def fetch_in_order(query: CellQuery, tasks: list[tuple[list[int], int]], workers: int
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``fetch_cells`` of each (images, max_rows) task, in order, by ``workers`` processes, at most one task ahead each."""
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield fetch_cells(query, *task)
        return
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no threads or locks inherited
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context) as pool:
        pending: collections.deque = collections.deque()
        todo = iter(tasks)
        try:
            for task in itertools.islice(todo, workers + 1):
                pending.append(pool.submit(fetch_cells, query, *task))
            while pending:
                try:
                    result = pending.popleft().result()
                except BrokenProcessPool as e:
                    raise RuntimeError(
                        "a SQLite reader process died; a script that calls ingest_plate needs an "
                        "`if __name__ == '__main__':` guard (processes are spawned), or pass workers=1"
                    ) from e
                task = next(todo, None)
                if task is not None:
                    pending.append(pool.submit(fetch_cells, query, *task))
                yield result
                del result
        finally:
            for future in pending:
                future.cancel()


class CellProfilerCsvSource(Source):
    """CellProfiler ExportToSpreadsheet output: one folder per site holding Image.csv and ``<Compartment>.csv``.

    Object columns are unprefixed (``AreaShape_Area``) and get the compartment prefix here. ImageNumber is only
    unique within a folder, so each folder is merged on its own. A single folder holding Image.csv directly
    is read as one site folder (whole in memory).
    """

    format = "cp_csv"

    def __init__(self, path: Path, compartments: Sequence[str], well_col: str):
        self.path, self.well_col, self.compartments = path, well_col, list(compartments)
        self.sites = [path] if (path / "Image.csv").is_file() else sorted(
            p for p in path.iterdir() if p.is_dir() and (p / "Image.csv").is_file()
        )
        if not self.sites:
            raise InputError(f"{path}: no Image.csv here or in any sub-folder")
        for site in self.sites:
            for c in self.compartments:
                if not (site / f"{c}.csv").is_file():
                    raise InputError(f"{site / f'{c}.csv'}: missing compartment file for {c}")
                check_csv_complete(site / f"{c}.csv")
            check_csv_complete(site / "Image.csv")
        first = self.sites[0]
        table_columns = {c: self._object_header(first / f"{c}.csv", c) for c in self.compartments}
        self.links = link_compartments(table_columns, {c: str(first / f"{c}.csv") for c in self.compartments})
        image_header = pd.read_csv(first / "Image.csv", nrows=0).columns
        self.columns = [*metadata_columns(image_header), IMAGE_NUMBER_META, OBJECT_NUMBER]
        self.columns += [c for cols in table_columns.values() for c in cols if c != IMAGE_NUMBER]

    @staticmethod
    def _prefix(column: str, compartment: str) -> str:
        return column if column == IMAGE_NUMBER else f"{compartment}_{column}"

    def _object_header(self, path: Path, compartment: str) -> list[str]:
        """Prefixed column names; per-object copies of image metadata are left to Image.csv."""
        header = pd.read_csv(path, nrows=0).columns
        return [self._prefix(c, compartment) for c in header if not is_metadata(c)]

    def _read_objects(self, site: Path, compartment: str, columns: list[str]) -> pd.DataFrame:
        wanted = set(columns)
        path = site / f"{compartment}.csv"
        frame = pd.read_csv(path, usecols=lambda c: self._prefix(c, compartment) in wanted and not is_metadata(c))
        frame.columns = [self._prefix(c, compartment) for c in frame.columns]
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise InputError(f"{path}: missing column(s) {missing[:10]}")
        return frame

    def _images(self, metadata: list[str]) -> pd.DataFrame:
        frames = []
        for i, site in enumerate(self.sites):
            path = site / "Image.csv"
            wanted = {IMAGE_NUMBER, *metadata}
            frame = pd.read_csv(path, usecols=lambda c: c in wanted, dtype=str)
            missing = [c for c in wanted if c not in frame.columns]
            if missing:
                raise InputError(f"{path}: missing column(s) {missing[:10]}")
            frames.append(frame.assign(**{IMAGE_NUMBER: frame[IMAGE_NUMBER].astype("int64"), "_site": i}))
        images = order_images(pd.concat(frames, ignore_index=True), self.well_col, self.path, ["_site", IMAGE_NUMBER])
        mixed = images.groupby("_site")[self.well_col].nunique()
        if len(self.sites) > 1 and (mixed > 1).any():
            site = self.sites[mixed.index[mixed > 1][0]]
            raise InputError(f"{site / 'Image.csv'}: a site folder holds images of several wells")
        return images

    def _read_site(self, i: int, images: pd.DataFrame, features: list[str]) -> pd.DataFrame:
        frames = {
            c: self._read_objects(self.sites[i], c, self.links.columns(c) + compartment_features(features, c))
            for c in self.compartments
        }
        site_images = images[images["_site"] == i].drop(columns="_site")
        return attach_images(merge_objects(frames, self.links), site_images, self.links)

    def batches(self, metadata, features, chunk_rows):
        source_metadata = [m for m in metadata if m not in (IMAGE_NUMBER_META, OBJECT_NUMBER)]
        images = self._images(source_metadata)
        site_order = images.groupby("_site")[_RANK].min().sort_values().index
        pending, n = [], 0
        for i in site_order:
            pending.append(self._read_site(i, images, features)[[*metadata, *features]])
            n += len(pending[-1])
            if n >= chunk_rows:
                yield pd.concat(pending, ignore_index=True)
                pending, n = [], 0
        if pending:
            yield pd.concat(pending, ignore_index=True)


class ParquetSource(Source):
    """Single-cell Parquet in pycytominer layout. Rows are taken in well order (stable), row group by row group,
    so memory holds one row group and one output chunk."""

    format = "parquet"

    def __init__(self, path: Path, well_col: str, label: Path | None = None):
        self.path = label or path
        check_parquet_file(path)
        self.file = pq.ParquetFile(path)
        self.well_col = well_col
        self.columns = list(self.file.schema_arrow.names)

    def close(self) -> None:
        self.file.close()

    def _order(self) -> np.ndarray:
        wells = self.file.read(columns=[self.well_col]).column(0).to_pandas()
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
            frame = self._take(order[start : start + chunk_rows], [*metadata, *features])
            frame = frame.to_pandas(ignore_metadata=True)
            yield frame.assign(**{self.well_col: normalize_wells(frame[self.well_col], self.path, self.well_col)})


class CsvSource(Source):
    """Single-cell CSV in pycytominer layout; converted to a temporary Parquet (in chunks) and read as one."""

    format = "csv"

    def __init__(self, path: Path, well_col: str, workdir: Path):
        self.path, self.well_col, self.workdir = path, well_col, workdir
        check_csv_complete(path)
        self.columns = list(pd.read_csv(path, nrows=0).columns)

    def _to_parquet(self, target: Path, metadata: list[str], features: list[str], chunk_rows: int) -> None:
        schema = profile_schema(pd.DataFrame(columns=[*metadata, *features]))
        reader = pd.read_csv(
            self.path, usecols=[*metadata, *features], dtype=dict.fromkeys(metadata, str), chunksize=chunk_rows
        )
        with pq.ParquetWriter(target, schema) as writer:
            for chunk in reader:
                frame = pd.concat([chunk[metadata], to_float32(chunk, features, self.path)], axis=1)
                writer.write_table(to_arrow(frame, schema))

    def batches(self, metadata, features, chunk_rows):
        self.workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.workdir, prefix=".ingest-") as tmp:
            target = Path(tmp) / "cells.parquet"
            self._to_parquet(target, metadata, features, chunk_rows)
            source = ParquetSource(target, self.well_col, label=self.path)
            try:
                yield from source.batches(metadata, features, chunk_rows)
            finally:
                source.close()


def open_source(source: Path, fmt: str, compartments: Sequence[str], well_col: str, workdir: Path) -> Source:
    fmt = detect_format(source) if fmt == "auto" else fmt
    if fmt == "csv" and source.is_dir():  # "csv" names both CSV layouts; a folder means CellProfiler's
        fmt = "cp_csv"
    if fmt == "sqlite":
        return SqliteSource(source, compartments, well_col)
    if fmt == "cp_csv":
        if not source.is_dir():
            raise InputError(f"{source}: fmt='cp_csv' needs a folder of CellProfiler CSV site folders")
        return CellProfilerCsvSource(source, compartments, well_col)
    if fmt == "parquet":
        return ParquetSource(source, well_col)
    if fmt == "csv":
        return CsvSource(source, well_col, workdir)
    raise InputError(f"{source}: unknown format {fmt!r} (expected auto or one of {FORMATS})")


# ---------------------------------------------------------------- the step


class Tally:
    """Cells written per well and cells dropped for lack of a platemap row; checks that wells stay contiguous."""

    def __init__(self):
        self.cells_per_well: dict[str, int] = {}
        self.dropped_cells: dict[str, int] = {}
        self.source_plates: set[str] = set()
        self._last: str | None = None

    def add(self, wells: pd.Series) -> None:
        starts = np.flatnonzero((wells != wells.shift()).to_numpy())
        for well, size in zip(wells.to_numpy()[starts], np.diff([*starts, len(wells)])):
            if well != self._last and well in self.cells_per_well:
                raise RuntimeError(f"bug: rows of well {well} are not contiguous")
            self.cells_per_well[well] = self.cells_per_well.get(well, 0) + int(size)
            self._last = well


def annotate(batch: pd.DataFrame, platemap: pd.DataFrame | None, well_col: str, tally: Tally) -> pd.DataFrame:
    """Add platemap annotations by well; cells of wells missing from the platemap are dropped and counted."""
    if platemap is None:
        return batch
    known = batch[well_col].isin(platemap.index)
    for well, n in batch.loc[~known, well_col].value_counts().items():
        tally.dropped_cells[well] = tally.dropped_cells.get(well, 0) + int(n)
    batch = batch.loc[known]
    wells = batch[well_col]
    return batch.assign(**{col: wells.map(platemap[col]).to_numpy() for col in platemap.columns})


def output_metadata(
    source_metadata: list[str], platemap: pd.DataFrame | None, plate_col: str, well_col: str
) -> list[str]:
    """Plate and well first, then the source's metadata, then platemap annotations (which win on a clash)."""
    annotations = [] if platemap is None else [c for c in platemap.columns if c not in (plate_col, well_col)]
    rest = [c for c in source_metadata if c not in (plate_col, well_col, *annotations)]
    return [plate_col, well_col, *rest, *annotations]


def _log_dropped(log: logging.Logger, path: Path, dropped: dict[str, list[str]]) -> None:
    for reason, names in dropped.items():
        if names:
            more = f" and {len(names) - 8} more" if len(names) > 8 else ""
            log.info("%s: dropped %d %s column(s): %s%s", path, len(names), reason, ", ".join(names[:8]), more)


def ingest_plate(
    source,
    out,
    *,
    plate: str,
    fmt: str = "auto",
    barcode_platemap=None,
    platemap_dir=None,
    platemap=None,
    plate_col="Metadata_Plate",
    well_col="Metadata_Well",
    compartments=("Cells", "Cytoplasm", "Nuclei"),
    features=None,
    blocklist=None,
    chunk_rows=50_000,
    workers=None,
    log=None,
) -> dict:
    """Write one plate's cells to ``out`` (Parquet, rows ordered by well) and return a summary.

    ``source`` is a CellProfiler SQLite file, a folder of CellProfiler CSV site folders, or a single-cell
    Parquet/CSV. ``plate`` is written to ``plate_col`` whatever the source says. A bad input raises
    ``InputError`` naming the file and column/table, and leaves no file at ``out``. ``workers``: processes
    reading a SQLite plate at once (default: the CPUs this process may use, at most 8).
    """
    log = log or _log
    source, out = Path(source), Path(out)
    for col in (plate_col, well_col):
        if not col.startswith(METADATA_PREFIX):
            raise InputError(f"{col!r}: plate and well columns must start with {METADATA_PREFIX}")
    loaded = load_platemap(
        plate, barcode_platemap=barcode_platemap, platemap_dir=platemap_dir, platemap=platemap, log=log
    )
    annotations, platemap_file = loaded if loaded else (None, None)
    try:
        src = open_source(source, fmt, list(compartments), well_col, out.parent)
        try:
            summary = _write(
                src, out, plate, annotations, plate_col, well_col, compartments, features, blocklist, chunk_rows,
                _workers(workers), log,
            )
        finally:
            src.close()
    except (sqlite3.DatabaseError, pa.ArrowException, pd.errors.ParserError, pd.errors.EmptyDataError,
            pd.errors.MergeError, UnicodeDecodeError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise InputError(f"{source}: cannot read ({type(e).__name__}: {e})") from e
    summary["platemap"] = None if platemap_file is None else str(platemap_file)
    return summary


def _write(src, out, plate, annotations, plate_col, well_col, compartments, features, blocklist, chunk_rows,
           workers, log):
    if well_col not in src.columns:
        raise InputError(f"{src.path}: no well column {well_col} (metadata: {metadata_columns(src.columns)})")
    kept, dropped = select_features(src.columns, src.path, compartments, features, blocklist)
    _log_dropped(log, src.path, dropped)
    source_metadata = metadata_columns(src.columns)
    columns = output_metadata(source_metadata, annotations, plate_col, well_col)
    schema = profile_schema(pd.DataFrame(columns=[*columns, *kept]))
    read_metadata = [c for c in source_metadata if c in columns or c == plate_col]
    group_rows = rows_per_group(len(kept), chunk_rows)
    tally = Tally()
    with atomic_path(out) as tmp, cell_writer(tmp, schema) as writer:
        if isinstance(src, SqliteSource):
            tables = src.arrow_batches(columns, kept, chunk_rows, plate, plate_col, annotations, tally, workers, log)
        else:
            tables = _pandas_batches(src, read_metadata, columns, kept, chunk_rows, plate, plate_col, annotations,
                                     well_col, tally, schema)
        pending, n_pending = [], 0
        for table in tables:  # written in row groups of group_rows cells
            pending.append(table)
            n_pending += table.num_rows
            while n_pending >= group_rows:
                buffered = pa.concat_tables(pending)
                writer.write_table(buffered.slice(0, group_rows), row_group_size=group_rows)
                pending, n_pending = [buffered.slice(group_rows)], n_pending - group_rows
                del buffered
        if n_pending:
            writer.write_table(pa.concat_tables(pending), row_group_size=group_rows)
        del pending
        if not tally.cells_per_well:
            raise InputError(f"{src.path}: no cells to write (after matching wells with the platemap)")
    return _summarize(src, plate, kept, dropped, annotations, tally, log)


def _pandas_batches(src, read_metadata, columns, kept, chunk_rows, plate, plate_col, annotations, well_col, tally,
                    schema) -> Iterator[pa.Table]:
    for batch in src.batches(read_metadata, kept, chunk_rows):
        if plate_col in batch:
            tally.source_plates.update(batch[plate_col].dropna().astype(str).unique())
        batch = annotate(batch.assign(**{plate_col: plate}), annotations, well_col, tally)
        if len(batch):
            tally.add(batch[well_col])
            frame = pd.concat([batch[columns], to_float32(batch, kept, src.path)], axis=1)
            yield to_arrow(frame, schema)


def _workers(workers) -> int:
    if workers is None:
        return min(available_cpus(), 8)
    if int(workers) < 1:
        raise InputError(f"workers must be at least 1, got {workers!r}")
    return int(workers)


def _summarize(src, plate, kept, dropped, annotations, tally, log) -> dict:
    empty_wells = [] if annotations is None else [w for w in annotations.index if w not in tally.cells_per_well]
    if empty_wells:
        log.warning("%s: platemap wells without cells: %s", src.path, ", ".join(empty_wells))
    if tally.dropped_cells:
        log.warning(
            "%s: dropped %d cell(s) in wells missing from the platemap: %s",
            src.path, sum(tally.dropped_cells.values()), tally.dropped_cells,
        )
    if tally.source_plates - {plate}:
        log.info("%s: source names plate(s) %s; written as %r", src.path, sorted(tally.source_plates), plate)
    return {
        "plate": plate,
        "source": str(src.path),
        "format": src.format,
        "n_cells": sum(tally.cells_per_well.values()),
        "n_wells": len(tally.cells_per_well),
        "n_features": len(kept),
        "cells_per_well": dict(tally.cells_per_well),
        "dropped_features": dropped,
        "unmatched_wells": {"platemap_without_cells": empty_wells, "cells_without_platemap": dict(sorted(tally.dropped_cells.items()))},
        "n_dropped_cells": sum(tally.dropped_cells.values()),
        "source_plates": sorted(tally.source_plates),
    }
