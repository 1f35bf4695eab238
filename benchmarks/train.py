"""Training step speed at the paper's settings, against the matmul ceiling on the same threads.

    python benchmarks/train.py [--features 1000] [--steps 5] [--threads 2] [--device auto] [--demo results]
    python benchmarks/train.py --precision fp32 bf16 [--cells 100 --features 48 --hidden 512 --out-dim 256]

One step = 72 sets (18 compounds x 4 views) of ``--cells`` cells (the paper: ~1500), per-cell
Linear(D -> 2048), sum pooling, head, SupCon loss, AdamW. Prints seconds per step split into
sampling (index draw + gather of the cells) / forward / backward / optimizer, cells/s, and the
achieved GFLOP/s counting 4 x cells x D x 2048 FLOP per step (forward + weight gradient of the
per-cell layer; the input needs no gradient), beside a plain torch matmul of the same shapes
(cells x D @ D x 2048, and its weight gradient) on the same threads: the ceiling, timed before and
after the steps (the fastest run counts, so a slow moment of the machine cannot flatter the ratio).
``--demo``: also the epoch times of a finished default demo run (its ``model/training_log.csv`` and
the ``train`` rule's benchmark file).

``--precision fp32 bf16``: each precision in turn (``train.precision``: bf16 autocast, float32 sums and
gradients), each against its own ceiling, the same two matmuls in that dtype; then one line per precision.
The paper-style reference loop runs in fp32 only. ``--hidden``/``--head-hidden``/``--out-dim``/``--cells``/
``--features`` give other shapes (the old demo's: 100 cells, D = 48, 512, 256, 256).

``--model second_order``: the shipped default instead (``config.yaml``'s ``train:``): each cell projected on
``--hidden`` = k axes (a linear layer kept as initialized, ``cell_lr: 0``, so it gets no gradient), the mean and
covariance of the projections pooled per set, normalized against the plate's negative-control wells (their pooled
statistics recomputed from all their cells at every step, as training does: part of "forward"), the per-part head.
Its FLOP count is the projection's forward, 2 x cells x D x k, plus the covariance, 2 x cells x k(k+1)/2; its
ceiling is that projection's matmul alone. The plate then has 32 negative-control wells (8 of the 96 compounds).
"""

from __future__ import annotations

import argparse
from pathlib import Path
import platform
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from cytoagg.io.cells import PlateCells
from cytoagg.model.loss import supcon_loss
from cytoagg.model.negcon import NegconStats, param_groups
from cytoagg.model.network import DeepSets, ModelSpec, pick_device
from cytoagg.model.precision import BF16_FLAGS, autocast, cpu_flags
from cytoagg.model.sampler import BatchGatherer, SetSampler, cells_tensor

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def machine(device) -> str:
    """The processor (and GPU) the numbers come from: CPU model, its bf16 flags, the GPU's name."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    bf16 = "unknown" if flags is None else ", ".join(f for f in BF16_FLAGS if f in flags) or "none"
    text = f"CPU {name} (bf16 flags: {bf16})"
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def rate(flop: float, seconds: float, device) -> str:
    """FLOP/s in the unit of the device: GFLOP/s on a CPU, TFLOP/s on a GPU."""
    return f"{flop / seconds / 1e12:.1f} TFLOP/s" if device.type == "cuda" else f"{flop / seconds / 1e9:.1f} GFLOP/s"


def synthetic_plate(n_features: int, cells_per_well: int, seed: int = 0, negcon: bool = False) -> PlateCells:
    """384 wells of random cells, 96 compounds x 4 wells; ``negcon``: the last 8 compounds' 32 wells are negative
    controls (training's label for them)."""
    from cytoagg.model.train import NEGCON

    rng = np.random.default_rng(seed)
    wells = [f"W{i:03d}" for i in range(384)]
    compounds = np.repeat([f"C{i:03d}" if i < 88 or not negcon else NEGCON for i in range(96)], 4)
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


def ceiling(n_cells: int, d: int, h: int, device, repeats: int = 3, dtype=torch.float32, weight_grad: bool = True) -> float:
    """Seconds of the per-cell layer's two matmuls (forward, weight gradient; ``weight_grad=False``: the forward
    alone) at the step's shape, in ``dtype``."""
    x = torch.randn(n_cells, d, device=device).to(dtype)
    w = torch.randn(d, h, device=device).to(dtype)
    g = torch.randn(n_cells, h, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        sync(device)
        t = time.perf_counter()
        _ = x @ w
        if weight_grad:
            _ = x.T @ g
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def time_phases(model, opt, next_batch, forward, batches, steps, device, precision="fp32") -> dict[str, list[float]]:
    """Seconds of each phase of ``steps`` training steps, timed one by one (a first, warm-up step is not counted)."""
    times = {"sampling": [], "forward": [], "backward": [], "optimizer": []}
    for step in range(steps + 1):
        sync(device)
        t0 = time.perf_counter()
        x, labels = next_batch(batches[step % len(batches)])
        x, lab = x.to(device), torch.from_numpy(labels).to(device)
        sync(device)
        t1 = time.perf_counter()
        with autocast(device, precision):
            emb = forward(x)
        loss = supcon_loss(emb.float(), lab)
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
    return times


class PlainLayers(torch.nn.Module):
    """The same model through plain PyTorch layers (``Linear`` on the 3-d batch, ``LeakyReLU``, ``sum``), as the paper's code runs it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        linear, act = self.model.cell_net
        return self.model.project(torch.nn.functional.leaky_relu(linear(x), act.negative_slope).sum(dim=1))


def paper_style_loader(plate, sampler, batches, n_cells, tmp: Path, rng):
    """The paper's data path, for comparison: one pickled DataFrame per well, read when a set needs it,
    cells drawn with replacement by pandas, sets stacked into a tensor. The same sampling design as
    cytoagg's (1 or 2 wells per set, n_cells // n_wells cells from each); only the wells of the
    measured batches are written."""
    columns = [f"Cells_f{j}" for j in range(plate.x.shape[1])]
    wanted = {w for b in batches for c in b for w in sampler.table[c, : sampler.n_wells[c]]}
    for w in wanted:
        a, b = plate.offsets[w], plate.offsets[w + 1]
        pd.DataFrame(plate.x[a:b], columns=columns).to_pickle(tmp / f"{w}.pkl")

    def next_batch(compounds):
        sets, labels = [], []
        for c in compounds:
            wells = sampler.table[c, : sampler.n_wells[c]]
            for _ in range(sampler.n_views):
                n_use = min(int(rng.integers(1, 3)), len(wells))
                parts = [
                    pd.read_pickle(tmp / f"{w}.pkl").sample(n_cells // n_use, replace=True, random_state=int(rng.integers(2**31))).to_numpy()
                    for w in rng.choice(wells, n_use, replace=False)
                ]
                sets.append(np.concatenate(parts))
                labels.append(c)
        return torch.tensor(np.stack(sets)), np.asarray(labels)

    return next_batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["paper", "second_order"], default="paper",
                    help="the paper's network, or the shipped default (config.yaml's second-order model)")
    ap.add_argument("--features", type=int, default=1000)
    ap.add_argument("--cells", type=int, default=1500, help="cells per set")
    ap.add_argument("--hidden", type=int, default=2048, help="cell_hidden (the paper: 2048); k axes with --model second_order")
    ap.add_argument("--head-hidden", type=int, default=256)
    ap.add_argument("--out-dim", type=int, default=2048, help="the paper: 2048; the demo: 256")
    ap.add_argument("--precision", nargs="+", choices=sorted(DTYPES), default=["fp32"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cells-per-well", type=int, default=1000)
    ap.add_argument("--demo", default=None, help="results folder of a finished default demo run")
    ap.add_argument("--reference-steps", type=int, default=3, help="steps of the paper-style loop (0: skip it)")
    ap.add_argument("--tmp", default=None, help="folder for the paper-style loop's per-well pickles")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if args.model == "second_order" and args.reference_steps:
        args.reference_steps = 0  # the paper-style reference loop is the paper's network
    plate = synthetic_plate(args.features, args.cells_per_well, negcon=args.model == "second_order")
    n_cells = 72 * args.cells
    print(f"# cytoagg training step, {platform.node()} ({torch.get_num_threads()} threads, {device}), torch {torch.__version__}")
    print(f"# {machine(device)}")
    shape = (f"second-order model, k = {args.hidden} axes" if args.model == "second_order"
             else f"the paper's model, hidden {args.hidden}, head {args.head_hidden} -> {args.out_dim}")
    print(f"# 72 sets x {args.cells} cells = {n_cells} cells, D = {args.features}, {shape}; median of {args.steps} steps")
    results = {}
    for precision in args.precision:
        print(f"\n## {precision}\n")
        results[precision] = bench(args, precision, plate, device)
    print()
    print(f"# each precision against its own ceiling (the ceiling's matmuls in its dtype), {args.threads} threads, {device}")
    print("| precision | seconds per step (training loop) | cells/s | achieved | ceiling | loop / ceiling | sampling share | speed vs fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for precision, r in results.items():
        vs = f"{results['fp32']['loop_step'] / r['loop_step']:.2f}x" if "fp32" in results else ""
        print(f"| {precision} | {r['loop_step']:.3f} | {n_cells / r['loop_step']:,.0f} | {rate(r['flop'], r['loop_step'], device)} | "
              f"{rate(r['flop'], r['ceiling'], device)} | {r['ceiling'] / r['loop_step']:.0%} | {r['sampling_share']:.1%} | {vs} |")
    if args.demo:
        demo_epochs(Path(args.demo))


def bench(args, precision: str, plate, device) -> dict:
    """One precision: the phases timed one by one, the training loop itself, the ceiling; prints its tables."""
    from cytoagg.model.train import NEGCON

    torch.manual_seed(0)
    second_order = args.model == "second_order"
    sampler = SetSampler(plate, sorted(set(plate.perturbations) - {NEGCON}), n_views=4)
    if second_order:
        spec = ModelSpec(args.features, args.hidden, args.head_hidden, args.out_dim, pooling="meancov", head="parts",
                         cell_activation="none", plate_norm="negcon_mad", part_weight=1.0, part_tau=0.0)
        model = DeepSets(spec).to(device)
        opt = torch.optim.AdamW(param_groups(model, 1e-3, cell_lr=0.0, part_lr=0.03), lr=1e-3)
        negcon_stats = NegconStats(model, [plate], NEGCON, device)

        def forward(x):
            return model(x, negcon_stats(0))
    else:
        model = DeepSets(ModelSpec.paper(args.features, args.hidden, args.head_hidden, args.out_dim)).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
        negcon_stats, forward = None, model
    rng = np.random.default_rng(0)
    batches = sampler.batches(18, rng)
    dtype = DTYPES[precision]

    gatherer = BatchGatherer(pin=device.type == "cuda")

    cells = cells_tensor(plate.x)

    def cytoagg_batch(compounds):
        idx, labels = sampler.sample(compounds, args.cells, rng)
        _, buffer = gatherer.next_buffer(idx.size * args.features)
        return BatchGatherer.gather(cells, idx, buffer), labels

    ceil_before = ceiling(72 * args.cells, args.features, model.spec.cell_hidden, device, dtype=dtype,
                          weight_grad=not second_order)
    times = time_phases(model, opt, cytoagg_batch, forward, batches, args.steps, device, precision)
    reference = None
    if args.reference_steps and precision == "fp32":
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            paper_batch = paper_style_loader(plate, sampler, batches[: args.reference_steps + 1], args.cells, Path(tmp), rng)
            reference = time_phases(model, opt, paper_batch, PlainLayers(model), batches, args.reference_steps, device)

    # The training loop itself (cytoagg.model.train._run_epoch): the next batch is gathered in a worker thread
    # while the current step computes, so only the wait for it is exposed.
    from concurrent.futures import ThreadPoolExecutor

    from cytoagg.model.sampler import SetSizeSchedule
    from cytoagg.model.train import _run_epoch, resident_cells

    fixed = SetSizeSchedule(args.cells, 0.0, 2)
    loop = SimpleNamespace(batch_compounds=18)
    one_plate = [plate]
    with ThreadPoolExecutor(1) as pool:
        sync(device)
        t = time.perf_counter()
        resident = resident_cells(one_plate, device)  # on CUDA: cells held on the GPU, gathered there
        losses, waited = _run_epoch(
            model, opt, supcon_loss, {}, one_plate, [_Limited(sampler, args.steps)], fixed, loop, rng, device, pool, resident,
            None, negcon_stats, precision=precision,
        )
        sync(device)
        loop_step = (time.perf_counter() - t) / len(losses)
        loop_wait = waited / len(losses)
    del resident

    n_cells = 72 * args.cells
    k = model.spec.cell_hidden
    flop = (2 * n_cells * args.features * k + n_cells * k * (k + 1)) if second_order else 4 * n_cells * args.features * k
    step = sum(np.median(v) for v in times.values())
    compute = step - np.median(times["sampling"])
    ceil = min(ceil_before, ceiling(n_cells, args.features, k, device, dtype=dtype, weight_grad=not second_order))
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
    print(f"| achieved (training loop) | {rate(flop, loop_step, device)} |")
    print(f"| achieved (phases timed one by one) | {rate(flop, step, device)} |")
    print(f"| achieved (forward+backward+optimizer) | {rate(flop, compute, device)} |")
    what = "the projection's matmul alone" if second_order else "the two matmuls alone"
    print(f"| ceiling: {what} in {precision} | {rate(flop, ceil, device)} |")
    print(f"| training loop / ceiling | {ceil / loop_step:.0%} |")
    if reference:
        ref_step = sum(np.median(v) for v in reference.values())
        print()
        print(f"# the paper's data path and plain layers (per-well pickles, pandas sampling), same run; median of {args.reference_steps} steps")
        print("| part | paper-style loop (s) | cytoagg (s) | paper-style / cytoagg |")
        print("|---|---|---|---|")
        for k in times:
            r, c = np.median(reference[k]), np.median(times[k])
            print(f"| {k} | {r:.3f} ({r / ref_step:.1%}) | {c:.3f} | {r / c:.1f}x |")
        print(f"| **step** | **{ref_step:.3f}** | **{loop_step:.3f}** (training loop) | **{ref_step / loop_step:.2f}x** |")
        print(f"| achieved, share of the ceiling | {rate(flop, ref_step, device)}, {ceil / ref_step:.0%} | {rate(flop, loop_step, device)}, {ceil / loop_step:.0%} | |")
    return {"loop_step": loop_step, "flop": flop, "ceiling": ceil, "sampling_share": np.median(times["sampling"]) / step}


def demo_epochs(results: Path) -> None:
    """Epoch times of the default demo's training (as it ran in the workflow)."""
    log = pd.read_csv(results / "model" / "training_log.csv")
    rule = pd.read_csv(results / "benchmarks" / "train.tsv", sep="\t")
    evaluated = log["val_mAP"].notna() if "val_mAP" in log else np.zeros(len(log), bool)
    print()
    print(f"# default demo ({results}): {len(log)} epochs of {int(log['n_steps'].iloc[0])} steps")
    print("| measure | value |")
    print("|---|---|")
    print(f"| seconds per epoch, median (no evaluation) | {log.loc[~evaluated, 'seconds'].median():.2f} |")
    if evaluated.any():
        print(f"| seconds per epoch, median (with the validation mAP) | {log.loc[evaluated, 'seconds'].median():.2f} |")
    print(f"| sampler wait per epoch, median (s) | {log['sampling_wait_s'].median():.3f} |")
    print(f"| `train` rule wall time, all epochs (s) | {rule['s'].iloc[0]:.1f} |")


if __name__ == "__main__":
    main()
