"""CellProfiler SQLite plates (ExportToDatabase): one SQL join per group of images, read by worker processes."""

from __future__ import annotations

import collections
import itertools
import logging
import multiprocessing
import sqlite3
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from ..io.columns import METADATA_PREFIX
from ..io.files import InputError
from ..io.parquet import profile_schema
from .compartments import link_compartments
from .formats import check_sqlite_file
from .source import IMAGE_NUMBER, IMAGE_NUMBER_META, OBJECT_NUMBER, Source, Tally, order_images

IMAGE_KEY = "_image_key"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


TABLE_NUMBER = "TableNumber"
TABLE_NUMBER_META = "Metadata_TableNumber"
_KEY_SHIFT = 2**32  # an image's key: table code * 2^32 + ImageNumber (exact in float64 below 2^53)


class SqliteSource(Source):
    """CellProfiler SQLite: an Image table and one table per compartment, with or without ``Per_``.

    Cells are read by one SQL join per group of images (the compartments' inner join on the hub's parent
    columns, as pycytominer merges them), by ``workers`` processes at once (SQLite allows concurrent
    readers; the ``sqlite3`` module spends most of its time turning values into Python objects, under
    the GIL, so threads would not help). The main process adds the metadata with Arrow and writes.

    Files written by cytominer-database (the LINCS / cpg0004 backends) key images by (TableNumber,
    ImageNumber): ImageNumber restarts for each CellProfiler run. When every table has ``TableNumber``, images
    are keyed and joined by both (as pycytominer's ``SingleCells`` merges them), and ``Metadata_TableNumber`` is
    written; an image key is ``table code * 2^32 + ImageNumber``, the table codes numbering the Image table's
    TableNumbers. Cells whose image has no row in the Image table are counted (``orphans``).
    """

    format = "sqlite"

    def __init__(self, path: Path, compartments: Sequence[str], well_col: str, hub: str | None = None,
                 links: dict | None = None):
        check_sqlite_file(path)
        self.path, self.well_col = path, well_col
        self.con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        tables = [r[0] for r in self.con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        self.image_table = self._table(tables, "Image")
        self.tables = {c: self._table(tables, c) for c in compartments}
        self.table_columns = {c: self._columns(t) for c, t in self.tables.items()}
        self.links = link_compartments(self.table_columns, {c: f"{path}: table {t}" for c, t in self.tables.items()},
                                       hub=hub, links=links)
        image_columns = self._columns(self.image_table)
        self.keyed = TABLE_NUMBER in image_columns and all(TABLE_NUMBER in c for c in self.table_columns.values())
        if TABLE_NUMBER in image_columns and not self.keyed:
            lacking = [t for c, t in self.tables.items() if TABLE_NUMBER not in self.table_columns[c]]
            raise InputError(f"{path}: the Image table has {TABLE_NUMBER} but {lacking} do not: cannot tell which "
                             "image their objects belong to")
        self.image_metadata = self._image_metadata()
        self.columns = [*self.image_metadata.values(), *([TABLE_NUMBER_META] if self.keyed else []), IMAGE_NUMBER_META,
                        OBJECT_NUMBER]
        self.columns += [c for cols in self.table_columns.values() for c in cols if c not in (IMAGE_NUMBER, TABLE_NUMBER)]
        self.table_texts: list[str] = []  # TableNumber (as text) of each table code

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
        """The Image table's rows (metadata as text), each with its image key, ordered by well then key."""
        cols = ", ".join(f"CAST({_quote(c)} AS TEXT) AS {_quote(n)}" for c, n in self.image_metadata.items())
        table = _quote(self.image_table)
        if self.keyed:
            texts = [r[0] for r in self.con.execute(f"SELECT DISTINCT CAST({TABLE_NUMBER} AS TEXT) FROM {table}")]
            self.table_texts = sorted(t for t in texts if t is not None)
            extra = f", CAST({TABLE_NUMBER} AS TEXT) AS {_quote(TABLE_NUMBER_META)}"
        else:
            extra = ""
        images = pd.read_sql_query(f"SELECT ImageNumber{extra}, {cols} FROM {table}", self.con)
        if images[IMAGE_NUMBER].isna().any() or (self.keyed and images[TABLE_NUMBER_META].isna().any()):
            raise InputError(f"{self.path}: table {self.image_table} has rows without an image number")
        code = {t: i for i, t in enumerate(self.table_texts)}
        numbers = images[IMAGE_NUMBER].astype("int64")
        if (numbers < 0).any() or (numbers >= _KEY_SHIFT).any():
            raise InputError(f"{self.path}: ImageNumber outside 0..2^32 in table {self.image_table}")
        images[IMAGE_KEY] = numbers + (images[TABLE_NUMBER_META].map(code) * _KEY_SHIFT if self.keyed else 0)
        repeated = images[IMAGE_KEY].duplicated(keep=False)
        if repeated.any():
            rows = images.loc[repeated, [IMAGE_NUMBER, *([TABLE_NUMBER_META] if self.keyed else [])]].head(5)
            raise InputError(
                f"{self.path}: table {self.image_table} has {int(repeated.sum())} rows for the same image, e.g. "
                f"{rows.to_dict('records')}"
                + ("" if self.keyed else f"; files keyed by ({TABLE_NUMBER}, ImageNumber) need a {TABLE_NUMBER} column "
                   "in every table")
            )
        return order_images(images, self.well_col, self.path, [IMAGE_KEY])

    def _cell_counts(self) -> dict[int, int]:
        """Hub objects per image key, for every image the hub table has (keys below 0: a TableNumber the Image
        table lacks)."""
        hub = _quote(self.tables[self.links.hub])
        if not self.keyed:
            return dict(self.con.execute(f"SELECT ImageNumber, COUNT(*) FROM {hub} GROUP BY ImageNumber"))
        code = {t: i for i, t in enumerate(self.table_texts)}
        counts: dict[int, int] = {}
        sql = f"SELECT CAST({TABLE_NUMBER} AS TEXT), ImageNumber, COUNT(*) FROM {hub} GROUP BY 1, 2"
        for text, number, n in self.con.execute(sql):
            key = code.get(text, -1) * _KEY_SHIFT + int(number)
            counts[key] = counts.get(key, 0) + n
        return counts

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
        """``SELECT <select> FROM`` the hub inner-joined with every other compartment, for a list of images
        (``{images}``: a condition on the hub's alias ``t0``-style, see :func:`image_condition`)."""
        alias = self._alias()
        hub = self.links.hub
        sql = f"SELECT {', '.join(select)} FROM {_quote(self.tables[hub])} AS {alias[hub]}"
        for compartment, parent in self.links.parent.items():
            a = alias[compartment]
            same_table = f" AND {a}.{TABLE_NUMBER} = {alias[hub]}.{TABLE_NUMBER}" if self.keyed else ""
            sql += (f" JOIN {_quote(self.tables[compartment])} AS {a} ON {a}.ImageNumber = {alias[hub]}.ImageNumber"
                    f"{same_table} AND {a}.{_quote(self.links.object_number[compartment])} = {alias[hub]}.{_quote(parent)}")
        return sql + " WHERE {images}"

    def cell_query(self, features: list[str]) -> CellQuery:
        alias = self._alias()
        hub = self.links.hub
        cell = "Cells" if "Cells" in self.tables else hub
        select = ["{key}", f"{alias[hub]}.{_quote(self.links.object_number[hub])}",
                  f"{alias[cell]}.{_quote(self.links.object_number[cell])}"]
        owner = {}
        for compartment, cols in self.table_columns.items():
            for col in cols:
                owner.setdefault(col, compartment)
        select += [f"{alias[owner[f]]}.{_quote(f)}" for f in features]
        names = (IMAGE_NUMBER, self.links.object_number[hub], self.links.object_number[cell], *features)
        return CellQuery(str(self.path.resolve()), self._join(select), names, alias[hub],
                         tuple(self.table_texts) if self.keyed else None)

    def arrow_batches(self, columns: list[str], features: list[str], chunk_rows: int, plate: str, plate_col: str,
                      annotations: pd.DataFrame | None, tally: Tally, workers: int, log: logging.Logger):
        """Final Arrow tables (``columns`` metadata, then float32 ``features``), cells ordered by well, image, object."""
        images = self._images()
        self._count_orphans(images, tally)
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
        numbers = images[IMAGE_KEY].to_numpy(np.int64)
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
            arrays[IMAGE_NUMBER_META] = pa.array(keys[0] % _KEY_SHIFT).cast(pa.string())
            arrays[OBJECT_NUMBER] = pa.array(keys[2]).cast(pa.string())
            arrays.update((name, pa.array(values[j])) for j, name in enumerate(features))
            del values
            yield pa.Table.from_arrays([arrays.pop(f.name) for f in schema], schema=schema)

    def _count_dropped(self, images: pd.DataFrame, tally: Tally) -> None:
        """Cells (after the merge) of images whose well is not in the platemap, per well."""
        if images.empty:
            return
        hub = self._alias()[self.links.hub]
        keys = images[IMAGE_KEY].tolist()
        key, where, params = image_condition(hub, keys, self.table_texts if self.keyed else None)
        sql = self._join([key, "COUNT(*)"]).format(images=where)
        counts = dict(self.con.execute(f"{sql} GROUP BY 1", params).fetchall())
        for key, well in zip(keys, images[self.well_col]):
            if counts.get(key):
                tally.dropped_cells[well] = tally.dropped_cells.get(well, 0) + counts[key]

    def _count_orphans(self, images: pd.DataFrame, tally: Tally) -> None:
        """Hub objects whose image has no row in the Image table: counted, with their image numbers."""
        known = set(images[IMAGE_KEY].tolist())
        for key, n in self._cell_counts().items():
            if key not in known:
                label = (f"{TABLE_NUMBER} {self.table_texts[key // _KEY_SHIFT]}, " if self.keyed and key >= 0 else "")
                tally.orphans[f"{label}ImageNumber {key % _KEY_SHIFT}"] = int(n)


def image_condition(alias: str, keys, table_texts) -> tuple[str, str, list]:
    """For the images with these keys, on the hub's ``alias``: the SQL of each row's image key, the WHERE condition
    selecting them, and the parameters of both (in that order). Keyed by TableNumber, the key's CASE lists only
    these images' tables, so a query's cost does not grow with the plate's number of tables."""
    keys = [int(k) for k in keys]
    if table_texts is None:
        return f"{alias}.ImageNumber", f"{alias}.ImageNumber IN ({', '.join(map(str, keys))})", []
    by_table: dict[int, list[int]] = {}
    for k in keys:
        by_table.setdefault(k // _KEY_SHIFT, []).append(k % _KEY_SHIFT)
    table = f"CAST({alias}.{TABLE_NUMBER} AS TEXT)"
    cases = " ".join(f"WHEN ? THEN {code}" for code in by_table)
    key = f"((CASE {table} {cases} ELSE -1 END) * {_KEY_SHIFT} + {alias}.ImageNumber)"
    where = " OR ".join(f"({table} = ? AND {alias}.ImageNumber IN ({', '.join(map(str, numbers))}))"
                        for numbers in by_table.values())
    texts = [table_texts[code] for code in by_table]
    return key, where, texts + texts


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
    """The join of one plate's compartments; ``{images}`` in ``sql`` takes the condition selecting a group of images.

    Selected: the image key, the hub's and the cell's object numbers, then the features (``names``)."""

    path: str
    sql: str
    names: tuple[str, ...]
    hub_alias: str
    table_texts: tuple[str, ...] | None  # keyed by (TableNumber, ImageNumber): each table code's TableNumber


def _connection(path: str) -> sqlite3.Connection:
    con = _CONNECTIONS.get(path)
    if con is None:
        con = _CONNECTIONS[path] = sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True)
    return con


def _sql_rows_as_float64(rows: list[tuple], query: CellQuery) -> np.ndarray:
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
    key, where, params = image_condition(query.hub_alias, images, query.table_texts)
    cursor = _connection(query.path).execute(query.sql.format(key=key, images=where), params)
    n_features = len(query.names) - 3
    keys = np.empty((max_rows, 3), dtype=np.int64)
    values = np.empty((max_rows, n_features), dtype=np.float32)
    n = 0
    while rows := cursor.fetchmany(_FETCH_ROWS):
        if n + len(rows) > max_rows:
            raise InputError(f"{query.path}: the merge gives more cells than the hub table has objects "
                             f"(images {images[0]}..{images[-1]}): an object number repeats in some table")
        x = _sql_rows_as_float64(rows, query)
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
