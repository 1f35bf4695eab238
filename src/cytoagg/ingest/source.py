"""What every source of one plate's cells shares: the merged column layout, well names, float32 features,
and the choice of feature columns."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..io.columns import COMPARTMENTS, feature_columns, is_bookkeeping, is_metadata, normalize_well
from ..io.files import InputError

IMAGE_NUMBER = "ImageNumber"
OBJECT_NUMBER = "Metadata_ObjectNumber"
IMAGE_NUMBER_META = "Metadata_ImageNumber"
IMAGE_RANK = "_image_rank"


class Tally:
    """Cells written per well, cells dropped for lack of a platemap row or of an image row (``orphans``: image ->
    cells), and the values of the annotation's columns per well; checks that wells stay contiguous."""

    def __init__(self):
        self.cells_per_well: dict[str, int] = {}
        self.dropped_cells: dict[str, int] = {}
        self.orphans: dict[str, int] = {}
        self.well_values: dict[str, dict[str, str | None]] = {}  # column -> well -> value (None: missing)
        self.source_plates: set[str] = set()
        self._last: str | None = None

    def add(self, wells: pd.Series) -> None:
        starts = np.flatnonzero((wells != wells.shift()).to_numpy())
        for well, size in zip(wells.to_numpy()[starts], np.diff([*starts, len(wells)])):
            if well != self._last and well in self.cells_per_well:
                raise RuntimeError(f"bug: rows of well {well} are not contiguous")
            self.cells_per_well[well] = self.cells_per_well.get(well, 0) + int(size)
            self._last = well


class Source:
    """One plate's cells. ``columns`` lists every column in the merged layout (image metadata as ``Metadata_*``);
    ``split_batches`` yields cells ordered by well as their metadata (pandas) and their features (float32
    arrays); ``batches`` the same cells as one frame. A source defines ``split_batches``."""

    format: str
    path: Path
    columns: list[str]

    def batches(self, metadata: list[str], features: list[str], chunk_rows: int) -> Iterator[pd.DataFrame]:
        for meta, values in self.split_batches(metadata, features, chunk_rows):
            yield pd.concat([meta, pd.DataFrame(dict(zip(features, values)), index=meta.index)], axis=1)

    def split_batches(self, metadata: list[str], features: list[str], chunk_rows: int
                      ) -> Iterator[tuple[pd.DataFrame, list[np.ndarray]]]:
        """Each batch's ``metadata`` columns, and its ``features`` as float32 arrays (one per feature), which
        ingest hands to Arrow without going through pandas."""
        raise NotImplementedError(f"{type(self).__name__} does not read cells in batches")

    def close(self) -> None:
        pass



IMAGE_PREFIX = "Image_"


def image_metadata_names(columns: Sequence[str]) -> dict[str, str]:
    """Renames of pycytominer's single-cell outputs (``SingleCells.merge_single_cells``): their image metadata
    keep the Image table's prefix (``Image_Metadata_Well``); read as ``Metadata_Well`` unless that column exists."""
    present = set(columns)
    renames = {}
    for c in columns:
        if c.startswith(IMAGE_PREFIX + "Metadata_"):
            name = c.removeprefix(IMAGE_PREFIX)
            if name not in present and name not in renames.values():
                renames[c] = name
    return renames


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
    images[IMAGE_RANK] = np.arange(len(images))
    return images


def choose_features(
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
