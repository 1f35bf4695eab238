"""Profiles from a trained model: every well of a plate from ALL its cells (no sampling), streamed in chunks."""

from __future__ import annotations

import numpy as np
import torch

from ..io.cells import PlateCells
from .network import DeepSets
from .precision import autocast


def embed_cells(model: DeepSets, plate: PlateCells, device, precision: str, use_head: bool = True) -> np.ndarray:
    """Profiles of every well of a plate from ALL its cells: (n_wells, dim) float32.

    ``precision``: ``fp32`` or ``bf16`` (resolved, see :func:`cytoagg.model.precision.resolve_precision`).
    """
    pooled, head = pooled_and_head(model, plate, device, precision)
    return head if use_head else pooled


def pooled_and_head(model: DeepSets, plate: PlateCells, device, precision: str) -> tuple[np.ndarray, np.ndarray]:
    """Every well's pooled features and head output, from ALL its cells (the cells go through the model once)."""
    with torch.no_grad(), autocast(device, precision):
        pooled = model.pool_wells(plate.x, plate.well_index, len(plate.wells))
        head = model.project(pooled)
    return pooled.float().cpu().numpy(), head.float().cpu().numpy()
