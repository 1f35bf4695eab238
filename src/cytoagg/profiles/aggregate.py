"""Non-learned well profiles: the baselines the model must beat."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..io.cells import PlateCells, load_plate_cells
from ..io.columns import Annotation
from ..io.files import InputError
from ..io.parquet import write_profiles

BASELINES = ("mean", "median", "mean_std")


def aggregate_cells(cells: PlateCells, features: list[str], method: str) -> pd.DataFrame:
    """Per-well profile: ``mean``, ``median``, or ``mean_std`` (mean and std concatenated: sees second moments)."""
    starts = cells.offsets[:-1]
    counts = cells.counts[:, None]
    x = cells.x.astype(np.float64)
    if method == "mean":
        return pd.DataFrame(np.add.reduceat(x, starts, axis=0) / counts, columns=features)
    if method == "median":
        med = np.vstack([np.median(x[a:b], axis=0) for a, b in zip(starts, cells.offsets[1:])])
        return pd.DataFrame(med, columns=features)
    if method == "mean_std":
        mean = np.add.reduceat(x, starts, axis=0) / counts
        var = np.maximum(np.add.reduceat(x * x, starts, axis=0) / counts - mean**2, 0.0)
        return pd.DataFrame(np.hstack([mean, np.sqrt(var)]), columns=[*features, *(f"{f}__std" for f in features)])
    raise InputError(f"unknown baseline {method!r} (choose from {', '.join(BASELINES)})")


def aggregate_plate(normalized, features: list[str], outputs: dict, plate: str, annotation: Annotation) -> dict[str, pd.DataFrame]:
    """Write one row per well for each baseline in ``outputs`` (method -> path): its metadata,
    ``Metadata_n_cells`` and the baseline profile. The plate is read once for every baseline."""
    unknown = [m for m in outputs if m not in BASELINES]
    if unknown:
        raise InputError(f"unknown baseline {unknown[0]!r} (choose from {', '.join(BASELINES)})")
    cells, wells, _ = load_plate_cells(normalized, features, plate, annotation)
    written = {}
    for method, out in outputs.items():
        df = pd.concat([wells.reset_index(drop=True), aggregate_cells(cells, features, method)], axis=1)
        write_profiles(df, out)
        written[method] = df
    return written
