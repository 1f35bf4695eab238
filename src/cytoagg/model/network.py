"""CytoSummaryNet's Deep Sets model: per-cell MLP -> pooling over a well's cells -> MLP head."""

from __future__ import annotations

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
    pooling: str  # sum (the paper) | mean
    head: str  # paper: Linear-LeakyReLU-Linear-LeakyReLU | batchnorm: BN after each linear, L2-normalized out

    def to_dict(self) -> dict:
        return asdict(self)


class DeepSets(nn.Module):
    """``head(pool_i(cell_net(x_i)))``: invariant to the order of a well's cells by construction."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        if spec.pooling not in ("sum", "mean"):
            raise ValueError(f"train.pooling must be 'sum' or 'mean', got {spec.pooling!r}")
        if spec.head not in ("paper", "batchnorm"):
            raise ValueError(f"train.head must be 'paper' or 'batchnorm', got {spec.head!r}")
        self.spec = spec
        self.cell_net = nn.Sequential(nn.Linear(spec.n_features, spec.cell_hidden), nn.LeakyReLU(inplace=True))
        if spec.head == "paper":
            self.head = nn.Sequential(
                nn.Linear(spec.cell_hidden, spec.head_hidden),
                nn.LeakyReLU(),
                nn.Linear(spec.head_hidden, spec.out_dim),
                nn.LeakyReLU(),
            )
        else:
            self.head = nn.Sequential(
                nn.Linear(spec.cell_hidden, spec.head_hidden),
                nn.BatchNorm1d(spec.head_hidden),
                nn.LeakyReLU(),
                nn.Linear(spec.head_hidden, spec.out_dim),
                nn.BatchNorm1d(spec.out_dim),
            )

    def pool_sets(self, cells: torch.Tensor) -> torch.Tensor:
        """``cells``: (n_sets, n_cells, n_features), equal-size sets -> pooled (n_sets, cell_hidden).

        On CPU, training goes through :class:`SetPooledLayer` (the same values, a set at a time, so the
        elementwise work stays in cache); elsewhere through ``cell_net`` on the flattened cells.
        """
        n_sets, n_cells, n_features = cells.shape
        linear, act = self.cell_net
        if cells.device.type == "cpu" and torch.is_grad_enabled() and not cells.requires_grad:
            # autocast does not reach inside a custom Function: it is told the dtype to compute in
            bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
            compute = torch.bfloat16 if bf16 else cells.dtype
            pooled = SetPooledLayer.apply(cells, linear.weight, linear.bias, act.negative_slope, compute)
        else:  # flattened first: the in-place activation then acts on the matmul's own output, not a view of it
            h = self.cell_net(cells.reshape(-1, n_features)).view(n_sets, n_cells, -1)
            pooled = h.sum(dim=1, dtype=torch.float32) if h.dtype == torch.bfloat16 else h.sum(dim=1)  # sums in fp32
        return pooled if self.spec.pooling == "sum" else pooled / n_cells

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """The head, in float32 also under bf16 autocast: it is a sliver of the FLOPs, and the pooled sums it
        reads (large, with small differences between wells) would lose their last digits in bf16."""
        if pooled.dtype in (torch.bfloat16, torch.float16):
            pooled = pooled.float()
        with torch.autocast(pooled.device.type, enabled=False):
            z = self.head(pooled)
        return F.normalize(z, dim=-1) if self.spec.head == "batchnorm" else z

    def forward(self, cells: torch.Tensor) -> torch.Tensor:
        return self.project(self.pool_sets(cells))

    @torch.no_grad()
    def pool_wells(self, x, well_index, n_wells: int, chunk_cells: int = 16_384) -> torch.Tensor:
        """Pool ALL cells of every well (no sampling), streaming cells in chunks.

        ``x``: (n_cells, n_features), a tensor or a numpy array (a memory-mapped cell store too: only
        one chunk is copied at a time); ``well_index``: (n_cells,) well of each cell. Only one chunk's
        activations (chunk_cells x cell_hidden) exist at a time, whatever a well's size. The sums are
        float32 also under bf16 autocast (each chunk's activations are cast up before they are added).
        """
        device = next(self.parameters()).device
        well_index = torch.as_tensor(np.asarray(well_index), device=device)
        pooled = torch.zeros(n_wells, self.spec.cell_hidden, dtype=torch.float32, device=device)
        for start in range(0, x.shape[0], chunk_cells):
            chunk = x[start : start + chunk_cells]
            if isinstance(chunk, np.ndarray):
                chunk = torch.from_numpy(np.array(chunk, dtype=np.float32))
            h = self.cell_net(chunk.to(device)).float()
            pooled.index_add_(0, well_index[start : start + chunk_cells], h)
        if self.spec.pooling == "mean":
            counts = torch.bincount(well_index, minlength=n_wells).clamp(min=1).to(pooled)
            pooled = pooled / counts[:, None]
        return pooled


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
