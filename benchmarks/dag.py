"""How long `snakemake -n` takes for 10, 200 and 2,000 plates (a benchmark, not a test).

The configs are synthetic: only plate names, no data. Two layouts are timed:
  - "built-in data": the shipped config.yaml (dataset.path: null, so each plate also has a
    synthetic_plate job), with N plates, a tenth of them training plates;
  - "own plates": dataset.path points at N empty placeholder files (one platemap for all), as a user's
    config does; the same split.
Each run is a fresh working folder (nothing built yet), so the dry run plans every job.

    python benchmarks/dag.py                      # 10, 200, 2000 plates; writes benchmarks/dag.md
    python benchmarks/dag.py --plates 10 200 --repeat 3 --no-write
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 15.0  # 2,000 plates


def write_config(folder: Path, n_plates: int, layout: str) -> Path:
    plates = [f"PLATE{i:05d}" for i in range(n_plates)]
    n_train = max(2, n_plates // 10)
    config = {"plates": {"train": plates[:n_train], "validation": plates[n_train:]}}
    if layout == "own plates":
        data = folder / "data"
        data.mkdir()
        for p in plates:
            (data / f"{p}.sqlite").touch()
        (data / "platemap.csv").write_text("well_position,broad_sample\nA01,DMSO\n")
        config["dataset"] = {"path": str(data / "{plate}.sqlite"), "platemap": str(data / "platemap.csv")}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def dry_run(n_plates: int, layout: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="cytoagg-dag-") as tmp:
        tmp = Path(tmp)
        config = write_config(tmp, n_plates, layout)
        cmd = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(tmp / "work"), "--configfile", str(config)]
        load = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        total = re.search(r"^total\s+(\d+)$", proc.stdout + proc.stderr, re.M)
        return {
            "seconds": seconds,
            "cpu_seconds": cpu,
            "jobs": int(total.group(1)) if total else 0,
            "rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "load": load,
        }


def machine() -> str:
    import snakemake

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return (f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, "
            f"Snakemake {snakemake.__version__}, {platform.system()} {platform.release()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plates", type=int, nargs="+", default=[10, 200, 2000])
    ap.add_argument("--layouts", nargs="+", default=["built-in data", "own plates"])
    ap.add_argument("--repeat", type=int, default=1, help="runs per size; the table shows the fastest (wall)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "dag.md"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    rows = []
    for layout in args.layouts:
        for n in args.plates:
            runs = [dry_run(n, layout) for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r["seconds"])
            rows.append({"layout": layout, "plates": n, **best})
            print(f"{layout:14s} {n:6d} plates: {best['jobs']:6d} jobs, {best['seconds']:6.1f} s wall, "
                  f"{best['cpu_seconds']:6.1f} s CPU (peak RSS {best['rss_mb']:.0f} MB, load {best['load']:.1f})", flush=True)

    lines = [
        "| config | plates | jobs | `snakemake -n` wall (s) | CPU (s) | CPU ms per job | load average at start |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['layout']} | {r['plates']:,} | {r['jobs']:,} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
                     f"{1000 * r['cpu_seconds'] / max(r['jobs'], 1):.2f} | {r['load']:.1f} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        text = Path(args.out).read_text() if Path(args.out).exists() else ""
        start, end = "<!-- table: start -->", "<!-- table: end -->"
        block = f"{start}\nMeasured on {machine()}, {time.strftime('%Y-%m-%d')}, `--repeat {args.repeat}` (fastest run shown).\n\n{table}\n{end}"
        if start in text and end in text:
            text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
        else:
            text = text + "\n" + block + "\n"
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
