"""Shared test helpers: each step's settings built from the config schema's own defaults (the only place
defaults live), so a test changes only what it is about; and small file writers used by several tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pandas as pd
import yaml

from cytoagg.evaluate.diagnostics import EffectiveRankSettings
from cytoagg.evaluate.retrieval import EvaluateSettings, PrCurveSettings
from cytoagg.evaluate.saliency import SaliencySettings
from cytoagg.evaluate.sampling_sweep import SamplingSweepSettings
from cytoagg.evaluate.summarize import Splits, SummarizeSettings
from cytoagg.ingest.plate import IngestSettings
from cytoagg.io.columns import Annotation
from cytoagg.model.network import ModelSpec
from cytoagg.model.train import TrainSettings
from cytoagg.preprocess.feature_select import FeatureSelectSettings
from cytoagg.preprocess.normalize import NormalizeSettings
from cytoagg.profiles.aggregate import AggregateSettings, FilteredMean
from cytoagg.profiles.embed import EmbedSettings
from cytoagg.splits import CompoundSplit
from cytoagg.synthetic.screen import SyntheticSpec
from cytoagg.synthetic.toy import ToySpec

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
TINY = Path(__file__).parent / "tiny_config.yaml"


@cache
def _schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def defaults(section: str) -> dict:
    """The schema's default of every key of config section ``section``; an object's default filled with its own
    keys' defaults, as the Snakefile's validation does."""
    return _filled(_schema()["properties"][section])


def _filled(spec: dict) -> dict:
    out = {}
    for k, v in spec.get("properties", {}).items():
        if "default" in v:
            out[k] = {**_filled(v), **v["default"]} if v.get("type") == "object" and isinstance(v["default"], dict) else v["default"]
    return out


def annotation(**overrides) -> Annotation:
    """The schema's ``metadata:`` defaults (negcon_column null: the perturbation column)."""
    md = {**defaults("metadata"), **overrides.pop("metadata", {})}
    values = dict(
        plate_col=md["plate"], well_col=md["well"], perturbation_col=md["perturbation"],
        negcon_col=md["negcon_column"] or md["perturbation"], negcon_value=md["negcon_value"],
    )
    return Annotation(**{**values, **overrides})


def compound_split(**overrides) -> CompoundSplit:
    return CompoundSplit(**{**defaults("compounds"), **overrides})


def normalization(**overrides) -> dict:
    """What a model records of the normalization: config ``normalize:`` less memory_mb."""
    values = {k: v for k, v in defaults("normalize").items() if k != "memory_mb"}
    return {**values, **overrides}


def synthetic_spec(**overrides) -> SyntheticSpec:
    return SyntheticSpec(**{**defaults("synthetic"), **overrides})


def toy_spec(**overrides) -> ToySpec:
    values = {k: v for k, v in defaults("experiment").items() if k != "epsilons"}
    return ToySpec(**{"variant": "covariance", "epsilon": 0.1, **values, **overrides})


def ingest_settings(**overrides) -> IngestSettings:
    d = defaults("dataset")
    values = dict(annotation=annotation(), format=d["format"], platemap=None, compartments=d["compartments"],
                  hub=d["hub"], links=d["links"], features_file=d["features_file"], blocklist=d["blocklist"],
                  max_cells_without_image=d["max_cells_without_image"],
                  require_negcon=True)
    return IngestSettings(**{**values, **overrides})


def normalize_settings(**overrides) -> NormalizeSettings:
    return NormalizeSettings(**{"annotation": annotation(), **defaults("normalize"), **overrides})


def feature_select_settings(**overrides) -> FeatureSelectSettings:
    return FeatureSelectSettings(**{"blocklist": None, **defaults("feature_select"), **overrides})


def train_settings(**overrides) -> TrainSettings:
    values = {k: v for k, v in defaults("train").items() if k not in ("checkpoint", "threads", "embedding")}
    base = dict(annotation=annotation(), split=compound_split(), normalization=normalization())
    return TrainSettings(**{**base, **values, **overrides})


def embed_settings(**overrides) -> EmbedSettings:
    d = defaults("train")
    values = dict(annotation=annotation(), embedding=d["embedding"], device=d["device"], precision=d["precision"],
                  normalization=normalization())
    return EmbedSettings(**{**values, **overrides})


def evaluate_settings(**overrides) -> EvaluateSettings:
    d = defaults("evaluate")
    values = dict(annotation=annotation(), negcon_as_negatives=d["negcon_as_negatives"], reference=d["reference"],
                  moa_column=d["moa_column"], baseline_corrected=d["baseline_corrected"])
    return EvaluateSettings(**{**values, **overrides})


def pr_curve_settings(**overrides) -> PrCurveSettings:
    d = defaults("evaluate")
    values = dict(annotation=annotation(), plate="", group_column=d["pr_curve_column"],
                  negcon_as_negatives=d["negcon_as_negatives"], split=compound_split())
    return PrCurveSettings(**{**values, **overrides})


def sampling_sweep_settings(**overrides) -> SamplingSweepSettings:
    d = defaults("evaluate")
    values = dict(annotation=annotation(), sizes=d["sampling_sweep"], seeds=d["sampling_seeds"],
                  negcon_as_negatives=d["negcon_as_negatives"], embedding=defaults("train")["embedding"], device="cpu",
                  precision=defaults("train")["precision"])
    return SamplingSweepSettings(**{**values, **overrides})


def effective_rank_settings(**overrides) -> EffectiveRankSettings:
    values = {"annotation": annotation(), "device": "cpu", "precision": defaults("train")["precision"]}
    return EffectiveRankSettings(**{**values, **overrides})


def saliency_settings(**overrides) -> SaliencySettings:
    d = defaults("saliency")
    values = dict(annotation=annotation(), device="cpu", precision="fp32", gradient=d["gradient"], min_cells=d["min_cells"],
                  correlation_cells=d["correlation_cells"])
    return SaliencySettings(**{**values, **overrides})


def filtered_mean_settings(**overrides) -> FilteredMean:
    props = _schema()["properties"]["evaluate"]["properties"]["filtered_mean"]["properties"]
    return FilteredMean(**{**{k: v["default"] for k, v in props.items()}, **overrides})


def splits(plate_split: dict, **overrides) -> Splits:
    return Splits(plate_split=plate_split, compounds=compound_split(**overrides))


def summarize_settings(plate_split: dict, **overrides) -> SummarizeSettings:
    d = defaults("evaluate")
    values = dict(splits=splits(plate_split), null_size=d["null_size"],
                  significance_threshold=d["significance_threshold"], seed=d["seed"])
    return SummarizeSettings(**{**values, **overrides})


def model_spec(n_features: int, **overrides) -> ModelSpec:
    """The network config ``train:`` defaults describe (the paper's), for ``n_features`` input features."""
    d = defaults("train")
    values = dict(cell_hidden=d["cell_hidden"], head_hidden=d["head_hidden"], out_dim=d["out_dim"],
                  pooling=d["pooling"], head=d["head"], cell_activation=d["cell_activation"],
                  plate_norm=d["plate_norm"], part_weight=d["part_weight"], part_tau=d["part_tau"])
    return ModelSpec(n_features, **{**values, **overrides})


# --- running the workflow (end-to-end, rerun, fault and Slurm tests) ---


def copy_workflow(dest: Path) -> Path:
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(REPO / name, dest / name)
    for name in ("workflow", "profiles", "envs", "src"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(TINY, dest / "tiny.yaml")
    return dest


def assert_same_results(wd: Path, reference: Path) -> None:
    """Final tables byte for byte; every per-plate AP table value for value."""
    ref, got = reference / "results", wd / "results"
    tables = sorted(p.relative_to(ref) for p in (ref / "tables").iterdir())
    assert tables
    for rel in tables:
        assert (got / rel).read_bytes() == (ref / rel).read_bytes(), f"{rel} differs from the reference run"
    aps = sorted(p.relative_to(ref) for p in (ref / "ap").rglob("*.parquet"))
    assert aps
    for rel in aps:
        pd.testing.assert_frame_equal(pd.read_parquet(got / rel), pd.read_parquet(ref / rel), check_exact=True)


def snakemake(workdir: Path, *args: str, check: bool = True, configfiles=("tiny.yaml",)) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", *args, "--configfile", *configfiles]  # last: it takes several values
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def planned_jobs(workdir: Path, *args: str, configfiles=("tiny.yaml",)) -> dict[str, int]:
    """Jobs a dry run would run: rule -> count (from the job stats table)."""
    out = snakemake(workdir, *args, "-n", "--quiet", "rules", configfiles=configfiles).stdout
    jobs = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
            jobs[parts[0]] = int(parts[1])
    return jobs


def aggregate_settings(**overrides) -> AggregateSettings:
    return AggregateSettings(**{"annotation": annotation(), "filtered_mean": filtered_mean_settings(), **overrides})
