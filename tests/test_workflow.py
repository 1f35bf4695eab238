"""The Snakefile end to end, on a tiny synthetic config, run as a user runs it (a copy of the workflow)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import copy_workflow, planned_jobs, snakemake

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(html: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on a local file: no sandbox (root in CI), no GPU, no network of its own, a fresh profile."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--virtual-time-budget=10000", *args, html.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.fixture
def finished(tiny_reference_run) -> Path:
    """The finished tiny run (conftest.py). These tests only read it, dry-run it, lint it, or add report.html."""
    return tiny_reference_run


def test_outputs_of_every_step(finished):
    r = finished / "results"
    for plate in ("P1", "P2", "P3"):
        assert (r / "synthetic/plates" / f"{plate}.sqlite").exists()
        for step in ("ingested", "normalized", "profiles/model", "profiles/model_untrained", "profiles/mlp_on_mean",
                     "profiles/mean", "profiles/mean_std", "ap", "saliency", "saliency/correlation", "synthetic/debris"):
            assert (r / step / f"{plate}.parquet").exists(), (step, plate)
        assert (r / "logs/ingest" / f"{plate}.log").exists()
        methods = ("model", "model_untrained", "mlp_on_mean", "mean", "mean_std")
        assert sorted(f.name for f in (r / "pipelines/by_plate" / plate).glob("*.parquet")) == sorted(
            f"{m}__{p}.parquet" for m in methods for p in ("negcon_mad", "negcon_mad_sphere"))
        ap = pd.read_parquet(r / "ap" / f"{plate}.parquet")
        assert set(zip(ap.method, ap.profile_pipeline)) == {
            (m, p) for m in methods for p in ("raw", "negcon_mad", "negcon_mad_sphere")}
        assert (r / "benchmarks/normalize" / f"{plate}.tsv").exists()
    assert (r / "model/model.pt").exists() and (r / "controls/mlp_on_mean/model.pt").exists()
    assert (r / "pipelines/sphering.npz").exists()
    assert (r / "features.txt").read_text().strip()
    hist = pd.read_csv(r / "model/training_log.csv")
    assert len(hist) == 25 and hist.val_mAP.notna().sum() == 5
    assert hist.precision.nunique() == 1 and hist.precision[0] in ("fp32", "bf16")  # train.precision: auto
    for png in ("map_per_plate", "training_curve", "cells_per_well", "pr_curves", "sampling_sweep", "effective_rank",
                "saliency_feature_correlation", "saliency_cells"):
        assert (r / "plots" / f"{png}.png").stat().st_size > 1000
    assert not (r / "tables/saliency_debris_auroc.csv").exists()  # the tiny screen has no debris
    # no temporary files left behind by atomic writes
    assert not list(r.rglob("*.tmp"))


def test_map_tables(finished):
    long = pd.read_csv(finished / "results/tables/map_per_plate.csv")
    for col in ("plate", "plate_split", "compound_split", "method", "profile_pipeline", "mAP", "precision_at_R", "n_queries"):
        assert col in long.columns
    assert set(long.method) == {"model", "model_untrained", "mlp_on_mean", "mean", "mean_std"}
    assert set(long.profile_pipeline) == {"raw", "negcon_mad", "negcon_mad_sphere"}
    assert len(long) == 3 * 5 * 3 * 3  # plates x methods x pipelines x compound splits
    assert set(long.plate_split) == {"train", "validation"}
    assert set(long.compound_split) == {"train", "validation", "all"}
    assert long.mAP.between(0, 1).all() and (long.n_queries > 0).all()
    md = (finished / "results/tables/map_per_plate.md").read_text()
    assert "| plate | plate split | Training mAP model | Training mAP BM | Validation mAP model | Validation mAP BM | PR model | PR BM |" in md

    # The expected outcome: on the validation plate's held-out compounds the model beats the raw mean.
    val = long[(long.plate_split == "validation") & (long.compound_split == "validation") & (long.profile_pipeline == "raw")]
    val = val.set_index("method")["mAP"]
    assert val["model"] > val["mean"], val
    verdict = pd.read_csv(finished / "results/tables/verdict.csv")
    assert len(verdict) == 4 and verdict.best_nonlearned.isin(["mean", "mean_std"]).all()
    assert verdict.verdict.isin(["model better", "model worse", "no significant difference"]).all()
    assert "best non-learned mAP" in (finished / "results/tables/verdict.md").read_text()
    for col in ("fraction_retrieved", "wilcoxon_p_vs_mean", "mean_ap_difference_vs_mean"):
        assert col in long.columns
    assert long.loc[long.method != "mean", "wilcoxon_p_vs_mean"].between(0, 1).all()
    assert "Retrieved model | Retrieved BM | Training p (model vs BM) | Validation p (model vs BM) |" in md
    precision = pd.read_csv(finished / "results/model/training_log.csv").precision[0]  # auto, as this machine has it
    assert f"Model profiles computed in {precision}, by a model trained in {precision} (`train.precision`)." in md
    assert f"Model profiles computed in {precision}" in (finished / "results/tables/sampling_sweep.md").read_text()

    compounds = pd.read_csv(finished / "results/tables/ap_per_compound.csv")
    assert list(compounds.columns[:7]) == ["compound", "plate", "method", "profile_pipeline", "mAP", "p_value", "corrected_p_value"]
    assert len(compounds) == 48 * 3 * 5 * 3  # compounds x plates x methods x pipelines
    assert (compounds.corrected_p_value >= compounds.p_value).all()


def test_sampling_sweep_and_effective_rank_tables(finished):
    sweep = pd.read_csv(finished / "results/tables/sampling_sweep.csv", dtype={"cells_sampled": str})
    assert set(sweep.cells_sampled) == {"10", "25", "all"} and set(sweep.method) == {"model", "mean"}
    assert set(sweep.plate) == {"P1", "P2", "P3"}
    assert sweep.loc[sweep.cells_sampled == "10", "mean_cells_used"].max() <= 10
    # from all cells, the sweep finds the mAP of the main table
    long = pd.read_csv(finished / "results/tables/map_per_plate.csv")
    key = ["plate", "compound_split", "method"]
    a = sweep[sweep.cells_sampled == "all"].set_index(key)["mAP"]
    b = long[long.method.isin(["model", "mean"]) & (long.profile_pipeline == "raw")].set_index(key)["mAP"]
    pd.testing.assert_series_equal(a.sort_index(), b.loc[a.index].sort_index(), atol=1e-6, check_names=False)
    rank = pd.read_csv(finished / "results/tables/effective_rank.csv")
    assert rank.representation.tolist() == ["pooled", "head", "mean"] and set(rank.plates) == {"P3"}


def test_saliency_tables(finished):
    r = finished / "results"
    features = (r / "features.txt").read_text().split()
    table = pd.read_csv(r / "tables/saliency_feature_correlation.csv")
    assert list(table.columns) == ["plate", "plate_split", "saliency", "feature", "pearson", "spearman", "n_wells", "rank"]
    assert list(dict.fromkeys(table.plate)) == ["all", "P1", "P2", "P3"]
    for (plate, name), block in table.groupby(["plate", "saliency"]):
        assert sorted(block.feature) == sorted(features) and block["rank"].tolist() == list(range(1, len(features) + 1))
        assert block.pearson.abs().is_monotonic_decreasing and block.pearson.between(-1, 1).all()
    assert set(table.saliency) == {"contribution", "gradient"} and (table.n_wells > 100).all()
    cells = pd.read_parquet(r / "saliency/P3.parquet")
    assert len(cells) == len(pd.read_parquet(r / "normalized/P3.parquet", columns=["Metadata_Well"]))
    assert {"Metadata_Well", "Metadata_ImageNumber", "Metadata_ObjectNumber"} <= set(cells.columns)
    assert cells.groupby("Metadata_Well")["saliency_contribution"].sum().sub(1).abs().max() < 1e-4


def test_debris_add_the_auroc_table(finished):
    (finished / "debris.yaml").write_text("synthetic:\n  debris_fraction: 0.3\n")
    jobs = planned_jobs(finished, configfiles=("tiny.yaml", "debris.yaml"))
    assert jobs["synthetic_plate"] == 3 and jobs["saliency"] == 3 and jobs["saliency_debris"] == 1


@pytest.fixture(scope="module")
def report_html(tiny_reference_run) -> Path:
    """`snakemake --report report.html` on the finished run, as the README says (pygments comes with the package)."""
    snakemake(tiny_reference_run, "--report", "report.html")
    return tiny_reference_run / "report.html"


def test_anndata_files_hold_every_plate_of_each_profile(finished):
    """results/anndata/{method}__{pipeline}.h5ad, read back with anndata: the profile Parquets of all plates, stacked."""
    import anndata as ad

    def values(frame):
        return frame.astype(object).where(frame.notna(), None).to_numpy().tolist()

    r = finished / "results"
    methods = ("model", "model_untrained", "mlp_on_mean", "mean", "mean_std")
    pipelines = ("raw", "negcon_mad", "negcon_mad_sphere")
    assert sorted(p.name for p in (r / "anndata").iterdir()) == sorted(f"{m}__{p}.h5ad" for m in methods for p in pipelines)
    for method in methods:
        for pipeline in pipelines:
            files = [r / "profiles" / method / f"{p}.parquet" if pipeline == "raw"
                     else r / "pipelines/by_plate" / p / f"{method}__{pipeline}.parquet" for p in ("P1", "P2", "P3")]
            adata = ad.read_h5ad(r / "anndata" / f"{method}__{pipeline}.h5ad")
            profiles = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
            meta = [c for c in profiles.columns if c.startswith("Metadata_")]
            features = [c for c in profiles.columns if c not in meta]
            assert adata.var_names.tolist() == features and adata.obs.columns.tolist() == meta, (method, pipeline)
            np.testing.assert_array_equal(adata.X, profiles[features].to_numpy(np.float32))
            assert values(adata.obs) == values(profiles[meta])
            assert adata.uns["cytoagg"]["method"] == method and adata.uns["cytoagg"]["pipeline"] == pipeline


def test_copairs_reads_a_profile_file_as_written(finished):
    """copairs' own average_precision on the held-out plate's model profiles, read with pandas as the workflow
    wrote them (no renaming), finds the workflow's APs (the model's raw rows of ap/P3.parquet)."""
    copairs_map = pytest.importorskip("copairs.map")
    r = finished / "results"
    profiles = pd.read_parquet(r / "profiles/model/P3.parquet")
    # the default evaluation: negative controls are neither queries nor candidates
    treated = profiles[profiles["Metadata_broad_sample"] != "DMSO"].reset_index(drop=True)
    meta = treated.filter(regex="^Metadata_")
    theirs = copairs_map.average_precision(
        meta, treated.drop(columns=meta.columns).to_numpy(), pos_sameby=["Metadata_broad_sample"], pos_diffby=[],
        neg_sameby=[], neg_diffby=["Metadata_broad_sample"], progress_bar=False,
    )
    ours = pd.read_parquet(r / "ap/P3.parquet")
    ours = ours[(ours.method == "model") & (ours.profile_pipeline == "raw")]
    both = ours.merge(theirs, left_on="well", right_on="Metadata_Well", how="outer", indicator=True)
    assert (both["_merge"] == "both").all() and len(both) > 100
    assert (both.n_positives == both.n_pos_pairs).all() and (both.n_candidates == both.n_total_pairs).all()
    np.testing.assert_allclose(both.average_precision_x, both.average_precision_y, rtol=0, atol=1e-9)


def test_report_contains_every_figure(report_html):
    html = report_html.read_text(errors="replace")
    for name in (
        "map_per_plate.png", "training_curve.png", "cells_per_well.png", "pr_curves.png", "sampling_sweep.png",
        "effective_rank.png", "map_per_plate.csv", "ap_per_compound.csv", "sampling_sweep.csv", "effective_rank.csv",
        "training_log.csv", "saliency_feature_correlation.png", "saliency_cells.png", "saliency_feature_correlation.csv",
    ):  # fmt: skip
        assert name in html, name
    # each figure is embedded (a PNG payload per figure), with its caption
    figures = re.findall(r'"results/plots/(\w+)\.png": \{"name"', html)
    assert sorted(figures) == sorted(
        ["map_per_plate", "training_curve", "cells_per_well", "pr_curves", "sampling_sweep", "effective_rank",
         "saliency_feature_correlation", "saliency_cells"]
    )
    assert html.count("iVBORw0KGgo") >= len(figures)
    assert "Precision-recall curves of one query well per compound kind" in html
    assert "1. Key results" in html and "learned well profiles against the field" in html  # the front page


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CYTOAGG_REQUIRE_CHROMIUM"),
                    reason="no chromium here (Debian: apt-get install chromium; .ci/run installs it)")
def test_report_in_a_headless_browser(report_html, tmp_path):
    """The report as a reader first sees it (Chromium, 1400 x 900): the front page at the top of the window, its
    title not cut off (Snakemake centers a page taller than the window, which hid its top before the front page's
    layout fix), the verdict and the key-results category in the page the browser built. Screenshot:
    <tmp_path>/report.png (look at it)."""
    assert CHROMIUM is not None, "CYTOAGG_REQUIRE_CHROMIUM is set but no chromium is installed"
    dom = chromium(report_html, tmp_path / "profile", "--dump-dom").stdout
    assert "What was compared." in dom and "On held-out plates and compounds:" in dom and "1. Key results" in dom
    png = tmp_path / "report.png"
    chromium(report_html, tmp_path / "profile", f"--screenshot={png}", "--window-size=1400,900")
    pixels = mpimg.imread(png)[:, 320:1300, :3]  # right of the sidebar
    dark_rows = np.flatnonzero((pixels.mean(axis=2) < 0.35).any(axis=1))
    assert pixels.shape[0] == 900 and len(dark_rows) > 200  # text and figures rendered
    assert 12 <= dark_rows[0] <= 60, dark_rows[:5]  # the page starts at the top with its padding, then the title


def test_nothing_to_do_after_a_run(finished):
    assert planned_jobs(finished) == {}


def test_touching_one_raw_plate_reruns_only_its_chain(finished):
    raw = finished / "results/synthetic/plates/P3.sqlite"
    before = raw.stat()
    os.utime(raw, (time.time() + 5, time.time() + 5))
    try:
        jobs = planned_jobs(finished)
    finally:
        os.utime(raw, ns=(before.st_atime_ns, before.st_mtime_ns))  # leave the finished run as it was
    assert jobs["ingest"] == 1 and jobs["normalize"] == 1 and jobs["embed"] == 1
    assert jobs["aggregate"] == 1 and jobs["evaluate"] == 1
    assert "train" not in jobs and "select_features" not in jobs
    assert {"summarize", "plot_map", "plot_cells_per_well"} <= set(jobs)


def test_adding_a_validation_plate_runs_only_its_jobs(finished):
    jobs = planned_jobs(finished, "--config", "plates={'train': ['P1', 'P2'], 'validation': ['P3', 'P4']}")
    assert jobs["synthetic_plate"] == 1 and jobs["ingest"] == 1 and jobs["normalize"] == 1 and jobs["embed"] == 1
    assert "train" not in jobs and "select_features" not in jobs


def test_adding_a_training_plate_retrains(finished):
    jobs = planned_jobs(finished, "--config", "plates={'train': ['P1', 'P2', 'P4'], 'validation': ['P3']}")
    assert jobs["ingest"] == 1 and jobs["normalize"] == 1
    assert jobs["select_features"] == 1 and jobs["train"] == 1 and jobs["embed"] == 4


def test_one_plate_target(finished):
    assert planned_jobs(finished, "results/normalized/P2.parquet", "--forcerun", "normalize") == {"normalize": 1}
    assert planned_jobs(finished, "results/ap/P3.parquet", "--forcerun", "evaluate") == {"evaluate": 1}


def test_forcerun_one_validation_plate_reruns_its_downstream_only(finished):
    jobs = planned_jobs(finished, "--forcerun", "results/normalized/P3.parquet")
    assert jobs["normalize"] == 1 and jobs["embed"] == 1 and jobs["aggregate"] == 1 and jobs["evaluate"] == 1
    assert "train" not in jobs and "ingest" not in jobs


def test_changing_a_normalization_setting_reruns_downstream(finished):
    jobs = planned_jobs(finished, "--config", "normalize={'method': 'standardize'}")
    assert jobs["normalize"] == 3 and jobs["train"] == 1 and jobs["embed"] == 3
    assert "ingest" not in jobs


def test_lint_is_clean(finished):
    proc = snakemake(finished, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        (["--config", "typo_key=1"], "typo_key"),
        (["--config", "train={'epochs': 'many'}"], "epochs"),
        (["--config", "plates={'train': ['P1'], 'validation': ['P1']}"], "share plate"),
        (["--config", "plates={'train': ['P1/../x'], 'validation': []}"], "plates"),
        (["--config", "dataset={'path': 'nowhere/{plate}.sqlite'}"], "plate 'P1' not found"),
        # numbers inside a --config mapping arrive as strings: a config file gives them as numbers
        ({"evaluate": {"baselines": ["filtered_mean"], "filtered_mean": {"lower_quantile": 0.6, "upper_quantile": 0.4}}},
         "the lower quantile must be below the upper one"),
    ],
)
def test_bad_config_fails_before_any_job(tmp_path, override, message):
    wd = copy_workflow(tmp_path)
    if isinstance(override, dict):
        (wd / "bad.yaml").write_text(yaml.safe_dump(override))
        proc = snakemake(wd, "--cores", "1", check=False, configfiles=("tiny.yaml", "bad.yaml"))
    else:
        proc = snakemake(wd, "--cores", "1", *override, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert not (wd / "results").exists()


def test_own_plates_barcode_platemaps_and_split_reference_are_planned_per_plate(tmp_path):
    """The per-plate inputs that are functions (a platemap per plate, every plate of a split ranked
    together) give each job its own files, in the dry run's shell commands."""
    import json
    import shlex

    import yaml

    wd = copy_workflow(tmp_path)
    data = wd / "data"
    (data / "maps").mkdir(parents=True)
    for plate in ("PA", "PB", "PC"):
        (data / f"{plate}.sqlite").touch()
    (data / "barcode_platemap.csv").write_text("Assay_Plate_Barcode,Plate_Map_Name\nPA,map1\nPB,map2\nPC,map1\n")
    for name in ("map1", "map2"):
        (data / "maps" / f"{name}.txt").write_text("well_position\tbroad_sample\nA01\tDMSO\n")
    (wd / "own.yaml").write_text(yaml.safe_dump({
        "plates": {"train": ["PA", "PB"], "validation": ["PC"]},
        "dataset": {"path": "data/{plate}.sqlite", "barcode_platemap": "data/barcode_platemap.csv", "platemap_dir": "data/maps"},
        "evaluate": {"reference": "split", "baselines": ["mean"]},
    }))
    shutil.copy(wd / "own.yaml", wd / "tiny.yaml")  # snakemake() reads tiny.yaml after config.yaml
    out = snakemake(wd, "-n", "-p").stdout
    commands = [shlex.split(line.removeprefix("Shell command: ")) for line in out.splitlines() if "python -m cytoagg " in line]

    def args(cmd, flag):
        """The values after each occurrence of ``flag``, one list per occurrence."""
        found = []
        for i in (i for i, v in enumerate(cmd) if v == flag):
            values = []
            for v in cmd[i + 1 :]:
                if v.startswith("--") or v == "2>":
                    break
                values.append(v)
            found.append(values)
        return found

    def arg(cmd, flag):
        return args(cmd, flag)[0]

    ingest = {arg(c, "--plate")[0]: json.loads(arg(c, "--params")[0]) for c in commands if c[3] == "ingest"}
    assert {p: Path(s["platemap"]).name for p, s in ingest.items()} == {"PA": "map1.txt", "PB": "map2.txt", "PC": "map1.txt"}
    evaluate = {arg(c, "--plate")[0]: {m: files for m, *files in args(c, "--profiles")} for c in commands if c[3] == "evaluate"}
    methods = ("model", "model_untrained", "mlp_on_mean", "mean")
    assert set(evaluate["PA"]) == {f"{m}__raw" for m in methods}
    assert evaluate["PA"]["model__raw"] == [f"results/profiles/model/{p}.parquet" for p in ("PA", "PB")]
    folders = {arg(c, "--plate")[0]: arg(c, "--pipelines") for c in commands if c[3] == "evaluate"}
    assert folders["PA"] == [f"results/pipelines/by_plate/{p}" for p in ("PA", "PB")]
    assert folders["PC"] == ["results/pipelines/by_plate/PC"]
    assert evaluate["PC"]["model__raw"] == ["results/profiles/model/PC.parquet"]


def test_a_configfile_starts_from_the_schema_not_from_the_demo(tmp_path):
    """The demo config.yaml is read only without --configfile; the log line says which files were read."""
    import json
    import subprocess
    import sys

    import yaml

    wd = copy_workflow(tmp_path)
    (wd / "mine.yaml").write_text(yaml.safe_dump({"plates": {"train": ["P1", "P2"], "validation": ["P3"]},
                                                  "train": {"epochs": 3}}))

    def train_settings(*args):
        proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", *args], cwd=wd, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = proc.stdout + proc.stderr
        line = next(l for l in out.splitlines() if "python -m cytoagg train --cell-stores" in l)
        return json.loads(line.split("--params ")[1].split(" 2>")[0].strip("'")), out

    demo, out = train_settings()
    assert "cytoagg config: config.yaml (the demo config: read because no --configfile was given)" in out
    assert (demo["epochs"], demo["lr"], demo["cells_mean"]) == (40, 0.001, 100)  # the demo's scaled-down sizes
    mine, out = train_settings("--configfile", "mine.yaml")
    assert "cytoagg config: mine.yaml (the demo config.yaml is not read when --configfile is given)" in out
    assert (mine["epochs"], mine["lr"], mine["cells_mean"]) == (3, 0.0005, 1500)  # the schema's defaults otherwise
    assert "P5" not in out  # the demo's validation plates are not inherited
