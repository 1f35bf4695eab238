"""Per-well AP: cytoagg vs copairs 0.5.5 on the same profiles. Time and peak RSS, each run in its own process.

    python benchmarks/evaluate.py                       # 1k, 10k, 50k profiles x 1,000 features
    python benchmarks/evaluate.py --sizes 1000 10000 --copairs-max 10000 --features 1000

Profiles: n/4 compounds x 4 replicate wells, float64, each well = 0.25 x its compound's random center +
unit Gaussian noise (seeded). Both tools rank every well against all the others (copairs:
pos_sameby=[compound], neg_diffby=[compound], cosine). The script prints a Markdown table: seconds
and peak RSS of each tool (the AP call only is timed; peak RSS is the whole worker process,
profiles included), the speed ratio, and whether the numbers are identical (same positive and
candidate counts, largest |AP difference|). copairs is not run above --copairs-max profiles; the
table then gives the size of the pair table it would have to build.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def profiles(n: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n // 4), 4)
    x = 0.25 * rng.normal(size=(n // 4, d))[labels] + rng.normal(size=(n, d))
    return x, labels


def worker(tool: str, n: int, d: int, out: Path) -> None:
    x, labels = profiles(n, d)
    if tool.startswith("cytoagg"):
        from cytoagg.evaluate.average_precision import average_precision

        precision = "float64" if tool == "cytoagg-float64" else "auto"
        t0 = time.perf_counter()
        ap = average_precision(x, labels, precision=precision)
        seconds = time.perf_counter() - t0
        result = ap[["average_precision", "n_positives", "n_candidates"]].to_numpy(dtype=np.float64)
    else:
        import pandas as pd
        from copairs.map import average_precision

        meta = pd.DataFrame({"compound": labels.astype(str)})
        t0 = time.perf_counter()
        ap = average_precision(meta, x, ["compound"], [], [], ["compound"], progress_bar=False)
        seconds = time.perf_counter() - t0
        result = ap[["average_precision", "n_pos_pairs", "n_total_pairs"]].to_numpy(dtype=np.float64)
    np.save(out, result)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb}))


def run(tool: str, n: int, d: int, tmp: Path) -> dict:
    out = tmp / f"{tool}_{n}.npy"
    cmd = [sys.executable, __file__, "--worker", tool, "--n", str(n), "--features", str(d), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:120]}
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    stats["result"] = np.load(out)
    return stats


def compare(a: np.ndarray, b: np.ndarray) -> str:
    if not np.array_equal(a[:, 1:], b[:, 1:]):
        return "counts differ"
    diff = np.abs(a[:, 0] - b[:, 0])
    return f"yes (max abs diff {diff.max():.1e})" if diff.max() <= 1e-9 else f"NO: {np.sum(diff > 1e-9)} APs differ, max {diff.max():.2e}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    ap.add_argument("--features", type=int, default=1000)
    ap.add_argument("--copairs-max", type=int, default=10000, help="largest size copairs is run at")
    ap.add_argument("--float64", action="store_true", help="also time cytoagg's all-float64 path")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.n, args.features, Path(args.out))
        return

    print(f"# per-well AP, {args.features} features, 4 replicates per compound; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}\n")
    cols = ["profiles", "cytoagg s", "cytoagg peak RSS MB"]
    if args.float64:
        cols += ["cytoagg float64 s"]
    cols += ["copairs s", "copairs peak RSS MB", "copairs / cytoagg time", "identical"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n in args.sizes:
            ours = run("cytoagg", n, args.features, tmp)
            row = [f"{n:,}", f"{ours['seconds']:.2f}", f"{ours['peak_rss_mb']:.0f}"] if "error" not in ours else [f"{n:,}", ours["error"], ""]
            if args.float64:
                f64 = run("cytoagg-float64", n, args.features, tmp)
                row += [f"{f64['seconds']:.2f}" if "error" not in f64 else f64["error"]]
                if "error" not in f64 and "error" not in ours:
                    assert np.array_equal(f64["result"], ours["result"]), "float32 and float64 paths differ"
            if n <= args.copairs_max:
                ref = run("copairs", n, args.features, tmp)
                if "error" in ref:
                    row += [ref["error"], "", "", ""]
                else:
                    row += [f"{ref['seconds']:.1f}", f"{ref['peak_rss_mb']:.0f}", f"{ref['seconds'] / ours['seconds']:.0f}x",
                            compare(ours["result"], ref["result"])]
            else:
                pairs = n * (n - 1) // 2
                row += [f"not run: {pairs / 1e9:.2f}e9 pairs (>= {pairs * 2 * 8 / 2**30:.0f} GiB as int64 index pairs)", "", "", ""]
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
