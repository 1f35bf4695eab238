"""Column conventions (pycytominer's): ``Metadata_*`` columns describe, compartment-prefixed columns measure.

One place decides what is a feature, so every step agrees.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..settings import Settings

COMPARTMENTS: tuple[str, ...] = ("Cells", "Cytoplasm", "Nuclei")
METADATA_PREFIX = "Metadata_"

# CellProfiler bookkeeping columns: integers or positions that carry a compartment prefix but do not
# measure the cell. They are never features (object ids, parent/child links, centroid positions).
_BOOKKEEPING = re.compile(
    r"_(ObjectNumber|Number_Object_Number|Parent_\w+|Children_\w+_Count|Location_\w+"
    r"|Neighbors_(First|Second)ClosestObjectNumber_\w+)$"
)


def is_metadata(column: str) -> bool:
    return column.startswith(METADATA_PREFIX)


def is_bookkeeping(column: str) -> bool:
    return bool(_BOOKKEEPING.search(column))


def is_feature(column: str, compartments: Sequence[str] = COMPARTMENTS) -> bool:
    """A measured feature: prefixed by a compartment (``Cells_AreaShape_Area``) and not bookkeeping."""
    if is_metadata(column) or is_bookkeeping(column):
        return False
    return any(column.startswith(f"{c}_") for c in compartments)


def feature_columns(columns: Iterable[str], compartments: Sequence[str] = COMPARTMENTS) -> list[str]:
    return [c for c in columns if is_feature(c, compartments)]


def measurement_columns(columns: Iterable[str]) -> list[str]:
    """The features of a table ingest wrote: every column but metadata and bookkeeping (whatever the compartments
    were called: ingest chose the features of ``dataset.compartments``)."""
    keys = {"ImageNumber", "ObjectNumber", "TableNumber"}
    return [c for c in columns if not is_metadata(c) and not is_bookkeeping(c) and c not in keys]


def metadata_columns(columns: Iterable[str]) -> list[str]:
    return [c for c in columns if is_metadata(c)]


def normalize_well(well: str) -> str:
    """``'a1'``, ``'A1'``, ``'A01'`` and ``'A001'`` all name well ``A01``."""
    m = re.fullmatch(r"\s*([A-Za-z]{1,2})0*(\d{1,3})\s*", str(well))
    if m is None:
        raise ValueError(f"not a well name: {well!r} (expected a row letter and a column number, e.g. A01)")
    return f"{m.group(1).upper()}{int(m.group(2)):02d}"


def close_matches(name: str, columns) -> list[str]:
    """Columns a user may have meant by ``name``: same name with the Metadata_ prefix or another case, then similar."""
    columns = list(dict.fromkeys(columns))
    bare = name.removeprefix("Metadata_").lower()
    exact = [c for c in columns if c.removeprefix("Metadata_").lower() == bare]
    similar = difflib.get_close_matches(name, columns, n=5, cutoff=0.75)
    return list(dict.fromkeys(exact + similar))[:5]


def well_names(n_rows: int = 16, n_cols: int = 24) -> list[str]:
    """All wells of a plate, row-major: A01..P24 for a 384-well plate."""
    rows = [chr(ord("A") + i) for i in range(n_rows)]
    return [f"{r}{c:02d}" for r in rows for c in range(1, n_cols + 1)]


@dataclass(frozen=True)
class Annotation(Settings):
    """Which metadata columns mean what: every step that reads metadata gets one (config ``metadata:``)."""

    plate_col: str
    well_col: str
    perturbation_col: str  # the column whose replicate wells should match
    negcon_col: str  # the column that marks negative controls (the config's null: the perturbation column)
    negcon_value: str | None  # its value in negative-control wells; None: the plates have no controls

    def negcon_mask(self, meta: pd.DataFrame) -> np.ndarray:
        """The negative-control rows of ``meta``: ``negcon_col`` equal to ``negcon_value`` as text."""
        if self.negcon_value is None:
            return np.zeros(len(meta), dtype=bool)
        return (meta[self.negcon_col].astype("string") == str(self.negcon_value)).fillna(False).to_numpy(dtype=bool)
