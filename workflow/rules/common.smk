# Shared helpers: paths, plate lists, per-step settings (as JSON for the CLI), and config checks that
# must fail before any job runs.

import json
import os
import shlex
import shutil

import cytoagg
from cytoagg.workflow_config import check_config, resolve_platemaps

R = config["results"].rstrip("/")
# Rules run this checkout's own package (python -m cytoagg from src/), also inside the conda envs of --use-conda.
SRC = os.path.join(workflow.basedir, "src")
# (doubled braces: Snakemake formats the prefix like the command)
shell.prefix(f"set -euo pipefail; export PYTHONPATH={shlex.quote(SRC)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")
ENVS = os.path.join(workflow.basedir, "envs")
TRAIN_PLATES = list(config["plates"]["train"])
VALIDATION_PLATES = list(config["plates"]["validation"])
PLATES = TRAIN_PLATES + VALIDATION_PLATES
SYNTHETIC = config["dataset"]["path"] is None
MODEL_CHECKPOINT = config["train"]["checkpoint"]
BASELINES = list(dict.fromkeys(["mean", *config["evaluate"]["baselines"]]))  # the mean (BM) always
METHODS = ["model", *BASELINES]
MD = config["metadata"]

check_config(config)  # plates: disjoint, present on disk; settings that the schema cannot check
PLATEMAPS = {} if SYNTHETIC else resolve_platemaps(config["dataset"], PLATES)


wildcard_constraints:
    plate=r"[A-Za-z0-9][A-Za-z0-9_.\-]*",
    baseline="|".join(BASELINES),
    method="|".join(METHODS),


def use_gpu():
    """``gpu=1`` for train/embed when config asks for CUDA, or for ``auto`` where a GPU driver is visible."""
    device = config["train"]["device"]
    return device == "cuda" or (device == "auto" and shutil.which("nvidia-smi") is not None)


def settings(**values):
    """A step's settings as one JSON string: a rule param, so changing one reruns what depends on it.

    The package version rides along, so upgrading cytoagg shows results as outdated (--list-changes params).
    """
    return json.dumps({"cytoagg_version": cytoagg.__version__, **values}, sort_keys=True)


ANNOTATION = dict(
    well_col=MD["well"],
    plate_col=MD["plate"],
    perturbation_col=MD["perturbation"],
    negcon_col=MD["negcon_column"] or MD["perturbation"],
    negcon_value=MD["negcon_value"],
)


def raw_plate(wildcards):
    if SYNTHETIC:
        return f"{R}/synthetic/plates/{wildcards.plate}.sqlite"
    return config["dataset"]["path"].format(plate=wildcards.plate)


def plate_platemap(wildcards):
    if SYNTHETIC:
        return [f"{R}/synthetic/platemap/synthetic_platemap.txt"]
    return [PLATEMAPS[wildcards.plate]] if PLATEMAPS.get(wildcards.plate) else []


def model_path():
    return MODEL_CHECKPOINT if MODEL_CHECKPOINT else f"{R}/model/model.pt"


def input_mb(input, factor=3, floor=1000):
    return max(floor, int(factor * sum(os.path.getsize(f) for f in input if os.path.isfile(f)) / 2**20))


def all_outputs():
    return [
        f"{R}/tables/map_per_plate.csv",
        f"{R}/tables/map_per_plate.md",
        f"{R}/plots/map_per_plate.png",
        f"{R}/plots/cells_per_well.png",
        *([] if MODEL_CHECKPOINT else [f"{R}/plots/training_curve.png"]),
    ]
