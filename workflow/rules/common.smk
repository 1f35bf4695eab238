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

from snakemake.common.configfile import load_configfile
from snakemake.logging import logger

import cytoagg
import cytoagg.config_sources
import cytoagg.io.files
import cytoagg.profiles.export
from cytoagg.cli import named_file_args
from cytoagg.config_sources import COMMAND_LINE, config_sources, describe_sources
from cytoagg.config_sources import DEFAULT as SCHEMA_DEFAULT
from cytoagg.evaluate.front_page import KEY_CATEGORY as KEY_RESULTS
from cytoagg.evaluate.summarize import config_design_notes
from cytoagg.progress import CONSOLE_FD_ENV
from cytoagg.config import (
    PLATE_NAME, check_config, check_first_plate_columns, check_plates_in_s3, on_s3, plate_path, resolve_platemaps,
    s3_keys,
)
from cytoagg.config import search_configs
from cytoagg.profiles.pipelines import profile_key

R = config["results"].rstrip("/")

# Which config files were read (the Snakefile reads the demo config.yaml only when no --configfile is given), and
# where each value came from: one line in the run's log, every value in CONFIG_USED (rule config_used).
DEMO_CONFIG = not workflow.overwrite_configfiles
CONFIG_FILES = [os.path.relpath(f) for f in workflow.configfiles]
CONFIG_SOURCES = config_sources(
    config, [*((f, load_configfile(f)) for f in CONFIG_FILES), (COMMAND_LINE, dict(workflow.config_settings.config))]
)
CONFIG_USED = f"{R}/config_used.yaml"
logger.info(describe_sources(CONFIG_FILES, DEMO_CONFIG, CONFIG_SOURCES, CONFIG_USED))
# (doubled braces: Snakemake formats the prefix like the command). File descriptor 3 keeps the console (the job's
# stderr before the job's log takes it over): steps write their warnings and progress there (cytoagg.progress).
shell.prefix(
    f"set -euo pipefail; export PYTHONPATH={shlex.quote(SRC)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
    f"exec 3>&2; export {CONSOLE_FD_ENV}=3; "
)
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
SALIENCY = config["saliency"]
# The synthetic screen's debris, a ground truth for the saliency (their side tables: synthetic/debris/)
DEBRIS = SYNTHETIC and config["synthetic"]["debris_fraction"] > 0

# plates: listed for a dataset of one's own, disjoint, present on disk; settings that the schema cannot check
check_config(config, defaulted={key for key, source in CONFIG_SOURCES.items() if source == SCHEMA_DEFAULT})


# Data in S3 (dataset.path, and the platemaps, may be s3:// locations): read through Snakemake's storage
# plugin for S3 as the rules' inputs, so each plate is fetched into .snakemake/storage/ right before its job
# runs, and the copy is deleted when no job needs it any more (--keep-storage-local-copies keeps it). Under
# Slurm, snakemake fetches it onto the shared filesystem before it submits the job; without storage-local-copies
# in --shared-fs-usage, each job fetches its own (to --remote-job-local-storage-prefix).
# Endpoint and credentials are the plugin's settings (--storage-s3-endpoint-url, ..., or the environment
# variables SNAKEMAKE_STORAGE_S3_*; otherwise boto3's usual AWS_* variables and ~/.aws files). The one
# setting the command line cannot give, unsigned requests for public buckets, is dataset.s3_anonymous.
# Requests are kept few for thousands of plates: see cytoagg.io.storage.
if s3_keys(config["dataset"]):
    from cytoagg.io.storage import ask_existence_and_size_once, list_objects, remember_objects

    ask_existence_and_size_once()  # not two HEAD requests per waiting plate in every scheduling round
if s3_keys(config["dataset"]) and config["dataset"]["s3_anonymous"]:
    from botocore import UNSIGNED

    storage:
        provider="s3",
        signature_version=UNSIGNED,


def from_storage(path):
    """An input path as the rules take it: an s3:// location through the storage plugin, a local one as it is."""
    return storage.s3(path) if on_s3(path) else path


def s3_exists(url):
    return storage.s3(url).flags["storage_object"].exists()


def s3_local_copy(url):
    """Fetch a small S3 file that the Snakefile itself reads (barcode_platemap.csv) now, into the plugin's folder."""
    obj = storage.s3(url).flags["storage_object"]
    workflow.async_run(obj.managed_retrieve())
    return str(obj.local_path())


def s3_list(prefix):
    return list_objects(storage.s3(prefix).flags["storage_object"], prefix)


# Every plate in S3 exists, found by one listing (jobs that Slurm runs, each a snakemake of its own, skip it)
if on_s3(config["dataset"]["path"]) and workflow.is_main_process:
    remember_objects(check_plates_in_s3(config, s3_list, s3_exists))

PLATEMAPS = {} if SYNTHETIC else resolve_platemaps(config["dataset"], PLATES, s3_exists, s3_local_copy)
# the metadata settings against the first plate's columns (not for a plate in S3: that would download it)
if not EXPERIMENT and not on_s3(config["dataset"]["path"]):
    check_first_plate_columns(config, PLATEMAPS)


# Plate names: letters, digits, underscores and hyphens, single dots between them; so no slashes, spaces,
# double dots or shell metacharacters. The config schema checks the names in the config; this constraint
# keeps other names out of targets (see cytoagg.config.PLATE_NAME). The toy experiments' runs are plates too.
wildcard_constraints:
    plate=PLATE_NAME,


# Train, embed and saliency hold a GPU where the config uses CUDA (gpu=1). "local": the cap of --resources gpu=N
# (profiles/default) counts only jobs run on this machine; jobs submitted to Slurm each get their own
# card, so the main snakemake does not hold them back.
resource_scopes:
    gpu="local",


def use_gpu():
    """``gpu=1`` for train/embed/saliency when config asks for CUDA, or for ``auto`` where a GPU driver is visible."""
    device = config["train"]["device"]
    return device == "cuda" or (device == "auto" and shutil.which("nvidia-smi") is not None)


# resources of train, embed and saliency: gpu=1 where they use one; nothing otherwise (one resource less per job to plan)
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
# The features to ingest: a file named in the config, or one the workflow writes from a list in the config
# (by requested_features, since a long list never goes on a command line). None means every feature. With
# dataset.features: common, feature selection chooses among the features every plate has (rule common_features).
FEATURES = config["dataset"]["features"]
if config["dataset"]["features_file"]:
    FEATURES_FILE = config["dataset"]["features_file"]
elif isinstance(FEATURES, list):
    FEATURES_FILE = f"{R}/requested_features.txt"
else:
    FEATURES_FILE = None
COMMON_FEATURES = f"{R}/common_features.txt" if FEATURES == "common" else None
# What a model's input means (stored in its checkpoint, checked when embedding); memory_mb is not part of it.
NORMALIZATION = {k: v for k, v in config["normalize"].items() if k != "memory_mb"}
# What training depends on, of the train: section (threads, a given checkpoint and the embedding do not).
TRAIN_SETTINGS = {k: v for k, v in config["train"].items() if k not in ("checkpoint", "threads", "embedding")}
PIPELINE_SETTINGS = settings(annotation=ANNOTATION, pipelines=PIPELINES, sphering=EVAL["sphering"])
# The arithmetic of every step that runs the model on cells (train takes it with TRAIN_SETTINGS).
PRECISION = config["train"]["precision"]
EMBED_SETTINGS = settings(
    annotation=ANNOTATION, embedding=config["train"]["embedding"], device=config["train"]["device"],
    precision=PRECISION, normalization=NORMALIZATION,
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
        features_file=FEATURES_FILE,
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
    return from_storage(plate_path(config["dataset"]["path"], wildcards.plate))


def plate_platemap(wildcards):
    """A user's plate's own platemap (barcode_platemap), or none (see PLATEMAP)."""
    return [from_storage(PLATEMAPS[wildcards.plate])] if PLATEMAPS.get(wildcards.plate) else []


# Inputs that are the same pattern for every plate are given as patterns, not functions: Snakemake
# calls a function once per job, which adds up over thousands of plates (benchmarks/dag.md).
if SYNTHETIC:
    RAW_PLATE = f"{R}/synthetic/plates/{{plate}}.sqlite"
elif set(re.findall(r"\{([^{}]*)\}", config["dataset"]["path"])) == {"plate"}:
    RAW_PLATE = from_storage(config["dataset"]["path"])
else:  # other braces in the path: str.format, as check_config does
    RAW_PLATE = raw_plate
if SYNTHETIC:
    PLATEMAP = [f"{R}/synthetic/platemap/synthetic_platemap.txt"]
elif len(set(PLATEMAPS.values())) <= 1:  # the same platemap file for every plate, or none
    PLATEMAP = [from_storage(m) for m in set(PLATEMAPS.values()) if m]
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
    """Size of a job's input in MiB (a folder, e.g. of per-site CSVs, counts with its files); 0 until it exists.

    An input in S3 counts with the size of its object while no local copy exists yet (the plugin's, asked once).
    """
    total = 0
    for f in input:
        if os.path.isfile(f):
            total += os.path.getsize(f)
        elif os.path.isdir(f):
            total += sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(f) for n in names)
        elif getattr(f, "is_storage", False) and f.storage_object.exists():
            total += f.storage_object.size()
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
SALIENCY_OUTPUTS = [
    f"{R}/tables/saliency_feature_correlation.csv",
    f"{R}/plots/saliency_feature_correlation.png",
    f"{R}/plots/saliency_cells.png",
    *([f"{R}/tables/saliency_debris_auroc.csv"] if DEBRIS else []),
]


# Every profile (method x pipeline) of all plates as one AnnData file each (rule export_anndata)
ANNDATA_OUTPUTS = [f"{R}/anndata/{key}.h5ad" for key in PROFILES] if config["export"]["anndata"] else []


def all_outputs():
    return [
        FRONT_PAGE,
        CONFIG_USED,
        f"{R}/tables/verdict.md",
        f"{R}/tables/map_per_plate.csv",
        f"{R}/tables/map_per_plate.md",
        f"{R}/plots/map_per_plate.png",
        f"{R}/plots/cells_per_well.png",
        *([] if MODEL_CHECKPOINT else [f"{R}/plots/training_curve.png"]),
        *EVALUATION_OUTPUTS,
        *(SALIENCY_OUTPUTS if SALIENCY["enabled"] else []),
        *ANNDATA_OUTPUTS,
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
    return [CONFIG_USED, f"{TOY}/results.md", f"{TOY}/results.csv"] + [f"{TOY}/{r}/classes.png" for r in toy_runs()]
