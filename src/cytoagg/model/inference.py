"""Profiles from a trained model: every well of a plate from ALL its cells (no sampling), streamed in chunks."""

from __future__ import annotations

import numpy as np
import torch

from ..io.cells import PlateCells
from ..io.files import InputError
from .network import DeepSets
from .precision import autocast


def embed_cells(model: DeepSets, plate: PlateCells, device, precision: str, use_head: bool = True,
                negcon=None) -> np.ndarray:
    """Profiles of every well of a plate from ALL its cells: (n_wells, dim) float32.

    ``precision``: ``fp32`` or ``bf16`` (resolved, see :func:`cytoagg.model.precision.resolve_precision`).
    """
    pooled, head = pooled_and_head(model, plate, device, precision, negcon)
    return head if use_head else pooled


def pooled_and_head(model: DeepSets, plate: PlateCells, device, precision: str,
                    negcon=None) -> tuple[np.ndarray, np.ndarray]:
    """Every well's pooled features and head output, from ALL its cells (the cells go through the model once).

    ``negcon``: (n_wells,) mask of the plate's negative-control wells; needed by a model with plate
    normalization (``model.needs_negcon``), whose statistics come from those wells' pooled vectors.
    """
    with torch.no_grad(), autocast(device, precision):
        pooled = model.pool_wells(plate.x, plate.well_index, len(plate.wells))
    return pooled.float().cpu().numpy(), head_from_pooled(model, pooled, negcon, plate.plate)


def head_from_pooled(model: DeepSets, pooled: torch.Tensor, negcon, plate: str) -> np.ndarray:
    """The profiles (head outputs) of a plate's wells from their pooled vectors; ``negcon``: as for
    :func:`pooled_and_head`."""
    stats = None
    with torch.no_grad():
        if model.needs_negcon:
            n = 0 if negcon is None else int(np.sum(negcon))
            if n < 2:
                raise InputError(
                    f"plate {plate}: the model normalizes against negative controls (train.plate_norm), "
                    f"but the plate has {n} negative-control wells (2 needed; metadata.negcon_value)"
                )
            stats = model.negcon_stats(pooled[torch.from_numpy(np.asarray(negcon, dtype=bool)).to(pooled.device)])
        return model.project(pooled, stats).float().cpu().numpy()


def negcon_wells(model: DeepSets, wells, annotation, source) -> np.ndarray | None:
    """The negative-control mask of ``wells`` (a plate's well metadata, in profile order) that a model with plate
    normalization needs (None for other models); ``source`` names the plate's file in errors."""
    if not model.needs_negcon:
        return None
    if annotation.negcon_value is None or annotation.negcon_col not in wells.columns:
        raise InputError(
            f"{source}: the model normalizes against negative controls (train.plate_norm): metadata.negcon_value must "
            f"be set and column {annotation.negcon_col!r} present and constant within wells"
        )
    return annotation.negcon_mask(wells.reset_index(drop=True))

