"""CellProfiler ExportToSpreadsheet plates: one folder per site, one CSV per compartment."""

from __future__ import annotations

from pathlib import Path
from collections.abc import Sequence

import pandas as pd

from ..io.columns import is_metadata, metadata_columns
from ..io.files import InputError
from .compartments import attach_images, compartment_features, link_compartments, merge_objects
from .formats import check_csv_complete
from .source import IMAGE_NUMBER, IMAGE_NUMBER_META, IMAGE_RANK, OBJECT_NUMBER, Source, order_images


class CellProfilerCsvSource(Source):
    """CellProfiler ExportToSpreadsheet output: one folder per site holding Image.csv and ``<Compartment>.csv``.

    Object columns are unprefixed (``AreaShape_Area``) and get the compartment prefix here. ImageNumber is only
    unique within a folder, so each folder is merged on its own. A single folder holding Image.csv directly
    is read as one site folder (whole in memory).
    """

    format = "cp_csv"

    def __init__(self, path: Path, compartments: Sequence[str], well_col: str):
        self.path, self.well_col, self.compartments = path, well_col, list(compartments)
        self.orphans: dict[str, int] = {}  # "site/ImageNumber n" -> objects whose image has no row in Image.csv
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
        cells = merge_objects(frames, self.links)
        orphan = ~cells[IMAGE_NUMBER].isin(site_images[IMAGE_NUMBER])
        for number, n in cells.loc[orphan, IMAGE_NUMBER].value_counts().items():
            self.orphans[f"{self.sites[i].name}/ImageNumber {number}"] = int(n)
        return attach_images(cells, site_images, self.links)

    def batches(self, metadata, features, chunk_rows):
        source_metadata = [m for m in metadata if m not in (IMAGE_NUMBER_META, OBJECT_NUMBER)]
        images = self._images(source_metadata)
        site_order = images.groupby("_site")[IMAGE_RANK].min().sort_values().index
        pending, n = [], 0
        for i in site_order:
            pending.append(self._read_site(i, images, features)[[*metadata, *features]])
            n += len(pending[-1])
            if n >= chunk_rows:
                yield pd.concat(pending, ignore_index=True)
                pending, n = [], 0
        if pending:
            yield pd.concat(pending, ignore_index=True)
