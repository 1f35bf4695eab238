"""CytoSummaryNet's Deep Sets model: per-cell MLP -> pooling over a well's cells -> MLP head.

Beyond the paper (config ``train:``; the schema's defaults are the paper's model, ``config.yaml`` runs the
second-order one):

- ``pooling: meancov``: second-order pooling, the mean and the covariance (upper triangle with the diagonal)
  of the per-cell outputs over a set: the well's first and second moments in a learned k-dimensional space;
- ``cell_activation: none``: the per-cell layer is a linear projection (with ``meancov``: the moments of k
  learned directions of the cells);
- ``plate_norm: negcon_mad``: the pooled vector is normalized against the plate's negative-control wells,
  (pooled - median) / (1.4826 MAD) over them (statistics taken from the wells of the plate being profiled,
  without gradient), as pycytominer's mad_robustize of well profiles against negative controls;
- ``head: parts``: after ``plate_norm``, each part of the pooled vector (the mean, and the rest: the
  covariance) is scaled by a learned weight and shrunk by its size relative to the negative controls:
  ``w_j * v_j * max(floor, 1 - tau_j * null_j / |v_j|)``, with ``null_j`` the median norm of part j over
  the plate's negative-control wells and ``w_j``, ``tau_j`` learned.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


@dataclass(frozen=True)
class ModelSpec:
    """The network's shape (from config ``train:``; stored in the checkpoint to rebuild the network)."""

    n_features: int
    cell_hidden: int
    head_hidden: int
    out_dim: int
    pooling: str  # sum (the paper) | mean | meancov (mean + covariance of the per-cell outputs)
    head: str  # paper: Linear-LeakyReLU-Linear-LeakyReLU | batchnorm: BN after each linear, L2-normalized out
    #            | parts: per-part learned weight and shrinkage (needs plate_norm)
    cell_activation: str  # leaky_relu (the paper) | none (a linear projection of the cells)
    plate_norm: str  # none | negcon_mad: pooled vectors normalized against the plate's negative controls
    part_weight: float  # head parts: initial weight of the mean part (other parts: 1)
    part_tau: float  # head parts: initial shrinkage

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def paper(cls, n_features: int, cell_hidden: int = 2048, head_hidden: int = 256, out_dim: int = 2048) -> ModelSpec:
        """CytoSummaryNet's network (van Dijk et al. 2024): Linear-LeakyReLU per cell, sum pooling, its MLP head
        (for benchmarks and checks; the workflow's model comes from config ``train:``)."""
        return cls(n_features, cell_hidden, head_hidden, out_dim, pooling="sum", head="paper",
                   cell_activation="leaky_relu", plate_norm="none", part_weight=1.0, part_tau=0.0)


CHUNK_CELLS = 16_384  # cells per chunk when a plate's cells stream through the per-cell network (pool_wells, embed, saliency)
PART_FLOOR = 0.05  # head parts: the shrinkage factor never goes below this (no all-zero profiles, no ties)


class DeepSets(nn.Module):
    """``head(pool_i(cell_net(x_i)))``: invariant to the order of a well's cells by construction."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        if spec.pooling not in ("sum", "mean", "meancov"):
            raise ValueError(f"train.pooling must be 'sum', 'mean' or 'meancov', got {spec.pooling!r}")
        if spec.head not in ("paper", "batchnorm", "parts"):
            raise ValueError(f"train.head must be 'paper', 'batchnorm' or 'parts', got {spec.head!r}")
        if spec.cell_activation not in ("leaky_relu", "none"):
            raise ValueError(f"train.cell_activation must be 'leaky_relu' or 'none', got {spec.cell_activation!r}")
        if spec.plate_norm not in ("none", "negcon_mad"):
            raise ValueError(f"train.plate_norm must be 'none' or 'negcon_mad', got {spec.plate_norm!r}")
        if spec.head == "parts" and spec.plate_norm == "none":
            raise ValueError("train.head 'parts' needs train.plate_norm 'negcon_mad' (its shrinkage is relative to the negative controls)")
        if spec.plate_norm != "none" and spec.pooling == "sum":
            raise ValueError("train.plate_norm needs a pooling that does not grow with the number of cells ('mean' or 'meancov')")
        self.spec = spec
        k = spec.cell_hidden
        linear = nn.Linear(spec.n_features, k)
        self.cell_net = nn.Sequential(linear, nn.LeakyReLU(inplace=True)) if spec.cell_activation == "leaky_relu" else nn.Sequential(linear)
        self.pooled_dim = k + k * (k + 1) // 2 if spec.pooling == "meancov" else k
        # parts of the pooled vector: [start, stop) of the mean, then of the covariance (head: parts)
        self.parts = [(0, k), (k, self.pooled_dim)] if spec.pooling == "meancov" else [(0, k)]
        if spec.pooling == "meancov":
            self.register_buffer("triu", torch.triu_indices(k, k), persistent=False)
        if spec.head == "paper":
            self.head = nn.Sequential(
                nn.Linear(self.pooled_dim, spec.head_hidden),
                nn.LeakyReLU(),
                nn.Linear(spec.head_hidden, spec.out_dim),
                nn.LeakyReLU(),
            )
        elif spec.head == "batchnorm":
            self.head = nn.Sequential(
                nn.Linear(self.pooled_dim, spec.head_hidden),
                nn.BatchNorm1d(spec.head_hidden),
                nn.LeakyReLU(),
                nn.Linear(spec.head_hidden, spec.out_dim),
                nn.BatchNorm1d(spec.out_dim),
            )
        else:
            self.head = nn.Identity()
            w0 = torch.zeros(len(self.parts))
            w0[0] = math.log(spec.part_weight)
            self.part_log_weight = nn.Parameter(w0)
            self.part_tau = nn.Parameter(torch.full((len(self.parts),), float(spec.part_tau)))

    @property
    def needs_negcon(self) -> bool:
        """Profiling a plate needs its negative-control wells (their statistics normalize the pooled vectors)."""
        return self.spec.plate_norm != "none"

    def part_parameters(self) -> list:
        return [self.part_log_weight, self.part_tau] if self.spec.head == "parts" else []

    def pool_sets(self, cells: torch.Tensor) -> torch.Tensor:
        """``cells``: (n_sets, n_cells, n_features), equal-size sets -> pooled (n_sets, cell_hidden).

        On CPU, training goes through :class:`SetPooledLayer` (the same values, a set at a time, so the
        elementwise work stays in cache); elsewhere through ``cell_net`` on the flattened cells.
        """
        n_sets, n_cells, n_features = cells.shape
        if self.spec.pooling == "meancov":
            # float32 moments, centered first, also under bf16 autocast (a covariance loses its precision there)
            with torch.autocast(device_type=cells.device.type, enabled=False):
                h = self.cell_net(cells.reshape(-1, n_features).float()).view(n_sets, n_cells, -1)
                mean = h.mean(dim=1)
                centered = h - mean[:, None, :]
                cov = torch.einsum("snk,snl->skl", centered, centered) / n_cells
            return torch.cat([mean, cov[:, self.triu[0], self.triu[1]]], dim=1)
        linear = self.cell_net[0]
        if (
            cells.device.type == "cpu" and torch.is_grad_enabled() and not cells.requires_grad
            and self.spec.cell_activation == "leaky_relu"
        ):
            # autocast does not reach inside a custom Function: it is told the dtype to compute in
            bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
            compute = torch.bfloat16 if bf16 else cells.dtype
            pooled = SetPooledLayer.apply(cells, linear.weight, linear.bias, self.cell_net[1].negative_slope, compute)
        else:  # flattened first: the in-place activation then acts on the matmul's own output, not a view of it
            h = self.cell_net(cells.reshape(-1, n_features)).view(n_sets, n_cells, -1)
            pooled = h.sum(dim=1, dtype=torch.float32) if h.dtype == torch.bfloat16 else h.sum(dim=1)  # sums in fp32
        return pooled if self.spec.pooling == "sum" else pooled / n_cells

    def _mean_cov(self, mean: torch.Tensor, second_triu: torch.Tensor) -> torch.Tensor:
        """[mean, upper triangle of E[h h^T] - mean mean^T] (population covariance)."""
        return torch.cat([mean, second_triu - mean[:, self.triu[0]] * mean[:, self.triu[1]]], dim=1)

    def negcon_stats(self, pooled_negcon: torch.Tensor) -> tuple | None:
        """Plate statistics of the pooled vectors of its negative-control wells: (median, scale, part null norms).

        None when the model has no plate normalization. scale = 1.4826 MAD, floored at 1e-3 of its mean so that
        a feature constant on the controls does not blow up.
        """
        if self.spec.plate_norm == "none":
            return None
        if len(pooled_negcon) < 2:
            raise ValueError(f"plate normalization needs at least 2 negative-control wells, got {len(pooled_negcon)}")
        p = pooled_negcon.detach().double()
        center = p.median(dim=0).values
        scale = 1.4826 * (p - center).abs().median(dim=0).values
        scale = scale + 1e-3 * scale.mean() + 1e-12
        z = (p - center) / scale
        null = torch.stack([z[:, a:b].norm(dim=1).median() for a, b in self.parts])
        return center.float(), scale.float(), null.float()

    def project(self, pooled: torch.Tensor, stats: tuple | None = None) -> torch.Tensor:
        """The profile from pooled vectors; ``stats``: :meth:`negcon_stats` of the plate (models with plate_norm).
        In float32 also under bf16 autocast: it is a sliver of the FLOPs, and the pooled sums it reads (large, with
        small differences between wells) would lose their last digits in bf16."""
        if pooled.dtype in (torch.bfloat16, torch.float16):
            pooled = pooled.float()
        with torch.autocast(pooled.device.type, enabled=False):
            if self.spec.plate_norm != "none":
                if stats is None:
                    raise ValueError("this model normalizes against the plate's negative controls: pass negcon_stats")
                center, scale, null = (t.to(pooled.device) for t in stats)
                pooled = (pooled - center) / scale
                if self.spec.head == "parts":
                    out = []
                    for j, (a, b) in enumerate(self.parts):
                        v = pooled[:, a:b]
                        size = v.norm(dim=1, keepdim=True).clamp(min=1e-12)
                        shrink = (1 - self.part_tau[j] * null[j] / size).clamp(min=PART_FLOOR)
                        out.append(torch.exp(self.part_log_weight[j]) * v * shrink)
                    return torch.cat(out, dim=1)
            z = self.head(pooled)
        return F.normalize(z, dim=-1) if self.spec.head == "batchnorm" else z

    def forward(self, cells: torch.Tensor, stats: tuple | None = None) -> torch.Tensor:
        return self.project(self.pool_sets(cells), stats)

    @torch.no_grad()
    def pool_wells(self, x, well_index, n_wells: int, chunk_cells: int = CHUNK_CELLS) -> torch.Tensor:
        """Pool ALL cells of every well (no sampling), streaming cells in chunks.

        ``x``: (n_cells, n_features), a tensor or a numpy array (a memory-mapped cell store too: only
        one chunk is copied at a time); ``well_index``: (n_cells,) well of each cell. Only one chunk's
        activations (chunk_cells x cell_hidden) exist at a time, whatever a well's size. The sums are
        float32 also under bf16 autocast (each chunk's activations are cast up before they are added).
        """
        pool = WellPool(self, n_wells)
        if not isinstance(well_index, torch.Tensor):
            well_index = np.asarray(well_index)
        for start in range(0, x.shape[0], chunk_cells):
            pool.add(x[start : start + chunk_cells], well_index[start : start + chunk_cells])
        return pool.result()


class WellPool:
    """A network's pooled vectors of every well of a plate, from chunks of cells added in any order.

    What lets a step read a plate's cells once, a chunk at a time, for several networks (embed profiles the
    model and its untrained control in one pass): memory holds one chunk's activations and the per-well sums.
    Call :meth:`add` under the arithmetic wanted (``torch.no_grad``, bf16 autocast or not).
    """

    def __init__(self, model: DeepSets, n_wells: int):
        self.model = model
        self.device = next(model.parameters()).device
        k = model.spec.cell_hidden
        self.meancov = model.spec.pooling == "meancov"
        # meancov: float64 sums of h and h h^T (a covariance from raw moments needs the precision)
        self.dtype = torch.float64 if self.meancov else torch.float32
        self.sums = torch.zeros(n_wells, k, dtype=self.dtype, device=self.device)
        self.second = torch.zeros(n_wells, k * (k + 1) // 2, dtype=self.dtype, device=self.device) if self.meancov else None
        self.counts = torch.zeros(n_wells, dtype=torch.float64, device=self.device)

    @torch.no_grad()
    def add(self, chunk, well_index) -> None:
        """``chunk``: (n, n_features) cells (tensor or numpy array); ``well_index``: (n,) the well of each."""
        if isinstance(chunk, np.ndarray):
            chunk = torch.from_numpy(np.array(chunk, dtype=np.float32))
        rows = well_index if isinstance(well_index, torch.Tensor) else torch.from_numpy(np.asarray(well_index))
        rows = rows.to(self.device, torch.int64)
        model, device = self.model, self.device
        # meancov: float32 projections also under bf16 autocast, as in training (pool_sets)
        with torch.autocast(device.type, enabled=not self.meancov and torch.is_autocast_enabled(device.type)):
            h = model.cell_net(chunk.to(device)).to(self.dtype)
        self.sums.index_add_(0, rows, h)
        if self.meancov:
            self._add_second_moments(h, rows)
        self.counts.index_add_(0, rows, torch.ones(len(rows), dtype=torch.float64, device=device))

    def _add_second_moments(self, h: torch.Tensor, rows: torch.Tensor) -> None:
        """Each well's sum of h h^T (upper triangle), one (n_w x k)^T (n_w x k) product per well of the chunk: the
        products of every pair of columns, gathered per cell, would be (n x k(k+1)/2) and many times slower."""
        if len(rows) and bool((rows[1:] < rows[:-1]).any()):
            order = torch.argsort(rows, stable=True)
            h, rows = h[order], rows[order]
        wells, counts = torch.unique_consecutive(rows, return_counts=True)
        triu = self.model.triu
        for w, part in zip(wells.tolist(), torch.split(h, counts.tolist())):
            self.second[w] += (part.T @ part)[triu[0], triu[1]]

    def result(self) -> torch.Tensor:
        """(n_wells, pooled_dim) float32: the sum, mean or [mean, covariance] of each well's cells' outputs."""
        pooled = self.sums
        if self.model.spec.pooling != "sum":
            counts = self.counts.clamp(min=1).to(pooled)
            pooled = pooled / counts[:, None]
            if self.meancov:
                pooled = self.model._mean_cov(pooled, self.second / counts[:, None])
        return pooled.float()


class SetPooledLayer(torch.autograd.Function):
    """``sum_i leaky_relu(x_i W^T + b)`` over each set's cells, for (n_sets, n_cells, n_features) input.

    The per-cell layer is most of a training step's FLOPs; this computes it with no overhead beyond
    its two matmuls (forward; weight gradient). One set at a time: its (n_cells x hidden) activations
    (about 12 MB at 1,500 cells) stay in cache for the activation, the pooling and, in the backward pass,
    the activation's gradient; the gradient of the sum is one row per set, broadcast, never a full
    tensor. The input gets no gradient (cells are data). Same values as the plain layers (tested).

    ``compute``: the dtype of the matmuls and activations (``x.dtype``, or bfloat16 under bf16 autocast,
    which does not reach inside a custom Function). In bfloat16 each set's cells and the weights are cast
    to bf16, the activations are kept in bf16, and the pooled sums, the weight and bias gradients (summed
    over the sets) stay in float32.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, slope, compute=None):
        compute = compute or x.dtype
        n_sets, n_cells, _ = x.shape
        with torch.autocast(x.device.type, enabled=False):
            cast = compute != x.dtype
            h = x.new_empty(n_sets, n_cells, weight.shape[0], dtype=compute)
            pooled = x.new_empty(n_sets, weight.shape[0], dtype=torch.float32 if cast else x.dtype)
            wt, b = weight.t().to(compute), bias.to(compute)
            xs = x.new_empty(n_cells, x.shape[2], dtype=compute) if cast else None
            for s in range(n_sets):
                xi = xs.copy_(x[s]) if cast else x[s]
                torch.addmm(b, xi, wt, out=h[s])
                F.leaky_relu_(h[s], slope)
                if cast:
                    torch.sum(h[s], dim=0, dtype=pooled.dtype, out=pooled[s])
                else:
                    torch.sum(h[s], dim=0, out=pooled[s])
        ctx.save_for_backward(x, h)
        ctx.slope = slope
        return pooled

    @staticmethod
    def backward(ctx, grad):
        x, h = ctx.saved_tensors
        compute = h.dtype
        cast = compute != x.dtype
        with torch.autocast(x.device.type, enabled=False):
            grad_w = grad.new_zeros(h.shape[2], x.shape[2], dtype=torch.float32 if cast else x.dtype)
            grad_b = grad.new_zeros(h.shape[2], dtype=grad_w.dtype)
            xs = x.new_empty(x.shape[1], x.shape[2], dtype=compute) if cast else None
            grad = grad.to(compute)
            for s in range(x.shape[0]):
                # leaky_relu's gradient from its output: the output has the sign of the input
                g = torch.ops.aten.leaky_relu_backward(grad[s].expand_as(h[s]), h[s], ctx.slope, False)
                if cast:
                    grad_w += torch.mm(g.t(), xs.copy_(x[s]))  # a bf16 product per set, summed in float32
                    grad_b += g.sum(dim=0, dtype=torch.float32)
                else:
                    grad_w.addmm_(g.t(), x[s])
                    grad_b += g.sum(dim=0)
        return None, grad_w, grad_b, None, None


def pick_device(setting: str = "auto") -> torch.device:
    """``auto``: CUDA when present, CPU otherwise. Asking for ``cuda`` without a GPU is an error, not a silent fallback."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    return torch.device(setting)
