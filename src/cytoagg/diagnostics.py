"""Effective-rank diagnostics of the model's well profiles: how many dimensions the pooled per-cell
features and the head's outputs actually use, beside the mean baseline.

A head that collapses the pooled features onto a few directions shows as an effective rank of its
outputs far below that of its inputs.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from .cells import load_plate_cells
from .io import InputError, write_table
from .metrics import effective_rank

log = logging.getLogger(__name__)

REPRESENTATIONS = ("pooled", "head", "mean")


def effective_rank_tables(
    normalized: dict[str, str],
    checkpoint,
    out_summary,
    out_spectra,
    *,
    mean_features: list[str] | None = None,
    well_col: str = "Metadata_Well",
    perturbation_col: str = "Metadata_broad_sample",
    device: str = "auto",
    threads: int = 1,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Profiles of every well of the ``normalized`` plates (plate -> path) from all their cells, as
    ``pooled`` (the model's pooled per-cell features, before the head), ``head`` (its outputs) and
    ``mean`` (the mean baseline); the wells of all plates together.

    Writes ``out_summary``: representation, plates, n_wells, dim, max_rank, entropy, effective_rank
    (see :func:`cytoagg.metrics.effective_rank`: rows at unit length, columns centered), and
    ``out_spectra``: representation, k, normalized singular value p_k.
    """
    import torch

    from .aggregate import aggregate_cells
    from .model import pick_device
    from .train import load_checkpoint, model_from_checkpoint, pooled_and_head

    if not normalized:
        raise InputError("effective rank: no plate to profile")
    torch.set_num_threads(max(1, threads))
    dev = pick_device(device)
    payload = load_checkpoint(checkpoint)
    model = model_from_checkpoint(payload, dev)
    features = list(payload["features"])
    mean_features = list(mean_features or features)
    profiles = {r: [] for r in REPRESENTATIONS}
    for plate, path in normalized.items():
        cells, _, _ = load_plate_cells(path, features, plate=plate, well_col=well_col, perturbation_col=perturbation_col)
        pooled, head = pooled_and_head(model, cells, dev)
        profiles["pooled"].append(pooled)
        profiles["head"].append(head)
        if mean_features != features:
            cells, _, _ = load_plate_cells(path, mean_features, plate=plate, well_col=well_col, perturbation_col=perturbation_col)
        profiles["mean"].append(aggregate_cells(cells, mean_features, "mean").to_numpy())
    rows, spectra = [], []
    plates = " ".join(normalized)
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
        log.info("%s: effective rank %.1f of %d (%d wells x %d dims)", rep, er["effective_rank"], er["max_rank"], *x.shape)
    summary, spectra = pd.DataFrame(rows), pd.concat(spectra, ignore_index=True)
    write_table(summary, out_summary)
    write_table(spectra, out_spectra)
    return summary, spectra
