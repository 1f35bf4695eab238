"""Per-plate replicate retrieval: AP of every treated well at finding its replicates on the plate."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..io.columns import Annotation
from ..io.files import InputError, write_table
from ..io.parquet import merged_provenance, read_profiles
from ..settings import Settings
from ..splits import CompoundSplit
from .average_precision import AP_COLUMNS, average_precision, baseline_corrected_ap

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


def _retrieval_sets(labels, negcon, negcon_as_negatives, usable=None):
    """Label codes and (query, reference, negative) masks of the evaluate step's retrieval task.

    Controls (and rows not ``usable``) are never anyone's positive. Queries: the non-control
    ``usable`` rows. References: those rows, plus the controls as the only negatives when
    ``negcon_as_negatives``.
    """
    n = len(labels)
    usable = np.ones(n, dtype=bool) if usable is None else np.asarray(usable, dtype=bool)
    codes = pd.factorize(np.asarray(labels, dtype=object))[0]
    codes = np.where(negcon | ~usable, -1 - np.arange(n), codes)
    treated = ~negcon & usable
    if negcon_as_negatives:
        return codes, treated, treated | negcon, negcon
    return codes, treated, treated, None


def _retrieval(x, labels, negcon, negcon_as_negatives, queries, usable=None, exclude=None) -> pd.DataFrame:
    """AP of the ``queries`` (non-control, ``usable``) rows at retrieving the rows that share their label.

    ``exclude``: labels whose rows are removed from a query's candidates when they match its own
    (its replicates, for MoA retrieval). See :func:`_retrieval_sets`.
    """
    codes, treated, refs, negatives = _retrieval_sets(labels, negcon, negcon_as_negatives, usable)
    return average_precision(
        x, codes, query_mask=queries & treated, reference_mask=refs, negative_mask=negatives, exclude_labels=exclude
    )


MOA_COLUMNS = ["moa_average_precision", "moa_precision_at_r", "moa_n_positives", "moa_n_candidates"]
CORRECTED = "baseline_corrected_ap"


def _read_all(paths) -> tuple[pd.DataFrame, np.ndarray, str]:
    """Profiles of one or several files (same features), stacked; and a name for messages."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise InputError("no profile file to evaluate")
    metas, xs, names = [], [], None
    for path in paths:
        meta, x, feats = read_profiles(path)
        if names is not None and feats != names:
            raise InputError(f"{path}: feature columns differ from those of {paths[0]}")
        names = feats
        metas.append(meta)
        xs.append(x)
    label = str(paths[0]) if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} more)"
    if len(paths) == 1:
        return metas[0], xs[0], label
    return pd.concat(metas, ignore_index=True), np.concatenate(xs), label


@dataclass(frozen=True)
class EvaluateSettings(Settings):
    """Config ``evaluate:`` (negcon_as_negatives, reference, moa_column, baseline_corrected) and the metadata columns."""

    annotation: Annotation
    negcon_as_negatives: bool
    reference: str  # plate | split
    moa_column: str | None
    baseline_corrected: bool


def evaluate_profiles(profiles: dict[str, list], out, settings: EvaluateSettings, query_plates=None, log=None,
                      pipeline_folders: list | None = None) -> pd.DataFrame:
    """The evaluate step: every profile of a plate (``profiles``: ``profile_key(method, pipeline)`` or a method
    name -> its files: the plate's, or every plate of its split; and every profile in the per-plate pipelines'
    ``pipeline_folders``, one per plate) -> one AP table (``out``), the rows of each profile led by ``method`` and
    ``profile_pipeline``."""
    from ..profiles.pipelines import KEY_SEPARATOR, pipeline_profiles, split_key

    profiles = {**profiles, **pipeline_profiles(list(pipeline_folders or []))}
    parts, model_files = [], []
    for key, files in profiles.items():
        method, pipeline = split_key(key) if KEY_SEPARATOR in key else (key, "raw")
        if method == "model" and pipeline == "raw":
            model_files += [files] if isinstance(files, (str, os.PathLike)) else list(files)
        _logger(log)(f"evaluating {method} through {pipeline}")
        ap = evaluate_plate(files, None, settings, query_plates=query_plates, log=log)
        ap.insert(0, "profile_pipeline", pipeline)
        ap.insert(0, "method", method)
        parts.append(ap)
    if not parts:
        raise InputError("evaluate: no profiles given")
    result = pd.concat(parts, ignore_index=True)
    if out is not None:
        write_table(result, out, metadata=merged_provenance(model_files))  # the model profiles' arithmetic
    return result


def evaluate_plate(profiles_path, out: str | os.PathLike | None, settings: EvaluateSettings, query_plates=None,
                   log=None) -> pd.DataFrame:
    """Write (and return) one row per treated well: its AP at retrieving same-perturbation wells.

    ``profiles_path``: one profile file, or several (e.g. every plate of a split). ``reference``:
    ``plate`` ranks each well against the other wells of its own plate; ``split`` against the wells
    of every plate read (replicates on other plates are positives too). ``query_plates``: the plates
    whose wells are queries and written (default: all). Negative controls (the annotation's
    ``negcon_col == negcon_value``) are neither queries nor
    candidates, unless ``negcon_as_negatives``: then they are the only negatives. A perturbation with
    a single treated well has no replicate: its well is written with ``n_positives == 0`` and NaN AP,
    so the summary can count skipped queries. Control wells are not written.

    ``moa_column``, when the profiles have it: also MoA retrieval (``moa_*`` columns): positives are the
    wells of other perturbations with the same MoA, the query's own replicates are not candidates
    (as the paper's ``percent_matching``); wells with no MoA are neither queries nor candidates.
    ``baseline_corrected``: also ``baseline_corrected_ap`` = max(AP - n_positives / n_candidates, 0)
    (CytoSummaryNet's corrected AP, not the plain AP), and ``moa_baseline_corrected_ap``.

    Columns: ``plate``, ``well``, ``perturbation``, ``average_precision``, ``precision_at_r``,
    ``n_positives``, ``n_candidates``, the optional ones above, then the well's other ``Metadata_*``. The
    profiles' ``cytoagg.*`` key-value metadata (e.g. the model's arithmetic) is carried into the AP file.
    """
    say = _logger(log)
    annotation, reference, negcon_as_negatives = settings.annotation, settings.reference, settings.negcon_as_negatives
    plate_col, well_col, perturbation_col = annotation.plate_col, annotation.well_col, annotation.perturbation_col
    negcon_col, negcon_value, moa_col = annotation.negcon_col, annotation.negcon_value, settings.moa_column
    if reference not in ("plate", "split"):
        raise InputError(f"evaluate.reference must be 'plate' or 'split', got {reference!r}")
    meta, x, name = _read_all(profiles_path)
    required = {"perturbation": perturbation_col, "well": well_col, "plate": plate_col}
    if negcon_value is not None:
        required["negative control"] = negcon_col
    elif negcon_as_negatives:
        raise InputError(f"{name}: negcon_as_negatives needs negcon_value (which wells are controls)")
    _require_columns(name, meta, required)
    if meta.empty:
        raise InputError(f"{name}: no wells")
    _check_profiles(name, meta, x, plate_col, well_col, perturbation_col)

    negcon = annotation.negcon_mask(meta)
    plates = meta[plate_col].astype("string").to_numpy(dtype=object)
    if query_plates is None:
        is_query = np.ones(len(meta), dtype=bool)
    else:
        query_plates = [query_plates] if isinstance(query_plates, str) else list(query_plates)
        missing = sorted(set(query_plates) - set(plates))
        if missing:
            raise InputError(f"{name}: no well of plate(s) {missing} (plates found: {sorted(set(plates))})")
        is_query = np.isin(plates, query_plates)
    has_moa = moa_col is not None and moa_col in meta.columns and meta[moa_col].notna().any()
    if moa_col is not None and not has_moa:
        say(f"no {moa_col!r} values in the profiles: no MoA retrieval")
    perturbation = meta[perturbation_col].to_numpy(dtype=object)

    if reference == "plate":
        groups = meta.groupby(plate_col, sort=False, dropna=False).indices
        groups = {p: rows for p, rows in groups.items() if is_query[rows].any()}
    else:
        groups = {"+".join(dict.fromkeys(plates)): np.arange(len(meta))}
    parts = []
    for group, rows in groups.items():
        n_negcon = int(negcon[rows].sum())
        if negcon_value is not None and n_negcon == 0:
            if negcon_as_negatives:
                raise InputError(
                    f"{name}: plate {group}: no negative-control well ({negcon_col} == {negcon_value!r}) to rank against"
                )
            say(f"plate {group}: no well has {negcon_col} == {negcon_value!r}")
        common = dict(negcon=negcon[rows], negcon_as_negatives=negcon_as_negatives, queries=is_query[rows])
        ap = _retrieval(x[rows], perturbation[rows], **common)
        if settings.baseline_corrected:
            ap[CORRECTED] = baseline_corrected_ap(ap["average_precision"], ap["n_positives"], ap["n_candidates"])
        if has_moa:
            moa = meta[moa_col].iloc[rows]
            m = _retrieval(
                x[rows], moa.fillna("").to_numpy(dtype=object), **common, usable=moa.notna().to_numpy(),
                exclude=pd.factorize(perturbation[rows])[0],
            )
            m = m.reindex(ap.index)
            ap["moa"] = moa.iloc[ap.index].to_numpy(dtype=object)
            for col in AP_COLUMNS:
                ap[f"moa_{col}"] = m[col].to_numpy()
            ap["moa_n_positives"] = ap["moa_n_positives"].fillna(0).astype(np.int64)
            ap["moa_n_candidates"] = ap["moa_n_candidates"].fillna(0).astype(np.int64)
            if settings.baseline_corrected:
                ap[f"moa_{CORRECTED}"] = baseline_corrected_ap(
                    ap["moa_average_precision"], ap["moa_n_positives"], ap["moa_n_candidates"]
                )
        parts.append(ap.set_index(rows[ap.index.to_numpy()]))
        scored = ap["n_positives"] > 0
        say(
            f"plate {group}: {len(ap)} query well(s), {int((~scored).sum())} without a replicate "
            f"(skipped), {n_negcon} negative-control well(s); "
            f"mean AP {ap['average_precision'].mean():.4f}"
            + (f"; MoA retrieval: {int((ap['moa_n_positives'] > 0).sum())} query well(s)" if has_moa else "")
        )

    scores = pd.concat(parts).sort_index()
    result = pd.concat([meta.iloc[scores.index].reset_index(drop=True), scores.reset_index(drop=True)], axis=1)
    ids = dict(zip(ID_COLUMNS, (plate_col, well_col, perturbation_col)))
    others = [c for c in meta.columns if c not in ids.values()]
    extra = [c for c in scores.columns if c not in AP_COLUMNS]
    result = result.rename(columns={v: k for k, v in ids.items()})[[*ids, *AP_COLUMNS, *extra, *others]]
    if out is not None:
        paths = [profiles_path] if isinstance(profiles_path, (str, os.PathLike)) else list(profiles_path)
        write_table(result, out, metadata=merged_provenance(paths))  # e.g. the model profiles' arithmetic
    return result


@dataclass(frozen=True)
class PrCurveSettings(Settings):
    """The precision-recall figure: which plate, one curve per value of ``group_column`` (``evaluate.pr_curve_column``),
    ``evaluate.negcon_as_negatives``, the compound split and the metadata columns."""

    annotation: Annotation
    plate: str
    group_column: str | None
    negcon_as_negatives: bool
    split: CompoundSplit


def pr_curves(profiles: dict[str, str | os.PathLike], settings: PrCurveSettings) -> pd.DataFrame:
    """Precision-recall curves of one query well per group, for each method (profiles: method -> one plate's file).

    Groups: the values of ``group_col`` (e.g. the compound kind) when the profiles have it, else the
    compound split (training / validation compounds). A group's query is its well with the median
    AP under the first method (the model), among wells with a replicate; every method ranks the
    same query, as the evaluate step ranks it. Returns one row per (group, method, rank): group,
    method, well, perturbation, average_precision, rank, recall, precision.
    """
    from .average_precision import ranked_relevance

    annotation, group_col, negcon_as_negatives = settings.annotation, settings.group_column, settings.negcon_as_negatives
    perturbation_col, well_col = annotation.perturbation_col, annotation.well_col
    read = {m: read_profiles(p)[:2] for m, p in profiles.items()}
    first = next(iter(read))
    meta = read[first][0]
    _require_columns(profiles[first], meta, {"perturbation": perturbation_col, "well": well_col})
    wells = meta[well_col].astype(str).to_numpy()
    negcon = annotation.negcon_mask(meta) if annotation.negcon_col in meta.columns else np.zeros(len(meta), dtype=bool)
    labels = meta[perturbation_col].to_numpy(dtype=object)
    if group_col and group_col in meta.columns and meta.loc[~negcon, group_col].notna().any():
        groups = meta[group_col].astype("string").fillna("(none)").to_numpy(dtype=object)
    else:
        split = settings.split.of(pd.unique(labels.astype(str)))
        groups = np.array([f"{split[str(v)]} compounds" for v in labels], dtype=object)
    codes, treated, refs, negatives = _retrieval_sets(labels, negcon, negcon_as_negatives)
    x0 = read[first][1]
    ap0 = average_precision(x0, codes, query_mask=treated, reference_mask=refs, negative_mask=negatives)
    ap0 = ap0[ap0["n_positives"] > 0]
    rows = []
    for group in sorted(set(groups[ap0.index])):
        cand = ap0[groups[ap0.index] == group].sort_values("average_precision", kind="stable")
        query = int(cand.index[(len(cand) - 1) // 2])
        for method, (m_meta, x) in read.items():
            order = pd.Index(m_meta[well_col].astype(str)).get_indexer(wells)
            if (order < 0).any():
                raise InputError(f"{profiles[method]}: wells differ from those of {profiles[first]}")
            rel = ranked_relevance(x[order], codes, query, reference_mask=refs, negative_mask=negatives)
            hits = np.cumsum(rel)
            rank = np.arange(1, len(rel) + 1)
            rows.append(
                pd.DataFrame(
                    {
                        "group": group,
                        "method": method,
                        "well": wells[query],
                        "perturbation": labels[query],
                        "average_precision": (hits[rel] / rank[rel]).mean(),
                        "rank": rank,
                        "recall": hits / max(int(rel.sum()), 1),
                        "precision": hits / rank,
                    }
                )
            )
    if not rows:
        raise InputError(f"{profiles[first]}: no well has a replicate: no precision-recall curve to draw")
    return pd.concat(rows, ignore_index=True)
