"""Effective-rank diagnostics of the model's well profiles: how many dimensions the pooled per-cell
features and the head's outputs actually use, beside the mean baseline.

A head that collapses the pooled features onto a few directions shows as an effective rank of its
outputs far below that of its inputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..io.cells import load_plate_cells, plate_name
from ..io.columns import Annotation
from ..io.files import InputError, write_table
from ..settings import Settings
from .average_precision import _unit_rows

logger = logging.getLogger(__name__)

REPRESENTATIONS = ("pooled", "head", "mean")


def effective_rank(profiles: np.ndarray, *, unit_rows: bool = True, center: bool = True) -> dict:
    """Effective rank (Roy & Vetterli 2007) of a set of profiles: exp of the entropy of p_k = s_k / sum(s).

    ``s`` are the singular values of the profile matrix, after scaling each row to unit length (the
    retrieval uses cosine similarity) and centering each column (so the common mean direction does
    not count as a dimension). Returns ``entropy`` (nats), ``effective_rank`` (1 ..
    ``max_rank``), ``max_rank`` = min(rows, columns) and ``singular_values`` (normalized, p_k).
    """
    x = np.asarray(profiles, dtype=np.float64)
    if unit_rows:
        x = _unit_rows(x)
    if center:
        x = x - x.mean(axis=0, keepdims=True)
    s = np.linalg.svd(x, compute_uv=False)
    total = s.sum()
    p = s / total if total > 0 else np.zeros_like(s)
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum())
    return {"entropy": entropy, "effective_rank": float(np.exp(entropy)), "max_rank": int(min(x.shape)), "singular_values": p}


@dataclass(frozen=True)
class EffectiveRankSettings(Settings):
    """The device the model runs on, its arithmetic (``train.precision``), and the metadata columns."""

    annotation: Annotation
    device: str
    precision: str  # auto | fp32 | bf16


def effective_rank_tables(normalized: list, checkpoint, out_summary, out_spectra, settings: EffectiveRankSettings,
                          mean_features: list[str] | None = None, threads: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Profiles of every well of the ``normalized`` plates (each named by its plate column) from all their cells, as
    ``pooled`` (the model's pooled per-cell features, before the head), ``head`` (its outputs) and
    ``mean`` (the mean baseline); the wells of all plates together.

    Writes ``out_summary``: representation, plates, n_wells, dim, max_rank, entropy, effective_rank
    (see :func:`effective_rank`: rows at unit length, columns centered), and
    ``out_spectra``: representation, k, normalized singular value p_k.
    """
    from ..model.checkpoint import load_model
    from ..model.inference import negcon_wells, pooled_and_head
    from ..profiles.aggregate import aggregate_cells

    if not normalized:
        raise InputError("effective rank: no plate to profile")
    trained = load_model(checkpoint, settings.device, threads, settings.precision)
    model, dev, features = trained.network, trained.device, trained.features
    logger.info("model profiles in %s on %s", trained.precision, dev)
    mean_features = list(mean_features or features)
    profiles = {r: [] for r in REPRESENTATIONS}
    names = []
    for path in normalized:
        plate = plate_name(path, settings.annotation)
        names.append(plate)
        cells, wells, _ = load_plate_cells(path, features, plate, settings.annotation)
        pooled, head = pooled_and_head(model, cells, dev, trained.precision,
                                       negcon_wells(model, wells, settings.annotation, path))
        profiles["pooled"].append(pooled)
        profiles["head"].append(head)
        if mean_features != features:
            cells, _, _ = load_plate_cells(path, mean_features, plate, settings.annotation)
        profiles["mean"].append(aggregate_cells(cells, mean_features, "mean").to_numpy())
    rows, spectra = [], []
    plates = " ".join(names)
    for rep in REPRESENTATIONS:
        x = np.concatenate(profiles[rep])
        x = x[np.linalg.norm(x, axis=1) > 0]  # a zero profile has no direction
        er = effective_rank(x)
        rows.append(
            {
                "representation": rep,
                "plates": plates,
                "n_wells": len(x),
                "dim": x.shape[1],
                "max_rank": er["max_rank"],
                "entropy": er["entropy"],
                "effective_rank": er["effective_rank"],
            }
        )
        p = er["singular_values"]
        spectra.append(pd.DataFrame({"representation": rep, "k": np.arange(1, len(p) + 1), "p": p}))
        logger.info("%s: effective rank %.1f of %d (%d wells x %d dims)", rep, er["effective_rank"], er["max_rank"], *x.shape)
    summary, spectra = pd.DataFrame(rows), pd.concat(spectra, ignore_index=True)
    write_table(summary, out_summary)
    write_table(spectra, out_spectra)
    return summary, spectra
