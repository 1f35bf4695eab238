"""Normalize benchmark: cytoagg vs ``pycytominer.normalize`` vs a plain pyarrow read + write (run by hand).

Not part of the test suite (pytest collects ``tests/`` only). Everything it needs is in the system Python
once the package is installed with its test extra (``pip install -e ".[test]"``: pycytominer 1.7.1) plus
psutil (``pip install psutil``). Results go to ``benchmarks/normalize.md``.

    # 1. synthetic single-cell plates (384 wells x cells_per_well x features, float32), in /tmp, never committed
    python benchmarks/normalize.py generate --cells-per-well 2000 --features 1000 --out /tmp/cytoagg-bench/plate_2000x1000.parquet
    python benchmarks/normalize.py generate --cells-per-well 200  --features 1000 --out /tmp/cytoagg-bench/plate_200x1000.parquet

    # 2. each tool in its own process, wall time and peak RSS (the process tree's, polled), in rounds, best run
    python benchmarks/normalize.py bench --src /tmp/cytoagg-bench/plate_2000x1000.parquet --repeat 3 --repeat-slow 2 --check

    # the RSS bound on a 16 GB plate (cytoagg only: the floor and pycytominer hold the whole plate in memory)
    python benchmarks/normalize.py generate --cells-per-well 2000 --features 5200 --out /tmp/cytoagg-bench/plate_2000x5200.parquet
    python benchmarks/normalize.py bench --src /tmp/cytoagg-bench/plate_2000x5200.parquet --tools cytoagg --repeat 1

The tools (``run TOOL``, one process each, same input):

- ``floor``: ``pq.read_table`` + ``pq.write_table`` with pyarrow's defaults: the least any read-all, write-all step costs;
- ``floor_cytoagg_writer``: the same read, written with cytoagg's writer settings (``cytoagg.io.cell_writer``);
- ``cytoagg``: ``python -m cytoagg normalize`` exactly as the Snakemake rule calls it (mad_robustize, all cells,
  default ``memory_mb``);
- ``pycytominer``: ``pd.read_parquet`` + ``pycytominer.normalize(method="mad_robustize", samples="all",
  output_file=..., output_type="parquet")``.

``--check`` then compares cytoagg's and pycytominer's outputs with mad_robustize computed by the script in float64
(numpy/scipy, pycytominer's definitions) on the values on disk, column batch by column batch. (pycytominer,
given the float32 plate as read, computes in float32; the tests give it float64.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
WORK = Path(os.environ.get("CYTOAGG_BENCH_DIR", "/tmp/cytoagg-bench"))
TOOLS = ("floor", "floor_cytoagg_writer", "cytoagg", "pycytominer")


# ---------------------------------------------------------------- synthetic plate


def well_names() -> list[str]:
    return [f"{r}{c:02d}" for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25)]


def feature_names(n: int) -> list[str]:
    """CellProfiler-like names over three compartments and a few measurement kinds (no bookkeeping names)."""
    kinds = ["AreaShape_Zernike", "Intensity_MeanIntensity", "Texture_Contrast", "Granularity",
             "RadialDistribution_FracAtD", "Correlation_Correlation", "Intensity_IntegratedIntensity",
             "AreaShape_Area"]
    channels = ["DNA", "ER", "RNA", "AGP", "Mito"]
    names = []
    for i in range(n):
        comp = ("Cells", "Cytoplasm", "Nuclei")[i % 3]
        names.append(f"{comp}_{kinds[(i // 3) % len(kinds)]}_{channels[(i // 24) % 5]}_{i:05d}")
    return names


def generate(out: Path, cells_per_well: int, n_features: int, seed: int = 0) -> None:
    """One plate as cytoagg's ingest writes it: Metadata_* strings, float32 features, rows ordered by well, its
    writer settings and row-group size (``cell_writer``, ``rows_per_group``: 50,000 rows, fewer on wide plates).

    Feature kinds, by column: intensities (log-normal, with a per-well shift), integer-valued areas/counts,
    fractions in [0, 1], signed textures; 1% of the features have 0.5% missing values.
    """
    from cytoagg.io.parquet import cell_writer, rows_per_group

    rng = np.random.default_rng(seed)
    row_group = rows_per_group(n_features, 50_000)
    wells = well_names()
    n_cells = len(wells) * cells_per_well
    names = feature_names(n_features)
    kind = np.arange(n_features) % 4
    loc = rng.uniform(-2, 6, n_features).astype(np.float32)
    scale = rng.uniform(0.1, 1.5, n_features).astype(np.float32)
    well_shift = rng.normal(0, 0.2, (len(wells), n_features)).astype(np.float32)
    holey = rng.random(n_features) < 0.01
    compounds = np.array(["DMSO"] * 32 + [f"BRD-{i:05d}" for i in range(88) for _ in range(4)])
    compounds = rng.permutation(compounds)
    meta_fields = ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_ImageNumber",
                   "Metadata_ObjectNumber", "Metadata_broad_sample"]
    schema = pa.schema([pa.field(m, pa.string()) for m in meta_fields] + [pa.field(f, pa.float32()) for f in names])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    t0 = time.perf_counter()
    with cell_writer(tmp, schema) as writer:
        for start in range(0, n_cells, row_group):
            m = min(row_group, n_cells - start)
            rows = np.arange(start, start + m)
            w = rows // cells_per_well
            site = (rows % cells_per_well) * 9 // cells_per_well + 1
            x = rng.standard_normal((m, n_features), dtype=np.float32)
            x *= scale
            x += loc
            x += well_shift[w]
            cols = []
            for j in range(n_features):
                v = x[:, j]
                if kind[j] == 0:
                    v = np.exp(v)
                elif kind[j] == 1:
                    v = np.round(np.exp(v + 3))
                elif kind[j] == 2:
                    v = 1 / (1 + np.exp(-v))
                if holey[j]:
                    v = v.copy()
                    v[rng.random(m) < 0.005] = np.nan
                cols.append(pa.array(v.astype(np.float32, copy=False)))
            image = (w * 9 + site).astype(str)
            meta = [pa.array(np.full(m, "BENCH1")), pa.array(np.asarray(wells)[w]), pa.array(site.astype(str)),
                    pa.array(image), pa.array((rows % cells_per_well // 9 + 1).astype(str)),
                    pa.array(compounds[w])]
            writer.write_table(pa.Table.from_arrays(meta + cols, schema=schema))
            print(f"\r{start + m:,}/{n_cells:,} cells", end="", file=sys.stderr)
    os.replace(tmp, out)
    print(f"\n{out}: {n_cells:,} cells x {n_features:,} features, {out.stat().st_size / 1e9:.2f} GB "
          f"in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


# ---------------------------------------------------------------- the tools (one process each)


def run_tool(tool: str, src: Path, out: Path) -> None:
    if tool in ("floor", "floor_cytoagg_writer"):
        table = pq.read_table(src)
        if tool == "floor":
            pq.write_table(table, out)
        else:
            from cytoagg.io.parquet import cell_writer

            with cell_writer(out, table.schema) as writer:
                writer.write_table(table)
    elif tool == "cytoagg":
        params = json.dumps({  # the normalize step's settings as the workflow passes them (the schema's defaults)
            "annotation": {"plate_col": "Metadata_Plate", "well_col": "Metadata_Well",
                           "perturbation_col": "Metadata_broad_sample", "negcon_col": "Metadata_broad_sample",
                           "negcon_value": "DMSO"},
            "method": "mad_robustize", "samples": "all", "epsilon": None, "spherize_method": "ZCA",
            "spherize_center": True, "well_center": False, "memory_mb": 1024,
        })  # exec: the CLI is the measured process
        os.execv(sys.executable, [sys.executable, "-m", "cytoagg", "normalize", "--src", str(src), "--out", str(out),
                                  "--params", params])
    elif tool == "pycytominer":
        import pandas as pd
        import pycytominer

        df = pd.read_parquet(src)
        meta = [c for c in df.columns if c.startswith("Metadata_")]
        feats = [c for c in df.columns if not c.startswith("Metadata_")]
        pycytominer.normalize(profiles=df, features=feats, meta_features=meta, method="mad_robustize",
                              samples="all", output_file=str(out), output_type="parquet")
    else:
        raise SystemExit(f"unknown tool {tool!r}; choose from {TOOLS}")


# ---------------------------------------------------------------- measuring


def measure(cmd: list[str], interval: float = 0.05) -> dict:
    """Wall time and peak RSS of a command: the largest sum over its process tree, polled every ``interval``;
    also the kernel's peak for the largest single process (``ru_maxrss`` of the reaped child)."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    root = psutil.Process(proc.pid)
    peak = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        total = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        peak = max(peak, total)
        time.sleep(interval)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{cmd} failed with exit code {proc.returncode}")
    return {"wall_s": wall, "peak_rss_tree_gb": peak / 1e9, "ru_maxrss_gb": usage.ru_maxrss * 1024 / 1e9}


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def check(src: Path, outputs: dict[str, Path], batch: int = 32) -> dict[str, str]:
    """Each output against mad_robustize computed here, in float64 with numpy and scipy as pycytominer defines
    it (median; scipy's median_abs_deviation(scale=1/1.4826) + 1e-18) on the float32 values on disk: the
    largest difference, and how many values differ from the float64 result rounded to float32."""
    from scipy.stats import median_abs_deviation

    fs = pq.ParquetFile(src)
    feats = [c for c in fs.schema_arrow.names if not c.startswith("Metadata_")]
    files = {k: pq.ParquetFile(v) for k, v in outputs.items()}
    stats = {k: {"max_abs": 0.0, "not_equal": 0, "values": 0, "missing": []} for k in outputs}
    for i in range(0, len(feats), batch):
        names = feats[i:i + batch]
        x = np.column_stack([c.to_numpy() for c in fs.read(columns=names).columns]).astype(np.float64)
        med = np.nanmedian(x, axis=0)
        mad = median_abs_deviation(x, nan_policy="omit", scale=1 / 1.4826)
        expected = (x - med) / (mad + 1e-18)
        for k, f in files.items():
            have = [n for n in names if n in f.schema_arrow.names]
            stats[k]["missing"] += [n for n in names if n not in have]
            if not have:
                continue
            y = np.column_stack([c.to_numpy() for c in f.read(columns=have).columns]).astype(np.float64)
            e = expected[:, [names.index(n) for n in have]]
            d = np.abs(y - e)[:, mad[[names.index(n) for n in have]] > 0]  # not where pycytominer divides by 1e-18
            if d.size:
                stats[k]["max_abs"] = max(stats[k]["max_abs"], float(np.nanmax(d)))
            stats[k]["not_equal"] += int(np.sum(~((y == e.astype(np.float32)) | (np.isnan(y) & np.isnan(e)))))
            stats[k]["values"] += y.size
    return {k: (f"max |diff| {v['max_abs']:.2e} (features with MAD > 0); {v['not_equal']:,} of {v['values']:,} values differ from the "
                f"float64 result rounded to float32; features left out: {v['missing']}") for k, v in stats.items()}


def bench(src: Path, tools: list[str], repeat: int, do_check: bool, keep: bool, repeat_slow: int | None = None) -> None:
    outdir = WORK / "out"
    outdir.mkdir(parents=True, exist_ok=True)
    info = pq.ParquetFile(src).metadata
    print(f"# {src}: {info.num_rows:,} cells x {info.num_columns} columns, {src.stat().st_size / 1e9:.2f} GB, "
          f"{info.num_row_groups} row groups", flush=True)
    print(f"# {datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.node()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, pyarrow {pa.__version__}, numpy {np.__version__}", flush=True)
    runs = {tool: [] for tool in tools}
    n_runs = {t: repeat_slow if t == "pycytominer" and repeat_slow else repeat for t in tools}
    for r in range(max(n_runs.values())):  # rounds: each tool once per round, so load changes hit all alike
        for tool in tools:
            if r >= n_runs[tool]:
                continue
            out = outdir / f"{tool}.parquet"
            out.unlink(missing_ok=True)
            before = loadavg()
            res = measure([sys.executable, __file__, "run", tool, "--src", str(src), "--out", str(out)])
            res["load_before"] = before
            runs[tool].append(res)
            print(f"{tool} run {r + 1}: {res['wall_s']:.1f} s, peak RSS {res['peak_rss_tree_gb']:.2f} GB "
                  f"(ru_maxrss {res['ru_maxrss_gb']:.2f} GB), load before {before}", flush=True)
            if not (do_check and tool in ("cytoagg", "pycytominer")) and not keep:
                out.unlink(missing_ok=True)  # disk: a 16 GB plate's outputs
    results = {tool: {"best_wall_s": min(x["wall_s"] for x in rs), "peak_rss_gb": max(x["peak_rss_tree_gb"] for x in rs),
                      "runs": rs} for tool, rs in runs.items()}
    print("\n| tool | wall (best of the runs) | peak RSS (max) | vs floor |")
    print("|---|---:|---:|---:|")
    floor = results.get("floor", {}).get("best_wall_s")
    for tool, r in results.items():
        ratio = f"{r['best_wall_s'] / floor:.2f}x" if floor else ""
        print(f"| {tool} | {r['best_wall_s']:.1f} s | {r['peak_rss_gb']:.2f} GB | {ratio} |")
    if "cytoagg" in results and "pycytominer" in results:
        print(f"\ncytoagg speedup over pycytominer: "
              f"{results['pycytominer']['best_wall_s'] / results['cytoagg']['best_wall_s']:.2f}x")
    if do_check:
        outputs = {t: outdir / f"{t}.parquet" for t in ("cytoagg", "pycytominer") if t in results}
        for tool, verdict in check(src, outputs).items():
            print(f"check {tool} against mad_robustize in float64: {verdict}")
    (WORK / f"results_{src.stem}.json").write_text(json.dumps(results, indent=1))
    if not keep:
        shutil.rmtree(outdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--cells-per-well", type=int, default=2000)
    g.add_argument("--features", type=int, default=1000)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", type=Path, required=True)
    b = sub.add_parser("bench")
    b.add_argument("--src", type=Path, required=True)
    b.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    b.add_argument("--repeat", type=int, default=3)
    b.add_argument("--repeat-slow", type=int, default=None, help="runs of the slow reference tools (default: --repeat)")
    b.add_argument("--check", action="store_true", help="check the outputs against mad_robustize in float64")
    b.add_argument("--keep", action="store_true", help="keep the outputs under $CYTOAGG_BENCH_DIR/out")
    r = sub.add_parser("run")
    r.add_argument("tool", choices=TOOLS)
    r.add_argument("--src", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.cmd == "generate":
        generate(args.out, args.cells_per_well, args.features, args.seed)
    elif args.cmd == "bench":
        bench(args.src, args.tools, args.repeat, args.check, args.keep, args.repeat_slow)
    else:
        run_tool(args.tool, args.src, args.out)


if __name__ == "__main__":
    main()
