"""Embedding speed (profiling every well from ALL its cells) in fp32 and bf16, against the matmul ceiling.

    python benchmarks/embed.py [--wells 384] [--cells-per-well 250] [--features 1000] [--hidden 2048]
                               [--precision fp32 bf16] [--threads 2] [--device auto] [--repeats 3]

Times ``cytoagg.model.inference.pooled_and_head`` (what the embed step runs: the per-cell layer over chunks of
16,384 cells, float32 sums per well, then the head) on a synthetic plate, once per precision
(``train.precision``: bf16 autocast, or float32). Achieved GFLOP/s counts 2 x cells x D x hidden FLOP (the
per-cell layer's forward). Each precision's ceiling is the same chunked products alone, ``chunk @ W`` in its
dtype on the same threads (fastest of the repeats, timed before and after). Run by hand, never by pytest.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from cytoagg.io.cells import PlateCells
from cytoagg.model.inference import pooled_and_head
from cytoagg.model.network import CHUNK_CELLS as CHUNK, DeepSets, ModelSpec, pick_device
from train import DTYPES, machine, rate, sync



def plate(n_wells: int, cells_per_well: int, n_features: int) -> PlateCells:
    rng = np.random.default_rng(0)
    wells = np.repeat([f"W{i:04d}" for i in range(n_wells)], cells_per_well)
    compounds = np.repeat([f"C{i:04d}" for i in range(n_wells // 4 + 1)], 4 * cells_per_well)[: len(wells)]
    x = rng.standard_normal((len(wells), n_features), dtype=np.float32)
    return PlateCells.from_cells("bench", x, wells, compounds)


def ceiling(x: np.ndarray, weight: torch.Tensor, dtype, device, repeats: int) -> float:
    """Seconds of the per-cell layer's products alone, chunk by chunk as the embedding runs them, in ``dtype``."""
    w = weight.detach().t().contiguous().to(dtype)
    chunks = [torch.from_numpy(x[i : i + CHUNK]).to(device).to(dtype) for i in range(0, len(x), CHUNK)]
    best = float("inf")
    for _ in range(repeats + 1):
        sync(device)
        t = time.perf_counter()
        for c in chunks:
            torch.mm(c, w)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wells", type=int, default=384)
    ap.add_argument("--cells-per-well", type=int, default=250)
    ap.add_argument("--features", type=int, default=1000)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--head-hidden", type=int, default=256)
    ap.add_argument("--out-dim", type=int, default=2048)
    ap.add_argument("--precision", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    cells = plate(args.wells, args.cells_per_well, args.features)
    n = len(cells.x)
    torch.manual_seed(0)
    model = DeepSets(ModelSpec.paper(args.features, args.hidden, args.head_hidden, args.out_dim)).to(device).eval()
    flop = 2 * n * args.features * args.hidden
    print(f"# cytoagg embedding, {platform.node()} ({torch.get_num_threads()} threads, {device}), torch {torch.__version__}")
    print(f"# {machine(device)}")
    print(f"# {args.wells} wells x {args.cells_per_well} cells = {n:,} cells, D = {args.features}, hidden {args.hidden}, "
          f"head {args.head_hidden} -> {args.out_dim}; fastest of {args.repeats} runs")
    print("| precision | seconds | cells/s | achieved | ceiling (chunked products alone) | embed / ceiling | speed | profiles: max abs. difference / max abs. value |")
    print("|---|---|---|---|---|---|---|---|")
    first = {}
    for precision in args.precision:
        dtype = DTYPES[precision]
        ceil = ceiling(cells.x, model.cell_net[0].weight, dtype, device, args.repeats)
        best, profiles = float("inf"), None
        for _ in range(args.repeats + 1):  # the first is a warm-up
            sync(device)
            t = time.perf_counter()
            _, profiles = pooled_and_head(model, cells, device, precision)
            sync(device)
            best = min(best, time.perf_counter() - t)
        ceil = min(ceil, ceiling(cells.x, model.cell_net[0].weight, dtype, device, args.repeats))
        if not first:
            first = {"precision": precision, "seconds": best, "profiles": profiles}
        ref = first["profiles"]
        diff = np.abs(profiles - ref).max() / np.abs(ref).max()
        vs = f"{first['seconds'] / best:.2f}x vs {first['precision']}"
        print(f"| {precision} | {best:.3f} | {n / best:,.0f} | {rate(flop, best, device)} | {rate(flop, ceil, device)} | "
              f"{ceil / best:.0%} | {vs} | {diff:.1e} |")


if __name__ == "__main__":
    main()
