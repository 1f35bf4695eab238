"""``dataset.features: common``: the features every configured plate has, after normalization.

Plates exported on their own (per-plate feature selection upstream, a CellProfiler pipeline changed between
batches, or a feature normalization dropped on one plate because it was constant there) rarely share every
column. The model and every profile need the same features on every plate, so the workflow keeps those all
plates have (in the first plate's order) and says, per plate, what it loses: one line each in the log, one
warning on the console, and every (plate, feature) in a table.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from ..io.columns import feature_columns
from ..io.files import InputError, write_names, write_table
from ..io.parquet import parquet_columns

logger = logging.getLogger(__name__)


def plate_of(path) -> str:
    """A plate's name from the workflow's per-plate file name (``normalized/{plate}.parquet``)."""
    return Path(path).name.removesuffix(".parquet")


def common_features(plates: list, out_txt, out_dropped, log: logging.Logger | None = None) -> list[str]:
    """Write the features every plate in ``plates`` (per-plate Parquet files) has, one per line, to ``out_txt``, and
    every (plate, feature) left out to ``out_dropped`` (CSV: plate, feature, n_plates_with_it). Returns the list."""
    log = log or logger
    if not plates:
        raise InputError("common features: no plate given")
    per_plate = {plate_of(p): feature_columns(parquet_columns(p)) for p in plates}
    shared = set.intersection(*(set(f) for f in per_plate.values()))
    first = next(iter(per_plate.values()))
    common = [f for f in first if f in shared]
    if not common:
        sizes = {p: len(f) for p, f in per_plate.items()}
        raise InputError(f"no feature is common to all {len(per_plate)} plates (features per plate: {sizes}); "
                         "are these plates from the same kind of CellProfiler pipeline?")
    n_with = pd.Series([f for names in per_plate.values() for f in names]).value_counts()
    rows = [(plate, f, int(n_with[f])) for plate, names in per_plate.items() for f in names if f not in shared]
    dropped = pd.DataFrame(rows, columns=["plate", "feature", "n_plates_with_it"])
    for plate, names in per_plate.items():
        lost = [f for f in names if f not in shared]
        if lost:
            more = f" and {len(lost) - 10} more" if len(lost) > 10 else ""
            log.info("%s: %d of its %d features are not on every plate, left out: %s%s", plate, len(lost), len(names),
                     ", ".join(lost[:10]), more)
        else:
            log.info("%s: all of its %d features are common", plate, len(names))
    if len(dropped):
        counts = dropped.groupby("plate", sort=False).size()
        shown = ", ".join(f"{p} {n}" for p, n in counts.head(8).items()) + (" ..." if len(counts) > 8 else "")
        log.warning("features common to all %d plates: %d (plates have %d to %d); left out per plate: %s (every one "
                    "in %s)", len(per_plate), len(common), min(map(len, per_plate.values())),
                    max(map(len, per_plate.values())), shown, out_dropped)
    else:
        log.info("all %d plates have the same %d features", len(per_plate), len(common))
    write_table(dropped, out_dropped)
    write_names(common, out_txt)
    return common
