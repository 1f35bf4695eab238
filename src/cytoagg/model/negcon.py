"""What the second-order model takes from the training plates' negative-control cells (config ``train:``).

- ``init: pca_negcon``: the per-cell layer starts as the top principal axes of those cells (:func:`pca_negcon_init`);
- ``cell_hidden: auto``: the number of axes, from Horn's parallel analysis of those cells (:func:`parallel_analysis`);
- ``plate_norm: negcon_mad``: each training step normalizes its sets' pooled vectors against the pooled vectors of
  the plate's negative-control wells under the current model (:class:`NegconStats`);
- ``cell_lr`` / ``part_lr``: learning rates of the per-cell layer (0: frozen) and the head's parts
  (:func:`param_groups`).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..io.cells import PlateCells
from ..io.files import InputError
from .network import DeepSets

logger = logging.getLogger(__name__)


def _negcon_rows(plate: PlateCells, label: str) -> tuple[np.ndarray, np.ndarray]:
    """The plate's negative-control wells (labelled ``label``) and the rows of their cells."""
    wells = np.flatnonzero(plate.perturbations == label)
    rows = [np.arange(plate.offsets[w], plate.offsets[w + 1]) for w in wells]
    return wells, np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)


class NegconStats:
    """Each training plate's negative-control cells, held once, and their pooled statistics under the current model.

    Plate normalization (``train.plate_norm``) divides a set's pooled vector by statistics of the plate's
    negative-control wells; during training they are recomputed at every step from all those wells' cells
    (without gradient), so they follow the model as it learns.
    """

    def __init__(self, model: DeepSets, plates: list[PlateCells], label: str, device):
        self.model = model
        self.cells = []
        for p in plates:
            wells, rows = _negcon_rows(p, label)
            if len(wells) < 2:
                raise InputError(
                    f"plate {p.plate}: train.plate_norm needs at least 2 negative-control wells, found {len(wells)}"
                )
            x = torch.from_numpy(np.ascontiguousarray(p.x[rows], dtype=np.float32)).to(device)
            idx = torch.from_numpy(np.repeat(np.arange(len(wells)), p.counts[wells])).to(device)
            self.cells.append((x, idx, len(wells)))

    def __call__(self, k: int):
        """The statistics of training plate ``k`` under the model as it is now."""
        x, idx, n = self.cells[k]
        with torch.no_grad():
            return self.model.negcon_stats(self.model.pool_wells(x, idx, n))


def negcon_cell_sample(plates: list[PlateCells], label: str, max_cells: int, seed: int) -> np.ndarray:
    """float64 negative-control cells of the training plates; a seeded sample of about ``max_cells`` when there are more."""
    rows = [_negcon_rows(p, label)[1] for p in plates]
    total = sum(len(r) for r in rows)
    if total < 2:
        raise InputError("train.init 'pca_negcon' needs negative-control cells on the training plates (metadata.negcon_value)")
    rng = np.random.default_rng(seed)
    keep = min(1.0, max_cells / total)
    parts = [
        np.asarray(p.x[np.sort(rng.choice(r, max(1, int(np.ceil(len(r) * keep))), replace=False))], dtype=np.float64)
        for p, r in zip(plates, rows) if len(r)
    ]
    return np.concatenate(parts)


def parallel_analysis(x: np.ndarray, n_permutations: int = 5, quantile: float = 95.0, seed: int = 0) -> int:
    """Horn's parallel analysis: the number of leading eigenvalues of the features' correlation matrix that
    exceed the ``quantile`` of those of the same data with every column permuted independently (no correlation)."""
    sd = x.std(axis=0)
    z = (x[:, sd > 0] - x[:, sd > 0].mean(axis=0)) / sd[sd > 0]
    ev = np.sort(np.linalg.eigvalsh(np.cov(z, rowvar=False)))[::-1]
    rng = np.random.default_rng(seed)
    null = [
        np.sort(np.linalg.eigvalsh(np.cov(np.column_stack([rng.permutation(c) for c in z.T]), rowvar=False)))[::-1]
        for _ in range(n_permutations)
    ]
    above = ev > np.percentile(null, quantile, axis=0)
    return int(np.argmin(above)) if not above.all() else len(ev)


def pca_negcon_init(model: DeepSets, x: np.ndarray) -> None:
    """Set the per-cell layer to the top principal axes of the training plates' negative-control cells ``x``.

    Row j of the weight is the j-th axis (a fixed sign), the bias centers the cells on their mean, so at the
    start the layer projects each cell on the main directions of variation of untreated cells (rows beyond the
    number of features keep their random init).
    """
    mu = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mu, full_matrices=False)
    vt *= np.where(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]
    linear = model.cell_net[0]
    k = min(linear.weight.shape[0], len(vt))
    with torch.no_grad():
        linear.weight[:k] = torch.from_numpy(vt[:k]).to(linear.weight)
        linear.bias[:k] = torch.from_numpy(-(vt[:k] @ mu)).to(linear.bias)
    logger.info("per-cell layer initialized on the top %d principal axes of %d negative-control cells", k, len(x))


def param_groups(model: DeepSets, lr: float, cell_lr: float | None, part_lr: float | None) -> list[dict]:
    """AdamW parameter groups: the per-cell layer at ``cell_lr`` (None: ``lr``; 0: frozen, no gradient), the head's
    part weights and shrinkages at ``part_lr`` (None: ``lr``) without weight decay, everything else at ``lr``."""
    part_ids = {id(p) for p in model.part_parameters()}
    cell_params = list(model.cell_net.parameters())
    cell_ids = {id(p) for p in cell_params}
    if cell_lr == 0:
        for p in cell_params:
            p.requires_grad_(False)
    if cell_lr is None and not part_ids:  # one group, as before these options existed
        return [{"params": list(model.parameters())}]
    groups = [{"params": [p for p in model.parameters() if id(p) not in part_ids | cell_ids]}]
    if cell_lr != 0:
        groups.append({"params": cell_params, "lr": lr if cell_lr is None else cell_lr})
    if part_ids:
        groups.append({"params": model.part_parameters(), "lr": part_lr or lr, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]
