"""Training step speed at the paper's settings, against the matmul ceiling on the same threads.

    python benchmarks/train.py [--features 1000] [--steps 5] [--threads 2] [--device auto]

One step = 72 sets (18 compounds x 4 views) of ``--cells`` cells (the paper: ~1500), per-cell
Linear(D -> 2048), sum pooling, head, SupCon loss, AdamW. Prints seconds per step split into
sampling (index draw + gather of the cells) / forward / backward / optimizer, cells/s, and the
achieved GFLOP/s counting 4 x cells x D x 2048 FLOP per step (forward + weight gradient of the
per-cell layer; the input needs no gradient), beside a plain torch matmul of the same shapes
(cells x D @ D x 2048, and its weight gradient) on the same threads: the ceiling.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from cytoagg.cells import PlateCells
from cytoagg.loss import supcon_loss
from cytoagg.model import DeepSets, ModelSpec, pick_device
from cytoagg.sampling import SetSampler


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def synthetic_plate(n_features: int, cells_per_well: int, seed: int = 0) -> PlateCells:
    rng = np.random.default_rng(seed)
    wells = [f"W{i:03d}" for i in range(384)]
    compounds = np.repeat([f"C{i:03d}" for i in range(96)], 4)
    x = rng.standard_normal((384 * cells_per_well, n_features), dtype=np.float32)
    return PlateCells.from_cells("bench", x, np.repeat(wells, cells_per_well), np.repeat(compounds, cells_per_well))


class _Limited:
    """A sampler whose epoch is ``n`` batches (the benchmark's steps)."""

    def __init__(self, sampler, n):
        self.sampler, self.n = sampler, n

    def batches(self, batch_size, rng):
        return (self.sampler.batches(batch_size, rng) * self.n)[: self.n]

    def sample(self, *a):
        return self.sampler.sample(*a)


def ceiling(n_cells: int, d: int, h: int, device, repeats: int = 3) -> float:
    """Seconds of the per-cell layer's two matmuls (forward, weight gradient) at the step's shape."""
    x = torch.randn(n_cells, d, device=device)
    w = torch.randn(d, h, device=device)
    g = torch.randn(n_cells, h, device=device)
    best = float("inf")
    for _ in range(repeats + 1):
        sync(device)
        t = time.perf_counter()
        _ = x @ w
        _ = x.T @ g
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=1000)
    ap.add_argument("--cells", type=int, default=1500, help="cells per set")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cells-per-well", type=int, default=1000)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = pick_device(args.device)
    plate = synthetic_plate(args.features, args.cells_per_well)
    sampler = SetSampler(plate, sorted(set(plate.perturbations)), n_views=4)
    model = DeepSets(ModelSpec(n_features=args.features)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    rng = np.random.default_rng(0)
    batches = sampler.batches(18, rng)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    times = {"sampling": [], "forward": [], "backward": [], "optimizer": []}
    for step in range(args.steps + 1):  # the first step warms up and is not counted
        sync(device)
        t0 = time.perf_counter()
        idx, labels = sampler.sample(batches[step % len(batches)], args.cells, rng)
        x = torch.from_numpy(plate.x[idx]).to(device)
        lab = torch.from_numpy(labels).to(device)
        sync(device)
        t1 = time.perf_counter()
        with autocast:
            loss = supcon_loss(model(x), lab)
        sync(device)
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync(device)
        t3 = time.perf_counter()
        opt.step()
        sync(device)
        t4 = time.perf_counter()
        if step:
            for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                times[k].append(v)

    # The training loop itself (cytoagg.train._run_epoch): the next batch is gathered in a worker thread
    # while the current step computes, so only the wait for it is exposed.
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from cytoagg.sampling import SetSizeSchedule
    from cytoagg.train import _run_epoch

    fixed = SetSizeSchedule(args.cells, 0.0, 2)
    loop = SimpleNamespace(batch_compounds=18)
    one_plate = [plate]
    with ThreadPoolExecutor(1) as pool:
        sync(device)
        t = time.perf_counter()
        losses, waited = _run_epoch(model, opt, supcon_loss, {}, one_plate, [_Limited(sampler, args.steps)], fixed, loop, rng, device, pool)
        sync(device)
        loop_step = (time.perf_counter() - t) / len(losses)
        loop_wait = waited / len(losses)

    n_cells = 72 * args.cells
    flop = 4 * n_cells * args.features * model.spec.cell_hidden
    step = sum(np.median(v) for v in times.values())
    compute = step - np.median(times["sampling"])
    ceil = ceiling(n_cells, args.features, model.spec.cell_hidden, device)
    print(f"# cytoagg training step, {platform.node()} ({torch.get_num_threads()} threads, {device}), torch {torch.__version__}")
    print(f"# 72 sets x {args.cells} cells = {n_cells} cells, D = {args.features}, hidden 2048; median of {args.steps} steps")
    print("| part | seconds per step | share |")
    print("|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {np.median(v):.3f} | {np.median(v) / step:.1%} |")
    print(f"| **step (phases timed one by one)** | **{step:.3f}** | 100% |")
    print(f"| step in the training loop (sampling prefetched by a thread) | {loop_step:.3f} | |")
    print(f"| ... of which waiting for the sampler | {loop_wait:.3f} | {loop_wait / loop_step:.1%} |")
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| cells/s (training loop) | {n_cells / loop_step:,.0f} |")
    print(f"| achieved GFLOP/s (training loop) | {flop / loop_step / 1e9:.1f} |")
    print(f"| achieved GFLOP/s (phases timed one by one) | {flop / step / 1e9:.1f} |")
    print(f"| achieved GFLOP/s (forward+backward+optimizer) | {flop / compute / 1e9:.1f} |")
    print(f"| ceiling: the two matmuls alone, GFLOP/s | {flop / ceil / 1e9:.1f} |")
    print(f"| training loop / ceiling | {ceil / loop_step:.0%} |")


if __name__ == "__main__":
    main()
