"""The model's mAPs of several finished workflow runs side by side (other seeds, precisions or devices).

    python benchmarks/compare_runs.py results_fp32_s42 results_fp32_s1 results_fp32_s2 results_bf16_s42 --group 3
    python benchmarks/compare_runs.py gpu_check/demo_cpu gpu_check/demo_cuda

One row per run (a ``results`` folder): the precision it trained and profiled in, the ``train`` rule's time,
the validation mAP training selected its checkpoint by (``model/training_log.csv``), and the model's
validation- and training-compound mAP, mean over the training plates and over the validation plates
(``tables/map_per_plate.csv``). ``--group N``: the first N runs are a reference group (e.g. seeds of one
precision): their mean, sd and range, and where each other run falls, in the group's sds. The baselines do
not use the model, so their rows must be equal in every run; the last line says whether they are (exit 1 if not).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

COLUMNS = {
    "selection val_mAP": None,
    "val. mAP, train plates": ("train", "validation"),
    "val. mAP, val. plates": ("validation", "validation"),
    "train. mAP, val. plates": ("validation", "train"),
}


def run_row(results: Path) -> dict:
    log = pd.read_csv(results / "model" / "training_log.csv")
    long = pd.read_csv(results / "tables" / "map_per_plate.csv")
    model = long[long.method == "model"]
    md = (results / "tables" / "map_per_plate.md").read_text()
    note = re.search(r"Model profiles computed in (\S+?)(?:, by a model trained in (\S+?))? \(", md)
    row = {
        "run": str(results),
        "trained in": ", ".join(sorted(set(log["precision"]))) if "precision" in log else "?",
        "profiled in": note.group(1) if note else "?",
        "train rule (s)": float(pd.read_csv(results / "benchmarks" / "train.tsv", sep="\t")["s"].iloc[0]),
        "selection val_mAP": float(log["val_mAP"].max()),
    }
    for name, key in COLUMNS.items():
        if key is not None:
            plate_split, compound_split = key
            sel = model[(model.plate_split == plate_split) & (model.compound_split == compound_split)]
            row[name] = float(sel["mAP"].mean())
    return row


def baselines(results: Path) -> pd.DataFrame:
    long = pd.read_csv(results / "tables" / "map_per_plate.csv")
    return long[long.method != "model"].reset_index(drop=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="results folders of finished runs")
    ap.add_argument("--group", type=int, default=0, help="the first N runs are the reference group")
    args = ap.parse_args()
    rows = pd.DataFrame([run_row(r) for r in args.runs])
    print("| " + " | ".join(rows.columns) + " |")
    print("|" + "---|" * len(rows.columns))
    for r in rows.itertuples(index=False):
        print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) and "mAP" in c else f"{v:.1f}" if isinstance(v, float) else str(v)
                              for c, v in zip(rows.columns, r)) + " |")
    metrics = list(COLUMNS)
    if args.group >= 2:
        group, others = rows.iloc[: args.group], rows.iloc[args.group :]
        mean, sd = group[metrics].mean(), group[metrics].std(ddof=1)
        print()
        print(f"reference group: the first {args.group} runs")
        print("| | " + " | ".join(metrics) + " |")
        print("|---|" + "---|" * len(metrics))
        print("| group mean ± sd | " + " | ".join(f"{mean[m]:.4f} ± {sd[m]:.4f}" for m in metrics) + " |")
        print("| group range | " + " | ".join(f"{group[m].min():.4f} to {group[m].max():.4f}" for m in metrics) + " |")
        for _, d in others.iterrows():
            cells = []
            for m in metrics:
                inside = group[m].min() <= d[m] <= group[m].max()
                cells.append(f"{d[m] - mean[m]:+.4f} ({(d[m] - mean[m]) / sd[m]:+.1f} sd{', in range' if inside else ''})")
            print(f"| {d['run']} − group mean | " + " | ".join(cells) + " |")
    first = baselines(args.runs[0])
    same = all(baselines(r).equals(first) for r in args.runs[1:])
    print()
    print(f"baseline rows (mean, median, mean_std; no model) identical in every run: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
