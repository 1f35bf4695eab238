"""Profiling every well of a plate with the trained model, from ALL its cells (no sampling)."""

from __future__ import annotations

import logging

import pandas as pd
import torch

from .cells import load_plate_cells
from .io import InputError, write_profiles
from .model import pick_device
from .train import embed_cells, load_checkpoint, model_from_checkpoint

log = logging.getLogger(__name__)


def embed_plate(
    normalized, checkpoint, out, *, plate: str, well_col: str, perturbation_col: str,
    embedding: str = "head", device: str = "auto", threads: int = 1, normalization: dict | None = None,
) -> pd.DataFrame:
    """Write one row per well: its metadata, ``Metadata_n_cells`` and the model profile ``emb_0000...``.

    ``embedding``: ``head`` (the projection the loss saw) or ``pooled`` (the pooled per-cell features before the head).
    ``normalization``: the settings the plate was normalized with; a model trained on another
    normalization method is refused (its input would not mean what it learned).
    """
    if embedding not in ("head", "pooled"):
        raise InputError(f"train.embedding must be 'head' or 'pooled', got {embedding!r}")
    torch.set_num_threads(max(1, threads))
    dev = pick_device(device)
    payload = load_checkpoint(checkpoint)
    _check_normalization(checkpoint, payload.get("normalization") or {}, normalization or {})
    model = model_from_checkpoint(payload, dev)
    cells, wells, _ = load_plate_cells(
        normalized, payload["features"], plate=plate, well_col=well_col, perturbation_col=perturbation_col
    )
    profiles = embed_cells(model, cells, dev, use_head=embedding == "head")
    df = pd.concat(
        [wells.reset_index(drop=True), pd.DataFrame(profiles, columns=[f"emb_{i:04d}" for i in range(profiles.shape[1])])],
        axis=1,
    )
    write_profiles(df, out)
    log.info("%s: %d wells embedded from %d cells (%s, %s)", plate, len(df), len(cells.x), embedding, dev)
    return df


def _check_normalization(checkpoint, trained: dict, current: dict) -> None:
    if trained.get("method") and current.get("method") and trained["method"] != current["method"]:
        raise InputError(
            f"{checkpoint}: the model was trained on plates normalized with {trained['method']!r}, "
            f"but normalize.method is {current['method']!r}"
        )
    differ = sorted(k for k in set(trained) & set(current) if trained[k] != current[k])
    if differ:
        log.warning("%s: trained with other normalization settings for %s: %s vs %s", checkpoint, differ,
                    {k: trained[k] for k in differ}, {k: current[k] for k in differ})
