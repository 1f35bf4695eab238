"""Platemaps in the profiling-recipe layout.

``barcode_platemap.csv`` (``Assay_Plate_Barcode``, ``Plate_Map_Name``) names, for each plate barcode, a
platemap file ``<platemap_dir>/<Plate_Map_Name>.txt|.csv`` with one row per well (``well_position`` plus
annotation columns).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from .columns import METADATA_PREFIX, normalize_well
from .files import InputError

WELL_POSITION = "well_position"
BARCODE = "Assay_Plate_Barcode"
MAP_NAME = "Plate_Map_Name"

logger = logging.getLogger(__name__)


def read_delimited(path: str | os.PathLike) -> pd.DataFrame:
    """Read a small tab- or comma-separated table as strings; the separator is taken from the header line."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig") as fh:
            header = fh.readline()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e})") from e
    sep = "\t" if "\t" in header else ","
    try:
        return pd.read_csv(path, sep=sep, dtype=str, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a readable table ({e})") from e


def _require(df: pd.DataFrame, columns: list[str], path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing} (has {list(df.columns)})")


def _unpadded(barcode: str) -> str:
    return barcode.strip().lstrip("0") or "0"


def platemap_name(plate: str, barcode_platemap: str | os.PathLike, log: logging.Logger = logger) -> str:
    """The ``Plate_Map_Name`` of ``plate``; barcodes that differ only in zero padding (``001``/``1``) match."""
    path = Path(barcode_platemap)
    table = read_delimited(path)
    _require(table, [BARCODE, MAP_NAME], path)
    barcodes = table[BARCODE].fillna("").str.strip()
    exact = table.loc[barcodes == str(plate).strip(), MAP_NAME]
    if len(exact):
        names = exact.unique()
    else:
        loose = table.loc[barcodes.map(_unpadded) == _unpadded(str(plate))]
        names = loose[MAP_NAME].unique()
        if len(names):
            log.warning(
                "%s: plate %r matched barcode(s) %s, which differ only in zero padding",
                path, plate, sorted(loose[BARCODE].unique()),
            )
    if len(names) == 0:
        raise InputError(f"{path}: no row with {BARCODE} = {plate!r}")
    if len(names) > 1:
        raise InputError(f"{path}: plate {plate!r} maps to several platemaps: {sorted(names)}")
    return str(names[0])


PLATEMAP_SUFFIXES = (".txt", ".csv", ".tsv")  # <platemap_dir>/<Plate_Map_Name><suffix>, tried in this order


def platemap_path(name: str, platemap_dir: str | os.PathLike) -> Path:
    for suffix in PLATEMAP_SUFFIXES:
        path = Path(platemap_dir) / f"{name}{suffix}"
        if path.is_file():
            return path
    raise InputError(f"{platemap_dir}: no platemap file {name}.txt or {name}.csv")


def read_platemap(path: str | os.PathLike) -> pd.DataFrame:
    """Annotations indexed by normalized well (``A01``); columns get a ``Metadata_`` prefix if they lack one."""
    path = Path(path)
    table = read_delimited(path)
    _require(table, [WELL_POSITION], path)
    try:
        wells = table[WELL_POSITION].map(normalize_well)
    except ValueError as e:
        raise InputError(f"{path}: column {WELL_POSITION}: {e}") from e
    duplicated = sorted(wells[wells.duplicated()].unique())
    if duplicated:
        raise InputError(f"{path}: wells listed more than once: {duplicated}")
    annotations = table.drop(columns=[WELL_POSITION])
    annotations.columns = [c if c.startswith(METADATA_PREFIX) else METADATA_PREFIX + c for c in annotations.columns]
    if annotations.columns.duplicated().any():
        raise InputError(f"{path}: columns collide once prefixed with {METADATA_PREFIX}: {list(table.columns)}")
    annotations.index = pd.Index(wells, name=WELL_POSITION)
    return annotations


def platemap_file(
    plate: str,
    *,
    barcode_platemap: str | os.PathLike | None = None,
    platemap_dir: str | os.PathLike | None = None,
    platemap: str | os.PathLike | None = None,
    log: logging.Logger = logger,
) -> Path | None:
    """The platemap file of ``plate``: ``platemap`` directly, or looked up via the barcode map
    (config ``dataset:``); None when no platemap is configured."""
    if platemap is not None:
        path = Path(platemap)
    elif barcode_platemap is not None:
        if platemap_dir is None:
            raise InputError(f"{barcode_platemap}: a barcode platemap needs platemap_dir as well")
        path = platemap_path(platemap_name(plate, barcode_platemap, log), platemap_dir)
    elif platemap_dir is not None:
        raise InputError(f"{platemap_dir}: platemap_dir needs barcode_platemap as well")
    else:
        return None
    return path
