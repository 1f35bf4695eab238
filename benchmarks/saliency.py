"""Saliency benchmark: the saliency step (V0 alone; V0 + V1 + the correlations) against embed, on one plate (run by hand).

Not part of the test suite. Each step runs as the Snakemake rule runs it (``python -m cytoagg <step>``), in its
own process: wall time and peak RSS (the process tree's, polled; see ``benchmarks/normalize.py``). The model is
a random one of the paper's shape (per-cell layer D -> 2048, head 2048 -> 256 -> 2048): the work does not depend
on the weights. Results go to ``benchmarks/saliency.md``.

    # the plate: 384 wells x 2,000 cells x 1,000 features, as ingest writes it (benchmarks/normalize.py's generator)
    python benchmarks/normalize.py generate --cells-per-well 2000 --features 1000 --out /tmp/cytoagg-bench/plate_2000x1000.parquet
    python benchmarks/saliency.py bench --src /tmp/cytoagg-bench/plate_2000x1000.parquet --repeat 2 --threads 2
    python benchmarks/saliency.py bench --src ... --device cuda     # on a GPU machine
    python benchmarks/saliency.py check-cuda                       # CUDA (bf16) saliencies against the CPU's

The steps (``run STEP``):

- ``embed``: the model's well profiles (config ``train.embedding: head``);
- ``saliency_v0``: the saliency step with ``saliency.gradient: false``: V0 and its correlations, one pass;
- ``saliency``: the saliency step as configured by default: V0, V1 (a second pass) and the correlations of both.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from normalize import WORK, loadavg, measure  # noqa: E402  (the plate generator and the measuring)

STEPS = ("embed", "saliency_v0", "saliency")
SCHEMA = yaml.safe_load((HERE.parent / "workflow" / "schemas" / "config.schema.yaml").read_text())  # the defaults
PRECISION = SCHEMA["properties"]["train"]["properties"]["precision"]["default"]  # auto: fp32 on CPUs without bf16 units
ANNOTATION = {"plate_col": "Metadata_Plate", "well_col": "Metadata_Well", "perturbation_col": "Metadata_broad_sample",
              "negcon_col": "Metadata_broad_sample", "negcon_value": "DMSO"}


def make_checkpoint(src: Path, out: Path) -> None:
    """A cytoagg checkpoint of the paper's shape over every feature of ``src``, random weights (seed 0)."""
    import torch

    from cytoagg.io.columns import feature_columns
    from cytoagg.model.checkpoint import CHECKPOINT_FORMAT
    from cytoagg.model.network import DeepSets, ModelSpec

    features = feature_columns(pq.read_schema(src).names)
    torch.manual_seed(0)
    spec = ModelSpec.paper(len(features))
    torch.save({"format": CHECKPOINT_FORMAT, "model_spec": spec.to_dict(), "state_dict": DeepSets(spec).state_dict(),
                "features": features, "normalization": {}, "train_settings": {"temperature": 0.1}}, out)


def command(step: str, src: Path, checkpoint: Path, out: Path, device: str, threads: int) -> list[str]:
    cli = [sys.executable, "-m", "cytoagg"]
    common = ["--normalized", str(src), "--checkpoint", str(checkpoint), "--plate", "BENCH1", "--threads", str(threads)]
    if step == "embed":
        params = {"annotation": ANNOTATION, "embedding": "head", "device": device, "precision": PRECISION,
                  "normalization": {}}
        return [*cli, "embed", *common, "--out", "model", str(out / "embed.parquet"), "--params", json.dumps(params)]
    defaults = {k: v["default"] for k, v in SCHEMA["properties"]["saliency"]["properties"].items()}
    params = {"annotation": ANNOTATION, "device": device, "precision": PRECISION, "gradient": step == "saliency",
              "min_cells": defaults["min_cells"], "correlation_cells": defaults["correlation_cells"]}
    return [*cli, "saliency", *common, "--out-cells", str(out / f"{step}.parquet"),
            "--out-correlation", str(out / f"{step}_correlation.parquet"), "--params", json.dumps(params)]


def machine(device: str) -> str:
    import numpy as np
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if device == "cuda" else ""
    return (f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.node()}, {os.cpu_count()} cores ({cpu}){gpu}, "
            f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}")


def bench(src: Path, steps: list[str], repeat: int, device: str, threads: int) -> dict:
    out = WORK / "saliency_out"
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = WORK / "saliency_model.pt"
    make_checkpoint(src, checkpoint)
    info = pq.ParquetFile(src).metadata
    print(f"# {src}: {info.num_rows:,} cells x {info.num_columns} columns, {src.stat().st_size / 1e9:.2f} GB", flush=True)
    print(f"# {machine(device)}; device {device}, --threads {threads}", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    os.environ.update(env)
    runs = {s: [] for s in steps}
    for r in range(repeat):  # rounds: each step once per round, so load changes hit all alike
        for step in steps:
            before = loadavg()
            res = measure(command(step, src, checkpoint, out, device, threads))
            res["load_before"] = before
            runs[step].append(res)
            print(f"{step} run {r + 1}: {res['wall_s']:.1f} s, peak RSS {res['peak_rss_tree_gb']:.2f} GB, "
                  f"load before {before}", flush=True)
    results = {s: {"best_wall_s": min(x["wall_s"] for x in rs), "peak_rss_gb": max(x["peak_rss_tree_gb"] for x in rs),
                   "runs": rs} for s, rs in runs.items()}
    embed = results.get("embed", {}).get("best_wall_s")
    print("\n| step | wall (best) | runs | peak RSS | vs embed |")
    print("|---|---:|---|---:|---:|")
    for step, r in results.items():
        ratio = f"{r['best_wall_s'] / embed:.2f}x" if embed else ""
        walls = ", ".join(f"{x['wall_s']:.1f}" for x in r["runs"])
        print(f"| {step} | {r['best_wall_s']:.1f} s | {walls} s | {r['peak_rss_gb']:.2f} GB | {ratio} |")
    (WORK / f"saliency_results_{src.stem}_{device}.json").write_text(json.dumps(results, indent=1))
    return results


def check_cuda(wells: int = 64, cells: int = 3000, n_features: int = 500) -> None:
    """The saliencies on CUDA (bf16 autocast, as the step runs there) against the CPU's (float32, the one the tests
    check against autograd), on a random plate and model of the paper's per-cell width."""
    import numpy as np
    import torch
    from scipy.stats import spearmanr

    from cytoagg.model.network import DeepSets, ModelSpec
    from cytoagg.model.saliency import array_chunks, cell_saliency

    rng = np.random.default_rng(0)
    well_index = np.repeat(np.arange(wells), cells)
    x = (rng.normal(size=(len(well_index), n_features)) + rng.normal(size=(wells, n_features))[well_index]).astype(np.float32)
    labels = np.arange(wells) // 4  # 4 replicate wells per perturbation
    torch.manual_seed(0)
    net = DeepSets(ModelSpec.paper(n_features)).eval()
    got = {}
    for device in ("cpu", "cuda"):
        got[device] = cell_saliency(net.to(device), array_chunks(x), well_index, labels, 0.1,
                                    precision="bf16" if device == "cuda" else "fp32")
    for name in ("contribution", "gradient"):
        a, b = getattr(got["cpu"], name), getattr(got["cuda"], name)
        rel = np.abs(b - a) / np.abs(a)
        within = np.mean([spearmanr(a[well_index == w], b[well_index == w])[0] for w in range(wells)])
        print(f"{name}: CUDA vs CPU, relative difference median {np.median(rel):.2e}, max {rel.max():.2e}; "
              f"Spearman within wells (mean over {wells}) {within:.4f}")
    print("V0 sums per well on CUDA: max |sum - 1| "
          f"{np.abs(np.bincount(well_index, weights=got['cuda'].contribution) - 1).max():.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check-cuda")
    b = sub.add_parser("bench")
    b.add_argument("--src", type=Path, required=True)
    b.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    b.add_argument("--repeat", type=int, default=2)
    b.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    b.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.cmd == "check-cuda":
        check_cuda()
    else:
        bench(args.src, args.steps, args.repeat, args.device, args.threads)


if __name__ == "__main__":
    main()
