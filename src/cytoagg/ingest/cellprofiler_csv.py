"""CellProfiler ExportToSpreadsheet plates: one folder per site, one CSV per compartment."""

from __future__ import annotations

import tempfile
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..io.columns import is_metadata, metadata_columns
from ..io.files import InputError
from ..io.parquet import cell_writer, profile_schema, to_arrow
from .compartments import compartment_features, join_objects, link_compartments, object_numbers
from .formats import check_csv_complete, read_arrow_csv
from .single_cell import SLICE_BYTES, SingleCellParquet
from .source import IMAGE_NUMBER, IMAGE_NUMBER_META, IMAGE_RANK, OBJECT_NUMBER, Source, order_images


READ_THREADS = 2  # threads parsing folders' files
READ_AHEAD = 8  # folders parsed ahead of the joins (memory: a few MB)
BIG_CSV_BYTES = 8 << 20  # files above this are parsed by Arrow's threads (cytominer-database's one folder per plate)


class CellProfilerCsvSource(Source):
    """CellProfiler ExportToSpreadsheet output: folders holding Image.csv and ``<Compartment>.csv`` (file names in
    any case, plain or gzipped: cytominer-database's ``image.csv``/``cells.csv`` layout too).

    Object columns are unprefixed (``AreaShape_Area``) and get the compartment prefix here. ImageNumber is only
    unique within a folder, so each folder is merged on its own. A single folder holding Image.csv directly
    is read as one site folder. A folder may hold the images of any number of wells, as long as each image names
    its well: when one per folder, folders are read in well order (memory: a slice of cells, and the few folders
    parsed ahead); otherwise the merged cells go through a temporary Parquet file and are read back by well. Each
    folder's compartments are joined as pycytominer merges them (:func:`join_objects`, on object numbers in numpy).
    """

    format = "cp_csv"

    def __init__(self, path: Path, compartments: Sequence[str], well_col: str, workdir: Path | None = None,
                 hub: str | None = None, links: dict | None = None):
        self.path, self.well_col, self.compartments = path, well_col, list(compartments)
        self.workdir = workdir or path.parent
        self.orphans: dict[str, int] = {}  # "site/ImageNumber n" -> objects whose image has no row in Image.csv
        self.sites = [path] if csv_file(path, "Image") else sorted(
            p for p in path.iterdir() if p.is_dir() and csv_file(p, "Image")
        )
        if not self.sites:
            raise InputError(f"{path}: no Image.csv (or image.csv) here or in any sub-folder")
        self.files: dict[Path, dict[str, Path]] = {}  # site -> Image and each compartment -> its file
        for site in self.sites:
            self.files[site] = {name: csv_file(site, name) for name in ("Image", *self.compartments)}
            for c in self.compartments:
                if not self.files[site][c]:
                    raise InputError(f"{site / f'{c}.csv'}: missing compartment file for {c}")
                check_csv_complete(self.files[site][c])
            check_csv_complete(self.files[site]["Image"])
        first = self.sites[0]
        table_columns = {c: self._object_header(csv_file(first, c), c) for c in self.compartments}
        self.links = link_compartments(table_columns, {c: str(csv_file(first, c)) for c in self.compartments},
                                       hub=hub, links=links)
        image_header = read_csv(csv_file(first, "Image"), nrows=0).columns
        self.columns = [*metadata_columns(image_header), IMAGE_NUMBER_META, OBJECT_NUMBER]
        self.columns += [c for cols in table_columns.values() for c in cols if c != IMAGE_NUMBER]

    @staticmethod
    def _prefix(column: str, compartment: str) -> str:
        return column if column == IMAGE_NUMBER else f"{compartment}_{column}"

    def _object_header(self, path: Path, compartment: str) -> list[str]:
        """Prefixed column names; per-object copies of image metadata are left to Image.csv."""
        header = read_csv(path, nrows=0).columns
        return [self._prefix(c, compartment) for c in header if not is_metadata(c)]

    def _read_objects(self, site: Path, compartment: str, columns: list[str], features: list[str]) -> pa.Table:
        """``columns`` of one site's compartment file, ``features`` among them as float64, read with Arrow's CSV
        reader (pandas' parser took most of the time on big plates, benchmarks/ingest.md). Features are parsed as
        float64 and rounded to float32 later: the values the SQLite and Parquet routes give (Arrow's direct float32
        parse differs from that in the last bit of ~0.2% of values)."""
        path = self.files[site][compartment]
        names = {c: c if c == IMAGE_NUMBER else c.removeprefix(f"{compartment}_") for c in columns}
        table = _read_site_csv(path, list(names.values()), {names[c]: pa.float64() for c in features})
        return table.rename_columns(columns)

    def _image_table(self, i: int, metadata: list[str]) -> pa.Table:
        """One folder's Image.csv: ImageNumber and ``metadata`` (as text; pandas' missing-value spellings missing)."""
        path = self.files[self.sites[i]]["Image"]
        wanted = [IMAGE_NUMBER, *dict.fromkeys(m for m in metadata if m != IMAGE_NUMBER)]
        table = _read_site_csv(path, wanted, dict.fromkeys(wanted, pa.string()))
        return table.append_column("_site", pa.array(np.full(table.num_rows, i)))

    def _images(self, metadata: list[str]) -> pd.DataFrame:
        with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
            tables = list(pool.map(lambda i: self._image_table(i, metadata), range(len(self.sites))))
        frame = pa.concat_tables(tables).to_pandas()
        frame[IMAGE_NUMBER] = frame[IMAGE_NUMBER].astype("int64")
        repeated = frame[frame.duplicated(["_site", IMAGE_NUMBER])]
        if len(repeated):
            site, number = repeated[["_site", IMAGE_NUMBER]].iloc[0]
            raise InputError(f"{self.files[self.sites[site]]['Image']}: ImageNumber {number} has more than one row: "
                             "each image must have one")
        return order_images(frame, self.well_col, self.path, ["_site", IMAGE_NUMBER])

    def _read_tables(self, i: int, features: dict[str, list[str]]) -> dict[str, pa.Table]:
        """One folder's compartment files (``features``: each compartment's, as float64)."""
        return {c: self._read_objects(self.sites[i], c, self.links.columns(c) + features[c], features[c])
                for c in self.compartments}

    def _read_ahead(self, sites, features: dict[str, list[str]]) -> Iterator[tuple[int, dict[str, pa.Table]]]:
        """The folders' tables in order, parsed by ``READ_THREADS`` threads (Arrow parses without the GIL) at most
        ``READ_AHEAD`` folders ahead of the joins."""
        with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
            pending = deque()
            for i in sites:
                pending.append((i, pool.submit(self._read_tables, i, features)))
                if len(pending) > READ_AHEAD:
                    j, tables = pending.popleft()
                    yield j, tables.result()
            while pending:
                j, tables = pending.popleft()
                yield j, tables.result()

    def _join_site(self, i: int, tables: dict[str, pa.Table], images: pd.DataFrame) -> SiteCells:
        """One folder's cells: the hub's objects with a parent in every other compartment and an image in
        Image.csv (inner joins, as pycytominer's merge), ordered by image rank, then the hub's object number."""
        site = self.sites[i]
        rows = join_objects(tables, self.links, self.files[site])
        hub = tables[self.links.hub]
        numbers = object_numbers(hub.column(IMAGE_NUMBER))[rows[self.links.hub]]
        site_images = images.index[images["_site"].to_numpy() == i]
        known = images[IMAGE_NUMBER].to_numpy()[site_images]
        image_of = np.full(len(numbers), -1)
        if len(known):
            sorter = np.argsort(known, kind="stable")
            found = np.searchsorted(known, numbers, sorter=sorter).clip(max=len(known) - 1)
            hit = known[sorter[found]] == numbers
            image_of[hit] = site_images[sorter[found[hit]]]
        for number, n in zip(*np.unique(numbers[image_of < 0], return_counts=True)):
            self.orphans[f"{site.name}/ImageNumber {int(number)}"] = int(n)
        keep = image_of >= 0
        ranks = images[IMAGE_RANK].to_numpy()[image_of[keep]]
        hub_numbers = object_numbers(hub.column(self.links.object_number[self.links.hub]))[rows[self.links.hub][keep]]
        order = np.lexsort((hub_numbers, ranks))
        cells = self.links.cell_number_compartment()
        return SiteCells(
            image_rows=image_of[keep][order],
            cell_numbers=object_numbers(tables[cells].column(self.links.cell_number()))[rows[cells][keep][order]],
            rows={c: rows[c][keep][order] for c in self.compartments},
            tables=tables,
        )

    def _slice(self, pending: list[SiteCells], image_meta: pd.DataFrame, image_numbers: np.ndarray,
               metadata: list[str], features: list[str], by_compartment: dict[str, list[str]]):
        """Some folders' cells as one slice: metadata (pandas) and features (float32, cast once per slice)."""
        image_rows = np.concatenate([p.image_rows for p in pending])
        meta = image_meta.iloc[image_rows].reset_index(drop=True)
        meta[IMAGE_NUMBER_META] = image_numbers[image_rows].astype(str)
        meta[OBJECT_NUMBER] = np.concatenate([p.cell_numbers for p in pending]).astype(np.int64).astype(str)
        by_name = {}
        for c in self.compartments:
            offsets = np.cumsum([0, *(p.tables[c].num_rows for p in pending)])
            rows = np.concatenate([p.rows[c] + start for p, start in zip(pending, offsets)])
            table = pa.concat_tables([p.tables[c].select(by_compartment[c]) for p in pending])
            for name, column in zip(table.column_names, table.columns):
                by_name[name] = pc.cast(column, pa.float32(), safe=False).to_numpy()[rows]
        return meta[metadata], [by_name[f] for f in features]

    def _slices(self, images: pd.DataFrame, metadata, features, slice_rows) -> Iterator[tuple[pd.DataFrame, list]]:
        """Each folder's merged cells, folders in the order of their first image, in slices of about slice_rows:
        the metadata (pandas) and the float32 features."""
        site_order = images.groupby("_site")[IMAGE_RANK].min().sort_values().index
        image_meta = images[[m for m in metadata if m not in (IMAGE_NUMBER_META, OBJECT_NUMBER)]]
        image_numbers = images[IMAGE_NUMBER].to_numpy()
        by_compartment = {c: compartment_features(features, c) for c in self.compartments}
        pending, n = [], 0
        for i, tables in self._read_ahead(site_order, by_compartment):
            pending.append(self._join_site(i, tables, images))
            n += len(pending[-1].image_rows)
            if n >= slice_rows:
                yield self._slice(pending, image_meta, image_numbers, metadata, features, by_compartment)
                pending, n = [], 0
        if pending:
            yield self._slice(pending, image_meta, image_numbers, metadata, features, by_compartment)

    def split_batches(self, metadata, features, chunk_rows):
        source_metadata = [m for m in metadata if m not in (IMAGE_NUMBER_META, OBJECT_NUMBER)]
        images = self._images(source_metadata)
        slice_rows = max(1, min(chunk_rows, SLICE_BYTES // (4 * max(len(features), 1))))
        if (images.groupby("_site")[self.well_col].nunique() <= 1).all():  # one well per folder: already in order
            yield from self._slices(images, metadata, features, slice_rows)
            return
        # folders of several wells (cytominer-database's layout, or one folder for a plate): merged cells go
        # through a temporary Parquet file, read back by well (stable: within a well, folder then image order)
        self.workdir.mkdir(parents=True, exist_ok=True)
        schema = profile_schema(pd.DataFrame(columns=[*metadata, *features]))
        meta_schema = pa.schema([schema.field(m) for m in metadata])
        with tempfile.TemporaryDirectory(dir=self.workdir, prefix=".ingest-") as tmp:
            target = Path(tmp) / "cells.parquet"
            with cell_writer(target, schema) as writer:  # features plain, as every per-cell file
                for meta, values in self._slices(images, metadata, features, slice_rows):
                    arrays = [*to_arrow(meta, meta_schema).columns, *(pa.array(v) for v in values)]
                    writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            source = SingleCellParquet(target, self.well_col, label=self.path, workdir=Path(tmp))
            try:
                yield from source.split_batches(metadata, features, chunk_rows)
            finally:
                source.close()


class SiteCells(NamedTuple):
    """One folder's merged cells, in order: their rows in the plate's image table, cell object numbers, and their
    rows in each compartment's table (float64 features, Arrow)."""

    image_rows: np.ndarray
    cell_numbers: np.ndarray
    rows: dict[str, np.ndarray]
    tables: dict[str, pa.Table]


def csv_file(folder: Path, name: str) -> Path | None:
    """``<name>.csv`` or ``<name>.csv.gz`` in ``folder``, the name in any case; None if absent."""
    wanted = {f"{name}.csv".lower(), f"{name}.csv.gz".lower()}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.lower() in wanted:
            return path
    return None


def _read_site_csv(path: Path, columns: list[str], types: dict[str, pa.DataType]) -> pa.Table:
    """``columns`` of one site's file (:func:`read_arrow_csv`); one that the file lacks is named in the error."""
    try:
        big = path.stat().st_size > BIG_CSV_BYTES  # a site's small files in one thread each (READ_THREADS at once)
        return read_arrow_csv(path, columns, types, threads=big)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except InputError:
        present = set(read_header(path))
        missing = [c for c in columns if c not in present]
        if missing:
            raise InputError(f"{path}: missing column(s) {missing[:10]}") from None
        raise


def read_header(path: Path) -> list[str]:
    """The column names of a CSV (plain or gzipped); an empty file is an InputError naming it."""
    return list(read_csv(path, nrows=0).columns)


def read_csv(path: Path, **kwargs) -> pd.DataFrame:
    """``pd.read_csv`` with a bad file named in the error (an empty site file named, not its plate folder)."""
    try:
        return pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: empty file (no header)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError, zlib.error) as e:
        raise InputError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
