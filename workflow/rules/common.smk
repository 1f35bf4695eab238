# Every value that more than one of the rule files uses is defined here (and only here) - paths, plate lists, the
# methods, each step's settings (as JSON for the CLI's --params), resources, the default target's outputs,
# and the config checks that must fail before any job runs.

import json
import os
import re
import shlex
import shutil
import sys

# Rules run this checkout's own package (python -m cytoagg from src/), also inside the conda envs of
# --use-conda; the Snakefile imports the same one, so the version in the rules' params is the code that runs.
SRC = os.path.join(workflow.basedir, "src")
sys.path.insert(0, SRC)

import cytoagg
from cytoagg.cli import named_file_args
from cytoagg.config import PLATE_NAME, check_config, check_first_plate_columns, plate_path, resolve_platemaps
from cytoagg.config import search_configs
from cytoagg.profiles.pipelines import profile_key

R = config["results"].rstrip("/")
# (doubled braces: Snakemake formats the prefix like the command)
shell.prefix(f"set -euo pipefail; export PYTHONPATH={shlex.quote(SRC)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")
ENVS = os.path.join(workflow.basedir, "envs")
EXPERIMENT = config.get("experiment")  # a model-capacity toy experiment (experiments/*.yaml) instead of the screen
TOY = f"{R}/toy"
TRAIN_PLATES = list(config["plates"]["train"])
VALIDATION_PLATES = list(config["plates"]["validation"])
PLATES = TRAIN_PLATES + VALIDATION_PLATES
SYNTHETIC = config["dataset"]["path"] is None
MODEL_CHECKPOINT = config["train"]["checkpoint"]
MD = config["metadata"]
EVAL = config["evaluate"]
BASELINES = list(dict.fromkeys(["mean", *EVAL["baselines"]]))  # the mean always
CONTROLS = list(EVAL["controls"])  # the model's controls (untrained network, network on well means)
PIPELINES = list(dict.fromkeys(["raw", *EVAL["pipelines"]]))  # raw always
if EXPERIMENT:  # the toy experiments compare the model with the mean, as the original did
    BASELINES, CONTROLS, PIPELINES = ["mean"], [], ["raw"]
METHODS = ["model", *CONTROLS, *BASELINES]
PLATE_PIPELINES = [p for p in PIPELINES if p in ("negcon_mad", "negcon_mad_sphere")]  # one folder per plate
PROFILES = {profile_key(m, p): (m, p) for m in METHODS for p in PIPELINES}  # every method through every pipeline
# What evaluate gets one file per profile for (the raw profiles, harmony's); the per-plate pipelines' profiles
# come in one folder per plate.
FILE_PROFILES = {k: mp for k, mp in PROFILES.items() if mp[1] not in PLATE_PIPELINES}
SWEEP_SIZES = sorted(set(EVAL["sampling_sweep"]))
# Precision-recall curves and effective ranks look at held-out plates (the training plates if there are none).
DIAGNOSTIC_PLATES = VALIDATION_PLATES or TRAIN_PLATES

check_config(config)  # plates: disjoint, present on disk; settings that the schema cannot check
PLATEMAPS = {} if SYNTHETIC else resolve_platemaps(config["dataset"], PLATES)
if not EXPERIMENT:
    check_first_plate_columns(config, PLATEMAPS)  # the metadata settings against the first plate's columns


# Plate names: letters, digits, underscores and hyphens, single dots between them; so no slashes, spaces,
# double dots or shell metacharacters. The config schema checks the names in the config; this constraint
# keeps other names out of targets (see cytoagg.config.PLATE_NAME). The toy experiments' runs are plates too.
wildcard_constraints:
    plate=PLATE_NAME,


# Train and embed hold a GPU where the config uses CUDA (gpu=1). "local": the cap of --resources gpu=N
# (profiles/default) counts only jobs run on this machine; jobs submitted to Slurm each get their own
# card, so the main snakemake does not hold them back.
resource_scopes:
    gpu="local",


def use_gpu():
    """``gpu=1`` for train/embed when config asks for CUDA, or for ``auto`` where a GPU driver is visible."""
    device = config["train"]["device"]
    return device == "cuda" or (device == "auto" and shutil.which("nvidia-smi") is not None)


# resources of train and embed: gpu=1 where they use one; nothing otherwise (one resource less per job to plan)
GPU = {"gpu": 1} if use_gpu() else {}
# The sweep and the effective-rank diagnostics run the model too, but are small: no GPU asked for (the
# CPU, or a GPU where one is visible to the job anyway).
TORCH_SIDE_DEVICE = "cpu" if config["train"]["device"] == "cpu" else "auto"
# Resources of every job that reads no plate (tables, figures, the synthetic platemap)
SMALL = dict(mem_mb=1000, runtime=10)


# ---------------------------------------------------------------------------------------- settings


def settings(**values):
    """A step's settings as one JSON string for the CLI's --params (read into the step's settings dataclass,
    which rejects unknown and missing keys). A rule param, so changing one reruns what depends on it; a
    constant, not a function, where it does not depend on the plate (thousands of jobs plan faster;
    benchmarks/dag.md).

    The package version rides along, so upgrading cytoagg shows results as outdated (--list-changes params).
    Snakemake fills ``{name}`` in constant params with wildcards, so every brace inside a JSON string is
    written as the JSON escape \\u007b, which the CLI reads back as "{". (JSON's own braces open an object,
    always followed by a quote or a closing brace; no other brace is.)
    """
    text = json.dumps({"cytoagg_version": cytoagg.__version__, **values}, sort_keys=True)
    return re.sub(r'\{(?!["}])', r"\\u007b", text)


ANNOTATION = dict(
    plate_col=MD["plate"],
    well_col=MD["well"],
    perturbation_col=MD["perturbation"],
    negcon_col=MD["negcon_column"] or MD["perturbation"],
    negcon_value=MD["negcon_value"],
)
# How compounds are split into training and validation ones (train, the tables, the PR curves); the toy
# experiments train on every class of their training data.
COMPOUND_SPLIT = dict(validation=config["compounds"]["validation"], seed=config["compounds"]["seed"])
TOY_SPLIT = dict(validation=[], seed=0)
SPLITS = dict(
    plate_split={**{p: "train" for p in TRAIN_PLATES}, **{p: "validation" for p in VALIDATION_PLATES}},
    compounds=COMPOUND_SPLIT,
)
# What a model's input means (stored in its checkpoint, checked when embedding); memory_mb is not part of it.
NORMALIZATION = {k: v for k, v in config["normalize"].items() if k != "memory_mb"}
# What training depends on, of the train: section (threads, a given checkpoint and the embedding do not).
TRAIN_SETTINGS = {k: v for k, v in config["train"].items() if k not in ("checkpoint", "threads", "embedding")}
PIPELINE_SETTINGS = settings(annotation=ANNOTATION, pipelines=PIPELINES, sphering=EVAL["sphering"])
EMBED_SETTINGS = settings(
    annotation=ANNOTATION, embedding=config["train"]["embedding"], device=config["train"]["device"],
    normalization=NORMALIZATION,
)


def train_settings(split, train=None):
    """The train step's settings; ``train``: another train: section (a search trial's), else the config's."""
    values = TRAIN_SETTINGS if train is None else {k: v for k, v in train.items() if k in TRAIN_SETTINGS}
    return settings(annotation=ANNOTATION, split=split, normalization=NORMALIZATION, **values)


# The hyper-parameter search's trials (config search.grid; workflow/rules/search.smk): name -> its config
SEARCH = {} if EXPERIMENT else search_configs(config)
SEARCH_OUTPUTS = [f"{R}/tables/search.csv", f"{R}/tables/search.md"] if SEARCH else []


def ingest_settings(platemap, plate=None):
    return settings(
        annotation=ANNOTATION,
        format="sqlite" if SYNTHETIC else config["dataset"]["format"],
        platemap=(platemap or [None])[0],
        compartments=config["dataset"]["compartments"],
        hub=config["dataset"]["hub"],
        links=config["dataset"]["links"],
        features=config["dataset"]["features"],
        blocklist=config["dataset"]["blocklist"],
        max_cells_without_image=config["dataset"]["max_cells_without_image"],
        require_negcon=plate not in config["plates"]["without_negcon"],
    )


def plate_ingest_settings(wildcards):
    """ingest's settings where they differ between plates (each its own platemap, or plates without controls)."""
    return ingest_settings(PLATEMAP(wildcards) if callable(PLATEMAP) else PLATEMAP, wildcards.plate)


# ---------------------------------------------------------------------------------------- inputs


def raw_plate(wildcards):
    """A user's plate file, where dataset.path has braces besides {plate} (see RAW_PLATE)."""
    return plate_path(config["dataset"]["path"], wildcards.plate)


def plate_platemap(wildcards):
    """A user's plate's own platemap (barcode_platemap), or none (see PLATEMAP)."""
    return [PLATEMAPS[wildcards.plate]] if PLATEMAPS.get(wildcards.plate) else []


# Inputs that are the same pattern for every plate are given as patterns, not functions: Snakemake
# calls a function once per job, which adds up over thousands of plates (benchmarks/dag.md).
if SYNTHETIC:
    RAW_PLATE = f"{R}/synthetic/plates/{{plate}}.sqlite"
elif set(re.findall(r"\{([^{}]*)\}", config["dataset"]["path"])) == {"plate"}:
    RAW_PLATE = config["dataset"]["path"]
else:  # other braces in the path: str.format, as check_config does
    RAW_PLATE = raw_plate
if SYNTHETIC:
    PLATEMAP = [f"{R}/synthetic/platemap/synthetic_platemap.txt"]
elif len(set(PLATEMAPS.values())) <= 1:  # the same platemap file for every plate, or none
    PLATEMAP = [m for m in set(PLATEMAPS.values()) if m]
else:  # barcode_platemap: each plate its own
    PLATEMAP = plate_platemap


# The plates each plate's wells are ranked against: its own, or every plate of its split.
RANK_WITHIN_PLATE = EVAL["reference"] == "plate"
RANKED_AGAINST = {p: [p] for p in PLATES}
if not RANK_WITHIN_PLATE:
    RANKED_AGAINST = {p: list(s) for s in (TRAIN_PLATES, VALIDATION_PLATES) for p in s}


def profile_file(method, pipeline, plate="{plate}"):
    """A plate's well profiles of one method through raw or harmony (the per-plate pipelines: pipeline_folder)."""
    if pipeline == "raw":
        return f"{R}/profiles/{method}/{plate}.parquet"
    return f"{R}/pipelines/{pipeline}/{method}/{plate}.parquet"


def pipeline_folder(plate="{plate}"):
    """A plate's folder of every method through every per-plate pipeline (cytoagg.profiles.pipelines.pipeline_file)."""
    return f"{R}/pipelines/by_plate/{plate}"


def ranked_profiles(method, pipeline):
    """evaluate's input for one profile: a pattern where each plate is ranked against itself alone."""
    if RANK_WITHIN_PLATE:
        return profile_file(method, pipeline)
    return lambda w: [profile_file(method, pipeline, p) for p in RANKED_AGAINST.get(w.plate, [w.plate])]


def ranked_pipeline_folders():
    """evaluate's per-plate pipeline folders: the plate's, or every plate's of its split."""
    if not PLATE_PIPELINES:
        return []
    if RANK_WITHIN_PLATE:
        return [pipeline_folder()]
    return lambda w: [pipeline_folder(p) for p in RANKED_AGAINST.get(w.plate, [w.plate])]


def model_path():
    return MODEL_CHECKPOINT if MODEL_CHECKPOINT else f"{R}/model/model.pt"


# ---------------------------------------------------------------------------------------- resources


def input_size_mb(input):
    """Size of a job's input in MiB (a folder, e.g. of per-site CSVs, counts with its files); 0 until it exists."""
    total = 0
    for f in input:
        if os.path.isfile(f):
            total += os.path.getsize(f)
        elif os.path.isdir(f):
            total += sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(f) for n in names)
    return total / 2**20


def input_mb(input, factor=3, floor=1000):
    return max(floor, int(factor * input_size_mb(input)))


def mem_from_input(factor=3, floor=1000):
    """Resource function: mem_mb = factor x input size (at least floor), times the attempt (see --retries)."""
    return lambda wildcards, input, attempt: input_mb(input, factor, floor) * attempt


def runtime_from_input(floor=10, per_gb=0.0):
    """Resource function: runtime in minutes = floor + per_gb x input GiB, times the attempt (see --retries).

    Resources are evaluated again when a job is ready to run, so the size is that of its real input.
    """
    return lambda wildcards, input, attempt: int(floor + per_gb * input_size_mb(input) / 1024) * attempt


# ---------------------------------------------------------------------------------------- targets


# What the evaluation adds to the default target (per-compound table, PR curves, effective ranks, the sweep)
EVALUATION_OUTPUTS = [
    f"{R}/tables/ap_per_compound.csv",
    f"{R}/plots/pr_curves.png",
    f"{R}/plots/effective_rank.png",
]
if SWEEP_SIZES:
    EVALUATION_OUTPUTS += [
        f"{R}/tables/sampling_sweep.csv", f"{R}/tables/sampling_sweep.md", f"{R}/plots/sampling_sweep.png"
    ]


# The report's description (the Snakefile's report: directive), an output of the workflow: an absolute path,
# since Snakemake resolves the directive against the Snakefile's folder.
FRONT_PAGE = os.path.abspath(f"{R}/report/front_page.rst")


def all_outputs():
    return [
        FRONT_PAGE,
        f"{R}/tables/verdict.md",
        f"{R}/tables/map_per_plate.csv",
        f"{R}/tables/map_per_plate.md",
        f"{R}/plots/map_per_plate.png",
        f"{R}/plots/cells_per_well.png",
        *([] if MODEL_CHECKPOINT else [f"{R}/plots/training_curve.png"]),
        *EVALUATION_OUTPUTS,
        *SEARCH_OUTPUTS,
    ]


def toy_runs():
    if EXPERIMENT is None:
        return []
    if EXPERIMENT["variant"] == "sphering":
        return [f"eps{e:g}" for e in EXPERIMENT["epsilons"]]
    return [EXPERIMENT["variant"]]


def toy_settings(wildcards):
    spec = {k: v for k, v in EXPERIMENT.items() if k != "epsilons"}
    spec["epsilon"] = float(wildcards.plate[3:]) if wildcards.plate.startswith("eps") else 0.0
    return settings(**spec)


def experiment_outputs():
    return [f"{TOY}/results.md", f"{TOY}/results.csv"] + [f"{TOY}/{r}/classes.png" for r in toy_runs()]
