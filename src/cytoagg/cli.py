"""``cytoagg <step>``: the small CLI the Snakemake rules call, one subcommand per step and per figure.

Files are flags; a file list that belongs to a name is given as ``--flag NAME PATH [PATH ...]``, repeated
per name (``--profiles model a.parquet --profiles mean b.parquet``), never matched by position. A step's
settings come as one JSON object (``--params``), read into the step's frozen settings dataclass, which
rejects unknown and missing keys (:mod:`cytoagg.settings`). Each subcommand is one call into the package,
so a step runs the same with or without Snakemake.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .io.files import InputError, read_names
from .progress import console_progress
from .settings import read_params

logger = logging.getLogger("cytoagg")


def _set_threads(threads: int) -> None:
    """BLAS/torch threads follow the rule's threads: no oversubscription under ``--cores N``."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pass


def _read_list(path) -> list[str]:
    """The non-empty lines of a file; ``-`` reads them from stdin (a rule pipes a long file list there)."""
    text = sys.stdin.read() if str(path) == "-" else Path(path).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def named_file_args(flag: str, names, source: str) -> str:
    """The shell template of a named file list, ``--flag NAME {source.NAME:q}`` for each name: what a rule writes
    for Snakemake to fill with its named inputs or outputs (e.g. ``--profiles model {input.model:q}``)."""
    return " ".join(f"{flag} {name} {{{source}.{name}:q}}" for name in names)


def _named(groups, flag: str, paths: int | None = None) -> dict[str, list[str]]:
    """``--flag NAME PATH...`` occurrences -> {name: [paths]}; ``paths``: how many each must have (None: >= 1)."""
    named: dict[str, list[str]] = {}
    for name, *files in groups or []:
        if not files or (paths is not None and len(files) != paths):
            want = f"{paths} path(s)" if paths is not None else "at least one path"
            raise InputError(f"{flag} {name}: expected a name and {want}, got {files}")
        if name in named:
            raise InputError(f"{flag} {name}: given twice")
        named[name] = files
    return named


# ---------------------------------------------------------------------------------------------- steps
# Each takes the parsed arguments and the step's settings (None where the step has none) and makes one call.


def cmd_synthetic_plate(args, spec):
    from .synthetic.screen import write_cellprofiler_sqlite

    logger.info("%s", write_cellprofiler_sqlite(spec, args.plate, args.out, args.out_debris))


def cmd_synthetic_platemap(args, spec):
    from .synthetic.screen import write_platemap

    write_platemap(spec, args.out)


def cmd_ingest(args, settings):
    from .ingest import ingest_plate

    summary = ingest_plate(args.source, args.out, args.plate, settings, workers=args.threads)
    logger.info("ingested %s: %s", args.plate, {k: v for k, v in summary.items() if k != "cells_per_well"})


def cmd_normalize(args, settings):
    from .preprocess.normalize import normalize_plate

    logger.info("normalized: %s", normalize_plate(args.src, args.out, settings, threads=args.threads))


def cmd_select_features(args, settings):
    from .preprocess.feature_select import fit_feature_selection

    candidates = read_names(args.candidates[0]) if args.candidates else None
    logger.info("kept %d features", len(fit_feature_selection(args.plates, args.out, settings, candidates=candidates)))


def cmd_common_features(args, _):
    from .preprocess.common_features import common_features

    logger.info("%d common features", len(common_features(args.plates, args.out, args.out_dropped)))


def cmd_covariance_features(args, settings):
    from .preprocess.feature_select import fit_covariance_features

    logger.info("mean_cov: %d features", len(fit_covariance_features(args.plates, _read_list(args.features), args.out,
                                                                       settings)))


def cmd_pack_cells(args, annotation):
    from .model.cellstore import pack_cell_store

    logger.info("packed %s", pack_cell_store(args.normalized, _read_list(args.features), args.out, args.plate, annotation))


def cmd_train(args, settings):
    from .model.train import train_model

    result = train_model(args.cell_stores, _read_list(args.features), args.out_model, args.out_log, settings,
                         threads=args.threads)
    logger.info("trained: %s", result)


def cmd_train_on_means(args, settings):
    from .model.train import train_on_means

    logger.info("trained: %s", train_on_means(args.profiles, args.out_model, args.out_log, settings, threads=args.threads))


def cmd_embed(args, settings):
    from .profiles.embed import embed_plate

    outputs = {name: files[0] for name, files in _named(args.out, "--out", paths=1).items()}
    embed_plate(args.normalized, args.checkpoint, outputs, args.plate, settings, threads=args.threads,
                mlp_on_mean=args.mlp_on_mean[0] if args.mlp_on_mean else None)


def cmd_aggregate(args, settings):
    from .profiles.aggregate import aggregate_plate

    outputs = {method: files[0] for method, files in _named(args.out, "--out", paths=1).items()}
    covariance = _read_list(args.covariance_features[0]) if args.covariance_features else None
    aggregate_plate(args.normalized, _read_list(args.features), outputs, args.plate, settings.annotation, covariance,
                    settings.filtered_mean)


def cmd_fit_sphering(args, settings):
    from .profiles.pipelines import fit_sphering_step

    fit_sphering_step(_named(args.profiles, "--profiles"), args.out, settings)


def cmd_profile_pipelines(args, settings):
    from .profiles.pipelines import plate_pipelines

    raw = {method: files[0] for method, files in _named(args.profiles, "--profiles", paths=1).items()}
    plate_pipelines(raw, args.out, args.sphering[0] if args.sphering else None, settings)


def cmd_harmony(args, settings):
    from .profiles.pipelines import harmony_step

    raw, outputs = _named(args.profiles, "--profiles"), _named(args.out, "--out")
    if set(raw) != set(outputs) or any(len(raw[m]) != len(outputs[m]) for m in raw):
        raise InputError("harmony: --profiles and --out must name the same methods, with one output per input")
    harmony_step(raw, outputs, settings)


def cmd_export_anndata(args, annotation):
    from .profiles.export import export_anndata

    from .profiles.pipelines import pipeline_file

    # a per-plate pipelines' folder stands for its file of this method and pipeline
    files = [pipeline_file(p, args.method, args.pipeline) if os.path.isdir(p) else p for p in _read_list(args.profile_list)]
    export_anndata(files, args.out, annotation, args.method, args.pipeline)


def cmd_evaluate(args, settings):
    """Each profile's files (its plate, or every plate of the split) -> one per-well AP table for all of them."""
    from .evaluate.retrieval import evaluate_profiles

    evaluate_profiles(_named(args.profiles, "--profiles"), args.out, settings, query_plates=args.plate,
                      pipeline_folders=args.pipelines)


def cmd_sampling_sweep(args, settings):
    from .evaluate.sampling_sweep import sampling_sweep_plate

    sampling_sweep_plate(args.normalized, args.checkpoint, args.out, args.plate, settings,
                         mean_features=_read_list(args.features), threads=args.threads)


def cmd_summarize_sampling_sweep(args, splits):
    from .evaluate.sampling_sweep import summarize_sampling_sweep

    summarize_sampling_sweep(args.sweep, args.out_csv, args.out_md, splits)


def cmd_effective_rank(args, settings):
    from .evaluate.diagnostics import effective_rank_tables

    effective_rank_tables(args.normalized, args.checkpoint, args.out_summary, args.out_spectra, settings,
                          mean_features=_read_list(args.features), threads=args.threads)


def cmd_saliency(args, settings):
    from .evaluate.saliency import saliency_plate

    saliency_plate(args.normalized, args.checkpoint, args.out_cells, args.out_correlation, args.plate, settings,
                   threads=args.threads)


def cmd_summarize_saliency(args, splits):
    from .evaluate.saliency import summarize_saliency

    summarize_saliency(args.correlation, args.out, splits)


def cmd_saliency_debris(args, settings):
    from .evaluate.saliency import debris_auroc

    debris_auroc(args.saliency, args.debris, settings.splits, settings.annotation, args.out)


def cmd_summarize(args, settings):
    from .evaluate.summarize import summarize_plates

    summarize_plates(args.ap, args.out_csv, args.out_md, args.out_compounds, args.out_verdict_csv,
                     args.out_verdict_md, settings)


def cmd_plot_map(args, _):
    from .evaluate.plots import map_per_plate_figure

    map_per_plate_figure(args.table, args.out)


def cmd_plot_training(args, _):
    from .evaluate.plots import training_figure

    training_figure(args.training_log, args.out)


def cmd_plot_cells_per_well(args, annotation):
    from .evaluate.plots import cells_per_well_figure

    cells_per_well_figure(args.profiles, args.out, annotation)


def cmd_plot_pr_curves(args, settings):
    from .evaluate.plots import pr_curve_figure

    profiles = {method: files[0] for method, files in _named(args.profiles, "--profiles", paths=1).items()}
    pr_curve_figure(profiles, args.out, settings)


def cmd_plot_sampling_sweep(args, annotation):
    from .evaluate.plots import sampling_sweep_figure

    sampling_sweep_figure(args.table, args.profiles, args.out, annotation)


def cmd_plot_effective_rank(args, _):
    from .evaluate.plots import effective_rank_figure

    effective_rank_figure(args.summary, args.spectra, args.out)


def cmd_front_page(args, _):
    from .evaluate.front_page import write_front_page

    write_front_page(args.verdict, args.table, args.figure, args.out, args.config_note)


def cmd_plot_saliency_correlation(args, _):
    from .evaluate.plots import saliency_correlation_figure

    saliency_correlation_figure(args.table, args.out)


def cmd_plot_saliency_cells(args, settings):
    from .evaluate.plots import saliency_cells_figure

    saliency_cells_figure(args.saliency, args.normalized, args.table, args.out, settings, args.debris or ())


def cmd_init(args, _):
    from .init_config import init_config

    text = init_config(args.pattern, args.out, fmt=args.format, compartments=args.compartments, platemap=args.platemap,
                       barcode_platemap=args.barcode_platemap, platemap_dir=args.platemap_dir, results=args.results,
                       force=args.force)
    questions = text.count("# QUESTION:")
    print(f"wrote {args.out}" + (f": {questions} question(s) in it to check" if questions else "")
          + f". Then: snakemake --cores 2 --configfile {args.out}")


def cmd_toy_data(args, spec):
    from .synthetic.toy import write_toy_data

    write_toy_data(spec, args.plate, args.out_train, args.out_validation, args.out_features, args.out_figure)


def cmd_search_table(args, s):
    from .evaluate.search import search_table

    search_table({name: paths[0] for name, paths in _named(args.logs, "--logs", 1).items()}, args.out_csv, args.out_md, s)


def cmd_toy_summary(args, _):
    from .synthetic.toy import summarize_toy

    summarize_toy(args.ap, args.out_md, args.out_csv)


# ---------------------------------------------------------------------------------------------- parser


# Subcommand -> "module:Class" of the settings dataclass its --params is read into. Only the subcommand's own
# module is imported: a step that needs no torch (ingest, normalize, plots) does not pay its ~3 s import.
SETTINGS_CLASSES = {
    "synthetic-plate": "synthetic.screen:SyntheticSpec", "synthetic-platemap": "synthetic.screen:SyntheticSpec",
    "ingest": "ingest.plate:IngestSettings", "normalize": "preprocess.normalize:NormalizeSettings",
    "select-features": "preprocess.feature_select:FeatureSelectSettings", "pack-cells": "io.columns:Annotation",
    "train": "model.train:TrainSettings", "train-on-means": "model.train:TrainSettings",
    "embed": "profiles.embed:EmbedSettings", "covariance-features": "preprocess.feature_select:CovarianceSettings",
    "fit-sphering": "profiles.pipelines:PipelineSettings", "profile-pipelines": "profiles.pipelines:PipelineSettings",
    "harmony": "profiles.pipelines:PipelineSettings", "aggregate": "profiles.aggregate:AggregateSettings",
    "export-anndata": "io.columns:Annotation", "evaluate": "evaluate.retrieval:EvaluateSettings",
    "sampling-sweep": "evaluate.sampling_sweep:SamplingSweepSettings",
    "summarize-sampling-sweep": "evaluate.summarize:Splits",
    "effective-rank": "evaluate.diagnostics:EffectiveRankSettings", "summarize": "evaluate.summarize:SummarizeSettings",
    "plot-cells-per-well": "io.columns:Annotation", "plot-pr-curves": "evaluate.retrieval:PrCurveSettings",
    "plot-sampling-sweep": "io.columns:Annotation", "toy-data": "synthetic.toy:ToySpec",
    "saliency": "evaluate.saliency:SaliencySettings", "summarize-saliency": "evaluate.summarize:Splits",
    "saliency-debris": "evaluate.saliency:DebrisSettings",
    "plot-saliency-cells": "evaluate.saliency:SaliencyFigureSettings", "search-table": "evaluate.search:SearchSettings",
}


def settings_class(command: str):
    """The settings dataclass of a subcommand, or None where it takes no --params."""
    import importlib

    where = SETTINGS_CLASSES.get(command)
    if where is None:
        return None
    module, name = where.split(":")
    return getattr(importlib.import_module(f"cytoagg.{module}"), name)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cytoagg", description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    def add(name, func, *flags):
        sp = sub.add_parser(name)
        sp.add_argument("--params", default="", help="the step's settings as a JSON object")
        sp.add_argument("--threads", type=int, default=1)
        for flag, kw in flags:
            sp.add_argument(flag, **kw)
        sp.set_defaults(func=func)

    one = {"required": True}
    many = {"required": True, "nargs": "+"}
    named = {"action": "append", "nargs": "+", "metavar": ("NAME", "PATH")}  # --flag NAME PATH [PATH ...]
    add("synthetic-plate", cmd_synthetic_plate, ("--plate", one), ("--out", one),
        ("--out-debris", {"default": None, "help": "the side table of which objects are debris"}))
    add("synthetic-platemap", cmd_synthetic_platemap, ("--out", one))
    add("ingest", cmd_ingest, ("--source", one), ("--out", one), ("--plate", one))
    add("normalize", cmd_normalize, ("--src", one), ("--out", one))
    add("select-features", cmd_select_features, ("--plates", many), ("--out", one),
        ("--candidates", {"nargs": "*", "default": [], "help": "a file of the features to choose from (features: common)"}))
    add("common-features", cmd_common_features, ("--plates", many), ("--out", one), ("--out-dropped", one))
    add("covariance-features", cmd_covariance_features, ("--plates", many), ("--features", one), ("--out", one))
    add("pack-cells", cmd_pack_cells, ("--normalized", one), ("--features", one), ("--out", one), ("--plate", one))
    add("train", cmd_train, ("--cell-stores", many), ("--features", one), ("--out-model", one), ("--out-log", one))
    add("train-on-means", cmd_train_on_means, ("--profiles", many), ("--out-model", one), ("--out-log", one))
    add("embed", cmd_embed, ("--normalized", one), ("--checkpoint", one), ("--plate", one),
        ("--out", {**named, "required": True}),
        ("--mlp-on-mean", {"nargs": "*", "default": [], "help": "the mlp_on_mean control's checkpoint, for its output"}))
    add("aggregate", cmd_aggregate, ("--normalized", one), ("--features", one), ("--plate", one),
        ("--out", {**named, "required": True}),
        ("--covariance-features", {"nargs": "*", "default": [], "help": "mean_cov's features (a file); none without mean_cov"}))
    add("fit-sphering", cmd_fit_sphering, ("--profiles", {**named, "required": True}), ("--out", one))
    add("profile-pipelines", cmd_profile_pipelines, ("--profiles", {**named, "required": True}), ("--out", one),
        ("--sphering", {"nargs": "*", "default": [], "help": "the sphering fit, for negcon_mad_sphere"}))
    add("harmony", cmd_harmony, ("--profiles", {**named, "required": True}), ("--out", {**named, "required": True}))
    add("export-anndata", cmd_export_anndata,
        ("--profile-list", {"required": True, "help": "a file naming one profile Parquet (or per-plate pipelines' folder) per line (-: stdin)"}),
        ("--method", {"required": True, "help": "whose profiles (recorded in uns['cytoagg'])"}),
        ("--pipeline", {"required": True, "help": "through which profile pipeline (recorded in uns['cytoagg'])"}),
        ("--out", one))
    add("evaluate", cmd_evaluate, ("--profiles", {**named, "required": True}), ("--out", one),
        ("--pipelines", {"nargs": "*", "default": [], "help": "the per-plate pipelines' folders of the ranked plates"}),
        ("--plate", {"nargs": "+", "default": None, "help": "the plates whose wells are queries (default: all)"}))
    add("sampling-sweep", cmd_sampling_sweep, ("--normalized", one), ("--checkpoint", one), ("--features", one),
        ("--out", one), ("--plate", one))
    add("summarize-sampling-sweep", cmd_summarize_sampling_sweep, ("--sweep", many), ("--out-csv", one), ("--out-md", one))
    add("effective-rank", cmd_effective_rank, ("--normalized", many), ("--checkpoint", one),
        ("--features", one), ("--out-summary", one), ("--out-spectra", one))
    add("summarize", cmd_summarize, ("--ap", many), ("--out-csv", one), ("--out-md", one),
        ("--out-compounds", one), ("--out-verdict-csv", one), ("--out-verdict-md", one))
    add("saliency", cmd_saliency, ("--normalized", one), ("--checkpoint", one), ("--out-cells", one),
        ("--out-correlation", one), ("--plate", one))
    add("summarize-saliency", cmd_summarize_saliency, ("--correlation", many), ("--out", one))
    add("saliency-debris", cmd_saliency_debris, ("--saliency", many), ("--debris", many), ("--out", one))
    add("plot-map", cmd_plot_map, ("--table", one), ("--out", one))
    add("plot-training", cmd_plot_training, ("--training-log", one), ("--out", one))
    add("plot-cells-per-well", cmd_plot_cells_per_well, ("--profiles", many), ("--out", one))
    add("plot-pr-curves", cmd_plot_pr_curves, ("--profiles", {**named, "required": True}), ("--out", one))
    add("plot-sampling-sweep", cmd_plot_sampling_sweep, ("--table", one), ("--profiles", many), ("--out", one))
    add("plot-effective-rank", cmd_plot_effective_rank, ("--summary", one), ("--spectra", one), ("--out", one))
    add("front-page", cmd_front_page, ("--verdict", one), ("--table", one), ("--figure", one), ("--out", one),
        ("--config-note", {"default": "", "help": "a line saying which config files the run used"}))
    add("plot-saliency-correlation", cmd_plot_saliency_correlation, ("--table", one), ("--out", one))
    add("plot-saliency-cells", cmd_plot_saliency_cells, ("--saliency", many), ("--normalized", many), ("--table", one),
        ("--debris", {"nargs": "*", "default": None, "help": "the synthetic screen's debris tables, if any"}), ("--out", one))
    add("init", cmd_init,
        ("pattern", {"help": "where each plate's data is, with {plate} for its name, e.g. 'data/{plate}.sqlite'"}),
        ("--out", {"required": True, "help": "the config file to write (not overwritten without --force)"}),
        ("--force", {"action": "store_true", "help": "overwrite --out"}),
        ("--format", {"default": "auto", "choices": ["auto", "sqlite", "csv", "parquet"]}),
        ("--compartments", {"nargs": "+", "default": ["Cells", "Cytoplasm", "Nuclei"]}),
        ("--platemap", {"default": None, "help": "one platemap (well_position + annotations) for every plate"}),
        ("--barcode-platemap", {"default": None, "help": "profiling-recipe barcode_platemap.csv (with --platemap-dir)"}),
        ("--platemap-dir", {"default": None, "help": "the folder of <Plate_Map_Name>.txt|csv files"}),
        ("--results", {"default": "results", "help": "results folder written into the config"}))
    add("toy-data", cmd_toy_data, ("--plate", one), ("--out-train", one), ("--out-validation", one), ("--out-features", one),
        ("--out-figure", one))
    add("search-table", cmd_search_table, ("--logs", {**named, "required": True}), ("--out-csv", one), ("--out-md", one))
    add("toy-summary", cmd_toy_summary, ("--ap", many), ("--out-md", one), ("--out-csv", one))
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    _set_threads(args.threads)
    try:
        cls = settings_class(args.command)
        params = read_params(args.params)
        if cls is None and params:
            raise InputError(f"{args.command} takes no --params (got {sorted(params)})")
        with console_progress(args):  # warnings and progress on the console too, under the workflow
            args.func(args, None if cls is None else cls.from_params(params, f"{args.command} --params"))
    except InputError as e:
        logger.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
