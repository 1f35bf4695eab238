"""How long `snakemake -n` takes for 10, 200 and 2,000 plates (a benchmark, not a test).

The configs are synthetic: only plate names, no data. Three layouts are timed:
  - "built-in data": the shipped config.yaml (dataset.path: null, so each plate also has a
    synthetic_plate job), with N plates, a tenth of them training plates;
  - "own plates": dataset.path points at N empty placeholder files (one platemap for all), as a user's
    config does; the same split;
  - "plates in S3" (opt-in: needs the test extra): the same placeholders as objects in a local S3 server
    (moto, on 127.0.0.1) laid out like the Cell Painting Gallery, read anonymously; the table also counts
    the requests the dry run made to the server.
Each run is a fresh working folder (nothing built yet), so the dry run plans every job.

    python benchmarks/dag.py                      # 10, 200, 2000 plates; writes benchmarks/dag.md
    python benchmarks/dag.py --plates 10 200 --repeat 3 --no-write
    python benchmarks/dag.py --layouts "own plates" "plates in S3" --plates 2000 --no-write
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


class S3Server:
    """moto's S3 server on 127.0.0.1, counting the requests it answers."""

    def __init__(self):
        import logging

        import boto3
        from moto.server import ThreadedMotoServer

        self.requests = 0
        server = self

        class Count(logging.Handler):
            def emit(self, record):
                server.requests += 1

        logging.getLogger("werkzeug").addHandler(Count())
        logging.getLogger("werkzeug").setLevel(logging.INFO)
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        self.client = boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                                   aws_access_key_id="bench", aws_secret_access_key="bench")
        self.bucket = 0

    def upload(self, plates: list[str]) -> str:
        """A bucket of placeholder plates (and each plate's aggregated CSV beside it); the dataset.path pattern."""
        from concurrent.futures import ThreadPoolExecutor

        self.bucket += 1
        bucket = f"bench-{self.bucket}"
        self.client.create_bucket(Bucket=bucket, ACL="public-read")
        root = "cpg0000-bench/source_0/workspace"

        def put(key: str, body: bytes) -> None:
            self.client.put_object(Bucket=bucket, Key=key, Body=body, ACL="public-read")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda p: [put(f"{root}/backend/batch/{p}/{p}{ext}", b"x") for ext in (".sqlite", ".csv")],
                          plates))
        put(f"{root}/metadata/platemap.csv", b"well_position,broad_sample\nA01,DMSO\n")
        return f"s3://{bucket}/{root}"


def write_config(folder: Path, n_plates: int, layout: str, s3: S3Server | None = None) -> Path:
    plates = [f"PLATE{i:05d}" for i in range(n_plates)]
    n_train = max(2, n_plates // 10)
    config = {"plates": {"train": plates[:n_train], "validation": plates[n_train:]}}
    if layout == "plates in S3":
        root = s3.upload(plates)
        config["dataset"] = {"path": f"{root}/backend/batch/{{plate}}/{{plate}}.sqlite",
                             "platemap": f"{root}/metadata/platemap.csv", "s3_anonymous": True}
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


def dry_run(n_plates: int, layout: str, s3: S3Server | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="cytoagg-dag-") as tmp:
        tmp = Path(tmp)
        config = write_config(tmp, n_plates, layout, s3)
        cmd = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(tmp / "work"), "--configfile", str(config)]
        env = dict(os.environ, SNAKEMAKE_STORAGE_S3_ENDPOINT_URL=s3.url) if s3 else None
        load = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        requests_before = s3.requests if s3 else 0
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
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
            "requests": (s3.requests - requests_before) if s3 else None,
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
    s3 = S3Server() if "plates in S3" in args.layouts else None
    for layout in args.layouts:
        for n in args.plates:
            runs = [dry_run(n, layout, s3 if layout == "plates in S3" else None) for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r["seconds"])
            rows.append({"layout": layout, "plates": n, **best})
            requests = "" if best["requests"] is None else f", {best['requests']} requests to S3"
            print(f"{layout:14s} {n:6d} plates: {best['jobs']:6d} jobs, {best['seconds']:6.1f} s wall, "
                  f"{best['cpu_seconds']:6.1f} s CPU (peak RSS {best['rss_mb']:.0f} MB, load {best['load']:.1f}{requests})",
                  flush=True)

    with_s3 = any(r["requests"] is not None for r in rows)
    lines = [
        "| config | plates | jobs | `snakemake -n` wall (s) | CPU (s) | CPU ms per job | load average at start |"
        + (" requests to S3 |" if with_s3 else ""),
        "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if with_s3 else ""),
    ]
    for r in rows:
        lines.append(f"| {r['layout']} | {r['plates']:,} | {r['jobs']:,} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
                     f"{1000 * r['cpu_seconds'] / max(r['jobs'], 1):.2f} | {r['load']:.1f} |"
                     + (f" {'' if r['requests'] is None else r['requests']} |" if with_s3 else ""))
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
