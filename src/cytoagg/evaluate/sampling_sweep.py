"""mAP vs number of cells per well: the model (and the mean baseline) profile each well from a random
sample of its cells, for several sample sizes and seeds, and from all of its cells.

Samples are drawn without replacement (a well with fewer cells than the sample size keeps all of
them) and are nested: for one seed, the 50-cell sample of a well is part of its 100-cell sample, so
the curve moves only by adding cells. Wells are ranked within their plate, as in the evaluate step.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..io.cells import PlateCells, load_plate_cells
from ..io.columns import Annotation
from ..io.files import InputError, write_table, write_text
from ..io.parquet import merged_provenance, read_parquet
from ..settings import Settings
from .retrieval import _retrieval
from .summarize import Splits, add_splits, design_notes, precision_note, to_markdown

logger = logging.getLogger(__name__)

ALL = "all"


def _plate_seed(seed: int, plate: str) -> int:
    """A seed per (seed, plate): plates draw independently, and adding a plate changes no other's draws."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{plate}".encode()).digest()[:8], "little")


def nested_samples(cells: PlateCells, sizes, seed: int) -> dict[int, PlateCells]:
    """For each size n: the plate with at most n cells per well, drawn without replacement (nested across sizes)."""
    rng = np.random.default_rng(_plate_seed(seed, cells.plate))
    well = cells.well_index
    order = np.lexsort((rng.random(len(well)), well))  # each well's cells in a random order, wells in order
    rank = np.arange(len(order)) - np.repeat(cells.offsets[:-1], cells.counts)
    out = {}
    for n in sorted({int(s) for s in sizes}):
        if n < 1:
            raise InputError(f"evaluate.sampling_sweep: sample sizes must be >= 1, got {n}")
        keep = order[rank < n]
        counts = np.minimum(cells.counts, n)
        offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
        out[n] = PlateCells(cells.plate, cells.x[keep], offsets, cells.wells, cells.perturbations)
    return out


def _score(profiles: np.ndarray, wells: pd.DataFrame, annotation: Annotation, negcon_as_negatives: bool):
    ap = _retrieval(
        profiles, wells[annotation.perturbation_col].to_numpy(dtype=object), negcon=annotation.negcon_mask(wells),
        negcon_as_negatives=negcon_as_negatives, queries=np.ones(len(wells), dtype=bool),
    )
    return ap


@dataclass(frozen=True)
class SamplingSweepSettings(Settings):
    """Config ``evaluate.sampling_sweep`` (sizes), ``sampling_seeds`` (seeds) and ``negcon_as_negatives``,
    ``train.embedding``, the device, ``train.precision``, and the metadata columns."""

    annotation: Annotation
    sizes: list[int]
    seeds: int
    negcon_as_negatives: bool
    embedding: str
    device: str
    precision: str  # auto | fp32 | bf16


def sampling_sweep_plate(normalized, checkpoint, out, plate: str, settings: SamplingSweepSettings,
                         mean_features: list[str] | None = None, threads: int = 1) -> pd.DataFrame:
    """Write (and return) per-well AP of the model and the mean baseline for each sample size x seed, and all cells.

    Columns: plate, well, perturbation, method (``model`` / ``mean``), cells_sampled (the size as
    text, or ``all``), seed (-1 for all cells), n_cells_used, then the AP columns of the evaluate
    step. ``mean_features``: the mean baseline's features (default: the model's). The file's key-value
    metadata records the model's arithmetic (as the embed step's profiles do).
    """
    from ..model.checkpoint import load_model
    from ..model.inference import embed_cells, negcon_wells

    annotation, embedding, seeds = settings.annotation, settings.embedding, settings.seeds
    well_col, perturbation_col = annotation.well_col, annotation.perturbation_col
    if embedding not in ("head", "pooled"):
        raise InputError(f"train.embedding must be 'head' or 'pooled', got {embedding!r}")
    sizes = sorted({int(s) for s in settings.sizes})
    if not sizes:
        raise InputError("evaluate.sampling_sweep is empty: nothing to sweep")
    trained = load_model(checkpoint, settings.device, threads, settings.precision)
    model, dev = trained.network, trained.device
    feats = {"model": trained.features, "mean": list(mean_features or trained.features)}
    loaded = {}
    for method, f in feats.items():
        key = tuple(f)
        if key not in loaded:
            loaded[key] = load_plate_cells(normalized, f, plate, annotation)[:2]

    def profile(method: str, cells: PlateCells, wells: pd.DataFrame) -> np.ndarray:
        if method == "model":
            negcon = negcon_wells(model, wells, annotation, normalized)
            return embed_cells(model, cells, dev, trained.precision, use_head=embedding == "head", negcon=negcon)
        from ..profiles.aggregate import aggregate_cells

        return aggregate_cells(cells, feats["mean"], "mean").to_numpy()

    parts = []
    for method, f in feats.items():
        cells, wells = loaded[tuple(f)]
        if annotation.negcon_value is not None and annotation.negcon_col not in wells.columns:
            raise InputError(
                f"{normalized}: negative-control column {annotation.negcon_col!r} not found or not constant within wells"
            )
        draws = [(ALL, -1, cells)] + [
            (str(n), s, sub) for s in range(seeds) for n, sub in nested_samples(cells, sizes, s).items()
        ]
        for label, seed, sub in draws:
            ap = _score(profile(method, sub, wells), wells, annotation, settings.negcon_as_negatives)
            counts = sub.counts[ap.index.to_numpy()]
            parts.append(
                pd.DataFrame(
                    {
                        "plate": plate,
                        "well": wells[well_col].to_numpy()[ap.index],
                        "perturbation": wells[perturbation_col].to_numpy()[ap.index],
                        "method": method,
                        "cells_sampled": label,
                        "seed": seed,
                        "n_cells_used": counts,
                    }
                ).join(ap.reset_index(drop=True))
            )
        logger.info("%s: %s swept over %s cells x %d seeds", plate, method, sizes, seeds)
    result = pd.concat(parts, ignore_index=True)
    write_table(result, out, metadata=trained.provenance())
    return result


def _order_key(s: pd.Series) -> pd.Series:
    return s.map(lambda v: float("inf") if v == ALL else float(v))


def summarize_sweep(ap: pd.DataFrame, splits: Splits):
    """Per plate x compound split x method x cells sampled x seed: mAP, precision at R, mean cells used.

    Returns (long table, :func:`compact_sweep` of it).
    """
    ap = add_splits(ap, splits)
    rows = []
    for part in ("train", "validation", "all"):
        sub = ap if part == "all" else ap[ap["compound_split"] == part]
        keys = ["plate", "plate_split", "method", "cells_sampled", "seed"]
        for key, g in sub.groupby(keys, sort=False):
            scored = g.dropna(subset=["average_precision"])
            per = scored.groupby("perturbation")["average_precision"].mean()
            rows.append(
                dict(
                    zip(keys, key),
                    compound_split=part,
                    mAP=per.mean() if len(per) else np.nan,
                    precision_at_R=scored["precision_at_r"].mean() if len(scored) else np.nan,
                    mean_cells_used=g["n_cells_used"].mean(),
                    n_queries=len(scored),
                )
            )
    long = pd.DataFrame(rows)
    cols = ["plate", "plate_split", "compound_split", "method", "cells_sampled", "seed", "mAP", "precision_at_R", "mean_cells_used", "n_queries"]
    long = long[cols].sort_values(
        ["plate_split", "plate", "compound_split", "method", "cells_sampled", "seed"],
        key=lambda s: _order_key(s) if s.name == "cells_sampled" else s,
    ).reset_index(drop=True)
    return long, compact_sweep(long)


def compact_sweep(long: pd.DataFrame) -> pd.DataFrame:
    """Mean over the plates of each plate split, then mean and sd over seeds: one row per plate split x
    compound split x method x cells sampled."""
    long = long.astype({"cells_sampled": str})
    by_seed = long.groupby(["plate_split", "compound_split", "method", "cells_sampled", "seed"], sort=False)[
        ["mAP", "mean_cells_used"]
    ].mean()
    compact = by_seed.groupby(level=["plate_split", "compound_split", "method", "cells_sampled"], sort=False).agg(
        mAP=("mAP", "mean"), mAP_sd=("mAP", "std"), mean_cells_used=("mean_cells_used", "mean"),
        n_seeds=("mAP", "size"),
    ).reset_index()
    return compact.sort_values(
        ["plate_split", "compound_split", "method", "cells_sampled"],
        key=lambda s: _order_key(s) if s.name == "cells_sampled" else s,
    ).reset_index(drop=True)


def summarize_sampling_sweep(files, out_csv, out_md, splits: Splits) -> pd.DataFrame:
    """The sweep's summary step: every plate's sweep (``files``) -> ``out_csv`` (long) and ``out_md`` (compact)."""
    ap = pd.concat([read_parquet(f) for f in files], ignore_index=True)
    long, compact = summarize_sweep(ap, splits)
    write_table(long, out_csv)
    write_text(
        "# mAP vs cells sampled per well\n\n"
        "Each well profiled from a random sample of its cells (without replacement; a well with fewer cells keeps "
        "all of them), mean over the plates of a split, then mean and sd over seeds; `all`: every cell.\n\n"
        + "".join(f"**Note:** {note}\n\n" for note in design_notes(long))
        + precision_note(merged_provenance(files))
        + to_markdown(compact),
        out_md,
    )
    return long
