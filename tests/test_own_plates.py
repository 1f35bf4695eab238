"""A user's own plates, end to end: `cytoagg init` on a small screen of pre-normalized single-cell Parquet plates whose
feature sets differ, then the workflow as the README runs it, up to the HTML report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from cytoagg.cli import main
from cytoagg.io.parquet import write_profiles
from conftest import normalized_plate
from helpers import copy_workflow, synthetic_spec

pytestmark = pytest.mark.slow

# Long plate names, as instruments write them (the figures must keep them apart).
PLATES = ["BR00117010__2020-11-08T19_57_47-Measurement1", "BR00117011__2020-11-08T21_21_09-Measurement1",
          "BR00117012__2020-11-09T00_41_55-Measurement2"]
SPEC = synthetic_spec(n_compounds=16, replicates=3, negcon_wells=8, cells_per_well=30, features_per_compartment=5,
                      n_latent=5)


def write_screen(data: Path) -> dict[str, list[str]]:
    """3 plates normalized upstream (per-plate MAD-robustized cells), a per-cell site column, and feature sets
    that differ: the last plate lacks two features, the first has one of its own. Returns each plate's features."""
    features = {}
    for i, plate in enumerate(PLATES):
        df = normalized_plate(SPEC, plate).drop(columns="Metadata_Plate")
        df.insert(1, "Metadata_Site", (np.arange(len(df)) % 4 + 1).astype(str))
        if i == 0:
            df["Cells_Extra_OnlyOnThisPlate"] = np.random.default_rng(0).normal(size=len(df))
        if i == 2:
            df = df.drop(columns=["Cells_AreaShape_Area", "Nuclei_AreaShape_Area"])
        write_profiles(df, data / f"{plate}.parquet")
        features[plate] = [c for c in df.columns if not c.startswith("Metadata_")]
    return features


def test_init_then_run_to_the_report(tmp_path, monkeypatch):
    wd = copy_workflow(tmp_path)
    features = write_screen(wd / "data")
    monkeypatch.chdir(wd)  # where the user runs `cytoagg init` and then snakemake
    assert main(["init", "data/{plate}.parquet", "--out", "mine.yaml"]) == 0
    config = yaml.safe_load((wd / "mine.yaml").read_text())
    assert config["dataset"]["features"] == "common" and config["normalize"]["method"] == "none"
    assert config["metadata"]["perturbation"] == "Metadata_broad_sample" and config["metadata"]["negcon_value"] == "DMSO"
    assert config["plates"] == {"train": PLATES[:2], "validation": PLATES[2:], "without_negcon": []}
    assert config["compounds"]["validation"] == 0.25
    # a small run: few epochs, a small network, no saliency or AnnData files (tested on the tiny screen; every
    # other value as `cytoagg init` wrote it)
    (wd / "fast.yaml").write_text(yaml.safe_dump({
        "train": {"epochs": 4, "eval_every": 2, "cell_hidden": 64, "head_hidden": 32, "out_dim": 32},
        "evaluate": {"null_size": 1000, "baselines": ["mean", "median"]},
        "saliency": {"enabled": False}, "export": {"anndata": False},
    }))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "mine.yaml", "fast.yaml"],
                          cwd=wd, capture_output=True, text=True, timeout=900)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-5000:]
    r = wd / "results"

    # the config: the user's two files over the schema's defaults, said in the log and in config_used.yaml
    assert "cytoagg config: mine.yaml, fast.yaml (the demo config.yaml is not read when --configfile is given)" in console
    used = (r / "config_used.yaml").read_text()
    assert 'epochs: 4  # fast.yaml' in used and 'method: "none"  # mine.yaml' in used
    assert 'lr: 0.0005  # schema default' in used

    # features: common to all plates, what each plate lost listed; the model's features are among them
    common = (r / "common_features.txt").read_text().split()
    assert set(common) == set(features[PLATES[0]]) & set(features[PLATES[1]]) & set(features[PLATES[2]])
    dropped = pd.read_csv(r / "common_features_dropped.csv")
    assert set(map(tuple, dropped[["plate", "feature"]].to_numpy())) == {
        (PLATES[0], "Cells_Extra_OnlyOnThisPlate"), (PLATES[0], "Cells_AreaShape_Area"),
        (PLATES[0], "Nuclei_AreaShape_Area"), (PLATES[1], "Cells_AreaShape_Area"), (PLATES[1], "Nuclei_AreaShape_Area")}
    assert set((r / "features.txt").read_text().split()) <= set(common)
    # normalize.method none: the values the plates came with
    ingested = pq.read_table(r / "ingested" / f"{PLATES[1]}.parquet").to_pandas()
    normalized = pq.read_table(r / "normalized" / f"{PLATES[1]}.parquet").to_pandas()
    pd.testing.assert_frame_equal(normalized, ingested[normalized.columns])

    # progress and warnings on the console, tagged with their step; not the logs' details
    assert f"[common-features] features common to all 3 plates: {len(common)}" in console
    assert "[train] train 4/4 (" in console and "loss=" in console
    assert "[train-on-means] train 4/4 (" in console

    # the tables and the report
    verdict = pd.read_csv(r / "tables" / "verdict.csv")
    assert {"validation"} <= set(verdict.plate_split) and {"train", "validation"} <= set(verdict.compound_split)
    front = (r / "report" / "front_page.rst").read_text()
    assert "**On held-out plates and compounds:" in front and "Note:" not in front  # nothing degenerate here
    report = subprocess.run([sys.executable, "-m", "snakemake", "--report", "report.html", "--configfile", "mine.yaml",
                             "fast.yaml"], cwd=wd, capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    html = (wd / "report.html").read_text(errors="replace")
    assert "learned well profiles against the field" in html and "map_per_plate.png" in html
