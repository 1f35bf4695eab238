"""Per-plate replicate retrieval: AP of every treated well at finding its replicates on the plate."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import numpy as np
import pandas as pd

from .io import InputError, read_profiles, write_table
from .metrics import AP_COLUMNS, average_precision

logger = logging.getLogger(__name__)

ID_COLUMNS = ["plate", "well", "perturbation"]


def _logger(log) -> Callable[[str], None]:
    """``log`` may be a ``logging.Logger``, any callable taking a message, or None (module logger)."""
    if log is None:
        return logger.info
    return log.info if hasattr(log, "info") else log


def _require_columns(path, meta: pd.DataFrame, columns: dict[str, str]) -> None:
    for setting, col in columns.items():
        if col not in meta.columns:
            raise InputError(
                f"{path}: {setting} column {col!r} not found; metadata columns are {list(meta.columns)}"
            )


def _well_names(meta: pd.DataFrame, rows, plate_col: str, well_col: str, limit: int = 10) -> str:
    rows = np.asarray(rows)
    names = [f"{meta[plate_col].iat[r]}/{meta[well_col].iat[r]}" for r in rows[:limit]]
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return ", ".join(names) + more


def _check_profiles(path, meta, x, plate_col, well_col, perturbation_col) -> None:
    if x.shape[1] == 0:
        raise InputError(f"{path}: no feature columns")
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if len(bad):
        raise InputError(
            f"{path}: non-finite feature values in {len(bad)} well(s): "
            f"{_well_names(meta, bad, plate_col, well_col)}"
        )
    zero = np.flatnonzero(~x.any(axis=1))
    if len(zero):
        raise InputError(
            f"{path}: all-zero profile (cosine similarity undefined) in {len(zero)} well(s): "
            f"{_well_names(meta, zero, plate_col, well_col)}"
        )
    missing = np.flatnonzero(meta[perturbation_col].isna().to_numpy())
    if len(missing):
        raise InputError(
            f"{path}: {perturbation_col!r} is missing in {len(missing)} well(s): "
            f"{_well_names(meta, missing, plate_col, well_col)}"
        )
    dup = np.flatnonzero(meta.duplicated([plate_col, well_col], keep="first").to_numpy())
    if len(dup):
        raise InputError(
            f"{path}: expected one row per well; repeated: {_well_names(meta, dup, plate_col, well_col)}"
        )


def _plate_ap(x: np.ndarray, perturbation: pd.Series, negcon: np.ndarray, negcon_as_negatives: bool):
    """AP of the non-control wells of one plate (rows in input order)."""
    codes = pd.factorize(perturbation.to_numpy())[0]
    # A control well is never anyone's replicate, even if it shares a perturbation label.
    codes = np.where(negcon, -1 - np.arange(len(codes)), codes)
    treated = ~negcon
    return average_precision(
        x,
        codes,
        query_mask=treated,
        reference_mask=None if negcon_as_negatives else treated,
        negative_mask=negcon if negcon_as_negatives else None,
    )


def evaluate_plate(
    profiles_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    perturbation_col: str,
    well_col: str = "Metadata_Well",
    plate_col: str = "Metadata_Plate",
    negcon_col: str | None = None,
    negcon_value: str | None = None,
    negcon_as_negatives: bool = False,
    log=None,
) -> pd.DataFrame:
    """Write (and return) one row per treated well: its AP at retrieving same-perturbation wells.

    Wells are ranked against the other wells of their own plate (a file with several plates is
    evaluated plate by plate). Negative controls (``negcon_col == negcon_value``; ``negcon_col``
    defaults to ``perturbation_col``) are neither queries nor candidates, unless
    ``negcon_as_negatives``: then they are the only negatives. A perturbation with a single
    treated well on the plate has no replicate: its well is written with ``n_positives == 0`` and
    NaN AP, so the summary can count skipped queries. Control wells are not written.

    Columns: ``plate``, ``well``, ``perturbation``, ``average_precision``, ``precision_at_r``,
    ``n_positives``, ``n_candidates``, then the well's other ``Metadata_*`` columns.
    """
    say = _logger(log)
    meta, x, _ = read_profiles(profiles_path)
    negcon_col = negcon_col or perturbation_col
    required = {"perturbation": perturbation_col, "well": well_col, "plate": plate_col}
    if negcon_value is not None:
        required["negative control"] = negcon_col
    elif negcon_as_negatives:
        raise InputError(f"{profiles_path}: negcon_as_negatives needs negcon_value (which wells are controls)")
    _require_columns(profiles_path, meta, required)
    if meta.empty:
        raise InputError(f"{profiles_path}: no wells")
    _check_profiles(profiles_path, meta, x, plate_col, well_col, perturbation_col)

    if negcon_value is None:
        negcon = np.zeros(len(meta), dtype=bool)
    else:
        negcon = (meta[negcon_col].astype("string") == str(negcon_value)).fillna(False).to_numpy(dtype=bool)

    parts = []
    for plate, rows in meta.groupby(plate_col, sort=False, dropna=False).indices.items():
        n_negcon = int(negcon[rows].sum())
        if negcon_value is not None and n_negcon == 0:
            if negcon_as_negatives:
                raise InputError(
                    f"{profiles_path}: plate {plate}: no negative-control well "
                    f"({negcon_col} == {negcon_value!r}) to rank against"
                )
            say(f"plate {plate}: no well has {negcon_col} == {negcon_value!r}")
        ap = _plate_ap(x[rows], meta[perturbation_col].iloc[rows], negcon[rows], negcon_as_negatives)
        parts.append(ap.set_index(rows[ap.index.to_numpy()]))
        say(
            f"plate {plate}: {len(ap)} query well(s), {int((ap['n_positives'] == 0).sum())} without a replicate "
            f"(skipped), {n_negcon} negative-control well(s); "
            f"mean AP {ap['average_precision'].mean():.4f}"
        )

    scores = pd.concat(parts).sort_index()
    result = pd.concat([meta.iloc[scores.index].reset_index(drop=True), scores.reset_index(drop=True)], axis=1)
    ids = dict(zip(ID_COLUMNS, (plate_col, well_col, perturbation_col)))
    others = [c for c in meta.columns if c not in ids.values()]
    result = result.rename(columns={v: k for k, v in ids.items()})[[*ids, *AP_COLUMNS, *others]]
    write_table(result, out)
    return result
