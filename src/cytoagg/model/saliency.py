"""Which cells a trained model listens to: two per-cell saliencies, computed from ALL cells of every well,
streamed in chunks (only one chunk's activations exist at a time, whatever a well's size).

For cell i of well w, with ``phi`` the per-cell layer (Linear + LeakyReLU) and ``P_w`` the well's pooled vector:

- **V0, contribution** (``contribution``): ``||phi(x_i)||_1 / sum_{j in w} ||phi(x_j)||_1``, the cell's share of
  the sum of its well's per-cell L1 norms; it sums to 1 over the well. For sum pooling it is the cell's share
  of what the pooled vector is made of (exactly the share of ``||P_w||_1`` where the activations are
  non-negative; LeakyReLU's small negative part makes that approximate). For mean pooling every ``phi`` is
  divided by the same n, so the share is the same number.
- **V1, gradient** (``gradient``): ``sum_f |dL_w / dx_if|``, with ``L_w`` the supervised contrastive loss
  (:func:`cytoagg.model.loss.supcon_anchor_losses`, at the model's training temperature) of well w's profile
  as the anchor against every other well of the plate that has cells (negative controls included), the wells
  of the same perturbation as its positives. The other wells' profiles are constants. A well with no other
  well of its perturbation on the plate has no loss: its cells get NaN.

V1 is exact without a graph over the well's cells: one backward pass through the head and the loss gives
``g_w = dL_w / dP_w`` for every well at once (with constant candidates, the gradient of the sum of the
anchors' terms with respect to ``P_w`` is that of ``L_w`` alone), and then, per chunk of cells,
``dL_w / dx_i = W^T (g_w * leaky_relu'(W x_i + b))`` (times 1/n for mean pooling, which ``g_w`` includes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .precision import autocast
from .loss import supcon_anchor_losses
from .network import CHUNK_CELLS, DeepSets

# A plate's cells, read again for each pass: an iterator of (first row, float32 features of the rows that follow)
ChunkSource = Callable[[], Iterable[tuple[int, np.ndarray]]]


@dataclass
class CellSaliency:
    """Per cell (in the order of the plate's rows; NaN for cells with non-finite features, which are in no profile)."""

    contribution: np.ndarray  # (n_cells,) float64: V0, sums to 1 within each well
    gradient: np.ndarray | None  # (n_cells,) float64: V1; None when not asked for
    has_loss: np.ndarray  # (n_wells,) bool: the well has a loss (a positive on the plate), so V1 is defined


def array_chunks(x: np.ndarray, chunk_cells: int = CHUNK_CELLS) -> ChunkSource:
    """The chunk source of cells already in memory (or memory-mapped)."""
    return lambda: ((s, np.asarray(x[s : s + chunk_cells], dtype=np.float32)) for s in range(0, len(x), chunk_cells))


def cell_saliency(
    network: DeepSets,
    chunks: ChunkSource,
    well_index: np.ndarray,
    labels: np.ndarray,
    temperature: float,
    gradient: bool = True,
    on_chunk: Callable[[int, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
    precision: str = "fp32",
) -> CellSaliency:
    """V0 (one pass over the cells) and, with ``gradient``, V1 (a second pass) of every cell of a plate.

    ``well_index``: (n_cells,) well of each cell, 0..n_wells-1; ``labels``: (n_wells,) perturbation of each
    well (any comparable values). ``on_chunk(first_row, x, l1, gradient)`` sees each chunk of the last pass:
    its cells' ``||phi(x_i)||_1`` (V0 times a constant per well, so the same correlations within a well) and
    V1 (None without ``gradient``): the per-well correlations need no pass of their own. ``precision``: the
    arithmetic of the per-cell network (``fp32`` | ``bf16``, resolved as :func:`cytoagg.model.precision.resolve_precision`).
    """
    device = next(network.parameters()).device
    well_index = np.asarray(well_index, dtype=np.int64)
    n_wells = len(labels)
    wells_t = torch.from_numpy(well_index).to(device)
    pooled = torch.zeros(n_wells, network.spec.cell_hidden, dtype=torch.float32, device=device)
    l1 = np.full(len(well_index), np.nan)
    last_pass = None if gradient else on_chunk
    with torch.no_grad():
        for start, x, rows, xt in _finite_chunks(chunks, device):
            with autocast(device, precision):
                h = network.cell_net(xt).float()
            pooled.index_add_(0, wells_t[rows], h)
            l1[rows] = torch.linalg.vector_norm(h, ord=1, dim=1).cpu().numpy()  # no |h| temporary
            if last_pass is not None:
                last_pass(start, x, l1[start : start + len(x)], None)
    cells = ~np.isnan(l1)
    counts = np.bincount(well_index[cells], minlength=n_wells)
    totals = np.bincount(well_index[cells], weights=l1[cells], minlength=n_wells)
    with np.errstate(invalid="ignore", divide="ignore"):
        contribution = l1 / totals[well_index]
    g, has_loss = well_gradients(network, pooled, counts, labels, temperature)
    if not gradient:
        return CellSaliency(contribution, None, has_loss)
    grad = np.full(len(well_index), np.nan)
    linear, act = network.cell_net
    no_loss = ~has_loss[well_index]
    with torch.no_grad():
        for start, x, rows, xt in _finite_chunks(chunks, device):
            with autocast(device, precision):
                a = linear(xt).float()
                # leaky_relu's derivative at the pre-activation, times the well's gradient of the pooled vector
                d = torch.ops.aten.leaky_relu_backward(g.index_select(0, wells_t[rows]), a, act.negative_slope, False)
                gx = d @ linear.weight
            grad[rows] = gx.float().abs().sum(dim=1).cpu().numpy()
            stop = start + len(x)
            grad[start:stop][no_loss[start:stop]] = np.nan
            if on_chunk is not None:
                on_chunk(start, x, l1[start:stop], grad[start:stop])
    return CellSaliency(contribution, grad, has_loss)


def well_gradients(
    network: DeepSets, pooled: torch.Tensor, counts: np.ndarray, labels: np.ndarray, temperature: float
) -> tuple[torch.Tensor, np.ndarray]:
    """``g_w = dL_w / dP_w`` for every well (``pooled``: the sums of its cells' ``phi``, before any mean), and
    which wells have a loss. Wells without cells are no one's candidate; wells without a loss get g = 0."""
    present = np.flatnonzero(counts > 0)
    codes = torch.as_tensor(np.unique(np.asarray(labels)[present], return_inverse=True)[1].reshape(-1), device=pooled.device)
    idx = torch.as_tensor(present, device=pooled.device)
    with torch.enable_grad():
        p = pooled.index_select(0, idx).detach().requires_grad_(True)
        if network.spec.pooling == "mean":
            p_in = p / torch.as_tensor(counts[present], dtype=p.dtype, device=p.device)[:, None]
        else:
            p_in = p
        losses = supcon_anchor_losses(network.project(p_in), codes, temperature, detach_candidates=True)
        defined = ~torch.isnan(losses)
        grad = torch.zeros_like(p)
        if bool(defined.any()):
            (grad,) = torch.autograd.grad(losses[defined].sum(), p)
    g = torch.zeros_like(pooled)
    g[idx] = grad.detach()
    has_loss = np.zeros(len(labels), dtype=bool)
    has_loss[present] = defined.cpu().numpy()
    return g, has_loss


def _finite_chunks(chunks: ChunkSource, device) -> Iterator[tuple[int, np.ndarray, np.ndarray, torch.Tensor]]:
    """(first row, the chunk, the plate rows of its finite cells, those cells on ``device``) for each chunk."""
    for start, x in chunks():
        finite = np.isfinite(x).all(axis=1)
        rows = start + np.flatnonzero(finite)
        xf = x if finite.all() else x[finite]
        yield start, x, rows, torch.from_numpy(np.ascontiguousarray(xf, dtype=np.float32)).to(device)
