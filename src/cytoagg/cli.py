"""``cytoagg <step>``: the small CLI the Snakemake rules call, one subcommand per step.

Files are flags; a step's settings come as one JSON object (``--params``), the config section
the rule passes through, so each step runs the same with or without Snakemake.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .io.files import InputError

log = logging.getLogger("cytoagg")


def _params(args) -> dict:
    """The step's settings; ``cytoagg_version`` (a rerun trigger the rules add) is not a setting."""
    try:
        params = json.loads(args.params) if args.params else {}
    except json.JSONDecodeError as e:
        raise InputError(f"--params is not valid JSON: {e}") from e
    params.pop("cytoagg_version", None)
    return params


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
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def cmd_synthetic_plate(args, p):
    from .synthetic.screen import SyntheticSpec, write_cellprofiler_sqlite

    log.info("%s", write_cellprofiler_sqlite(SyntheticSpec.from_config(p), args.plate, args.out))


def cmd_synthetic_platemap(args, p):
    from .synthetic.screen import SyntheticSpec, write_platemap

    write_platemap(SyntheticSpec.from_config(p), args.out)


def cmd_ingest(args, p):
    from .ingest import ingest_plate

    summary = ingest_plate(
        args.source,
        args.out,
        plate=args.plate,
        fmt=p.get("format", "auto"),
        barcode_platemap=p.get("barcode_platemap"),
        platemap_dir=p.get("platemap_dir"),
        platemap=p.get("platemap"),
        plate_col=p.get("plate_col", "Metadata_Plate"),
        well_col=p.get("well_col", "Metadata_Well"),
        compartments=tuple(p.get("compartments", ("Cells", "Cytoplasm", "Nuclei"))),
        features=p.get("features"),
        blocklist=p.get("blocklist"),
        workers=args.threads,
    )
    log.info("ingested %s: %s", args.plate, {k: v for k, v in summary.items() if k != "cells_per_well"})


def cmd_normalize(args, p):
    from .preprocess.normalize import normalize_plate

    keys = ("method", "samples", "epsilon", "spherize_method", "spherize_center", "well_center", "memory_mb")
    summary = normalize_plate(
        args.src, args.out, well_col=p.get("well_col", "Metadata_Well"), threads=args.threads, **{k: p[k] for k in keys if k in p}
    )
    log.info("normalized: %s", summary)


def cmd_select_features(args, p):
    from .preprocess.feature_select import fit_feature_selection

    keys = ("operations", "min_variance", "freq_cut", "unique_cut", "corr_threshold", "na_cutoff", "blocklist", "max_cells", "seed")
    kept = fit_feature_selection(args.plates, args.out, **{k: p[k] for k in keys if k in p})
    log.info("kept %d features", len(kept))


def _annotation(p):
    from .model.train import Annotation

    return Annotation(
        well_col=p["well_col"],
        perturbation_col=p["perturbation_col"],
        negcon_col=p.get("negcon_col"),
        negcon_value=p.get("negcon_value"),
        validation_compounds=p["validation_compounds"],
        split_seed=p.get("split_seed", 0),
    )


def cmd_pack_cells(args, p):
    from .model.cellstore import pack_cell_store

    log.info("packed %s", pack_cell_store(
        args.normalized, _read_list(args.features), args.out_cells, args.out_wells, plate=args.plate,
        well_col=p["well_col"], perturbation_col=p["perturbation_col"],
    ))


def cmd_train(args, p):
    from .model.train import TrainSettings, train_model

    if not len(args.plate_names) == len(args.cells) == len(args.wells):
        raise InputError("--plate-names, --cells and --wells must have the same length")
    result = train_model(
        {p: (c, w) for p, c, w in zip(args.plate_names, args.cells, args.wells)},
        _read_list(args.features),
        args.out_model,
        args.out_log,
        settings=TrainSettings.from_config(p["train"]),
        annotation=_annotation(p),
        normalization=p.get("normalization"),
        threads=args.threads,
    )
    log.info("trained: %s", result)


def cmd_embed(args, p):
    from .profiles.embed import embed_plate

    embed_plate(
        args.normalized, args.checkpoint, args.out, plate=args.plate, well_col=p["well_col"],
        perturbation_col=p["perturbation_col"], embedding=p.get("embedding", "head"),
        device=p.get("device", "auto"), threads=args.threads, normalization=p.get("normalization"),
    )


def cmd_aggregate(args, p):
    from .profiles.aggregate import aggregate_plate

    if len(args.method) != len(args.out):
        raise InputError("aggregate: give one --out per --method")
    aggregate_plate(
        args.normalized, _read_list(args.features), dict(zip(args.method, args.out)), plate=args.plate,
        well_col=p["well_col"], perturbation_col=p["perturbation_col"],
    )


def cmd_evaluate(args, p):
    """One or several profile sets: ``--profiles`` holds, for each ``--out`` in order, the same number of
    files (e.g. the model's plates, then the mean's); ``--method`` names them in the log."""
    from .evaluate.retrieval import evaluate_plate

    per_out, rest = divmod(len(args.profiles), len(args.out))
    if rest or not per_out:
        raise InputError(f"evaluate: {len(args.profiles)} --profiles files do not split evenly over {len(args.out)} --out files")
    methods = args.method or [None] * len(args.out)
    if len(methods) != len(args.out):
        raise InputError(f"evaluate: {len(methods)} --method names for {len(args.out)} --out files")
    for k, (method, out) in enumerate(zip(methods, args.out)):
        if method:
            log.info("evaluating %s", method)
        evaluate_plate(
            args.profiles[k * per_out : (k + 1) * per_out], out, perturbation_col=p["perturbation_col"],
            well_col=p["well_col"], plate_col=p.get("plate_col", "Metadata_Plate"), negcon_col=p.get("negcon_col"),
            negcon_value=p.get("negcon_value"), negcon_as_negatives=p.get("negcon_as_negatives", False),
            reference=p.get("reference", "plate"), query_plates=args.plate, moa_col=p.get("moa_column"),
            baseline_corrected=p.get("baseline_corrected", False),
        )


def cmd_evaluate_sampling(args, p):
    from .evaluate.sampling_sweep import sweep_plate

    sweep_plate(
        args.normalized, args.checkpoint, args.out, plate=args.plate, sizes=p["sizes"], seeds=p.get("seeds", 3),
        mean_features=_read_list(args.features), well_col=p["well_col"], perturbation_col=p["perturbation_col"],
        negcon_col=p.get("negcon_col"), negcon_value=p.get("negcon_value"),
        negcon_as_negatives=p.get("negcon_as_negatives", False), embedding=p.get("embedding", "head"),
        device=p.get("device", "auto"), threads=args.threads,
    )


def cmd_summarize_sampling(args, p):
    import pandas as pd

    from .evaluate.sampling_sweep import summarize_sweep
    from .evaluate.summarize import to_markdown
    from .io.files import write_table, write_text

    ap = pd.concat([pd.read_parquet(f) for f in args.ap], ignore_index=True)
    long, compact = summarize_sweep(ap, p["plate_split"], p["validation_compounds"], p.get("split_seed", 0))
    write_table(long, args.out_csv)
    write_text(
        "# mAP vs cells sampled per well\n\n"
        "Each well profiled from a random sample of its cells (without replacement; a well with fewer cells keeps "
        "all of them), mean over the plates of a split, then mean and sd over seeds; `all`: every cell.\n\n"
        + to_markdown(compact),
        args.out_md,
    )


def cmd_effective_rank(args, p):
    from .evaluate.diagnostics import effective_rank_tables

    if len(args.plate_names) != len(args.normalized):
        raise InputError("--plate-names and --normalized must have the same length")
    effective_rank_tables(
        dict(zip(args.plate_names, args.normalized)), args.checkpoint, args.out_summary, args.out_spectra,
        mean_features=_read_list(args.features), well_col=p["well_col"], perturbation_col=p["perturbation_col"],
        device=p.get("device", "auto"), threads=args.threads,
    )


def cmd_summarize(args, p):
    import pandas as pd

    from .evaluate.summarize import add_splits, ap_per_compound, map_per_plate, markdown_report, pooled_tests
    from .io.files import write_table, write_text

    if len(args.methods) != len(args.ap):
        raise InputError("--methods and --ap must have the same length")
    ap = pd.concat([pd.read_parquet(f).assign(method=m) for m, f in zip(args.methods, args.ap)], ignore_index=True)
    split_args = (p["plate_split"], p["validation_compounds"], p.get("split_seed", 0))
    threshold = p.get("threshold", 0.05)
    per_compound = ap_per_compound(
        add_splits(ap, *split_args), null_size=p.get("null_size", 10000), threshold=threshold, seed=p.get("seed", 0)
    )
    long = map_per_plate(ap, *split_args, per_compound=per_compound)
    write_table(long, args.out_csv)
    if args.out_compounds:
        write_table(per_compound, args.out_compounds)
    write_text(markdown_report(long, pooled_tests(ap, *split_args), threshold), args.out_md)


def cmd_plot(args, p):
    import pandas as pd

    from .evaluate import plots

    def cells_per_well(files):
        frames = [pd.read_parquet(f, columns=["Metadata_Plate", "Metadata_n_cells"]) for f in files]
        df = pd.concat(frames).rename(columns={"Metadata_Plate": "plate", "Metadata_n_cells": "n_cells"})
        return df.astype({"n_cells": int})

    if args.kind == "map":
        plots.plot_map_per_plate(pd.read_csv(args.inputs[0]), args.out)
    elif args.kind == "training":
        plots.plot_training_curve(pd.read_csv(args.inputs[0]), args.out)
    elif args.kind == "cells_per_well":
        plots.plot_cells_per_well(cells_per_well(args.inputs), args.out)
    elif args.kind == "pr_curves":
        from .evaluate.retrieval import pr_curves

        if not args.methods or len(args.methods) != len(args.inputs):
            raise InputError("--methods must name the method of each --inputs file")
        curves = pr_curves(
            dict(zip(args.methods, args.inputs)), perturbation_col=p["perturbation_col"], group_col=p.get("group_column"),
            well_col=p["well_col"], negcon_col=p.get("negcon_col"), negcon_value=p.get("negcon_value"),
            negcon_as_negatives=p.get("negcon_as_negatives", False),
            validation_compounds=p.get("validation_compounds", 0.25), split_seed=p.get("split_seed", 0),
        )
        plots.plot_pr_curves(curves, args.out, plate=p.get("plate", ""))
    elif args.kind == "sampling":
        from .evaluate.sampling_sweep import compact_sweep

        compact = compact_sweep(pd.read_csv(args.inputs[0], dtype={"cells_sampled": str}))
        plots.plot_map_vs_cells(compact, cells_per_well(args.inputs[1:]), args.out)
    elif args.kind == "effective_rank":
        plots.plot_effective_rank(pd.read_csv(args.inputs[0]), pd.read_csv(args.inputs[1]), args.out)


def cmd_toy_data(args, p):
    from .synthetic.toy import ToySpec, write_toy_data

    write_toy_data(ToySpec(**p), args.out_train, args.out_validation, args.out_features, args.out_figure)


def cmd_toy_summary(args, p):
    import pandas as pd

    from .evaluate.summarize import to_markdown
    from .io.files import write_table, write_text
    from .synthetic.toy import summarize_runs

    if not len(args.runs) == len(args.methods) == len(args.ap):
        raise InputError("--runs, --methods and --ap must have the same length")
    ap = pd.concat(
        [pd.read_parquet(f).assign(run=r, method=m) for r, m, f in zip(args.runs, args.methods, args.ap)], ignore_index=True
    )
    per_sample, summary = summarize_runs(ap)
    write_table(per_sample, args.out_csv)
    write_text(
        "# Toy classes: equal means, different covariances\n\n"
        "Held-out classes only; each sample queries the other held-out samples (cosine similarity).\n\n"
        + to_markdown(summary) + "\n## Per sample\n\n" + to_markdown(per_sample),
        args.out_md,
    )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cytoagg", description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    def add(name, func, *flags):
        sp = sub.add_parser(name)
        sp.add_argument("--params", default="{}", help="the step's settings as a JSON object")
        sp.add_argument("--threads", type=int, default=1)
        for flag, kw in flags:
            sp.add_argument(flag, **kw)
        sp.set_defaults(func=func)

    req = {"required": True}
    many = {"required": True, "nargs": "+"}
    add("synthetic-plate", cmd_synthetic_plate, ("--plate", req), ("--out", req))
    add("synthetic-platemap", cmd_synthetic_platemap, ("--out", req))
    add("ingest", cmd_ingest, ("--source", req), ("--out", req), ("--plate", req))
    add("normalize", cmd_normalize, ("--src", req), ("--out", req))
    add("select-features", cmd_select_features, ("--plates", many), ("--out", req))
    add("pack-cells", cmd_pack_cells, ("--normalized", req), ("--features", req), ("--out-cells", req), ("--out-wells", req), ("--plate", req))
    add("train", cmd_train, ("--plate-names", many), ("--cells", many), ("--wells", many), ("--features", req), ("--out-model", req), ("--out-log", req))
    add("embed", cmd_embed, ("--normalized", req), ("--checkpoint", req), ("--out", req), ("--plate", req))
    add("aggregate", cmd_aggregate, ("--normalized", req), ("--features", req), ("--out", many), ("--method", many), ("--plate", req))
    add("evaluate", cmd_evaluate, ("--profiles", many), ("--out", many), ("--method", {"nargs": "+", "default": None}), ("--plate", {"nargs": "+", "default": None}))
    add("evaluate-sampling", cmd_evaluate_sampling, ("--normalized", req), ("--checkpoint", req), ("--features", req), ("--out", req), ("--plate", req))
    add("effective-rank", cmd_effective_rank, ("--plate-names", many), ("--normalized", many), ("--checkpoint", req), ("--features", req), ("--out-summary", req), ("--out-spectra", req))
    add("summarize", cmd_summarize, ("--methods", many), ("--ap", many), ("--out-csv", req), ("--out-md", req), ("--out-compounds", {"default": None}))
    add("summarize-sampling", cmd_summarize_sampling, ("--ap", many), ("--out-csv", req), ("--out-md", req))
    plot_kinds = ["map", "training", "cells_per_well", "pr_curves", "sampling", "effective_rank"]
    add("plot", cmd_plot, ("--kind", {"required": True, "choices": plot_kinds}), ("--inputs", many), ("--out", req), ("--methods", {"nargs": "+", "default": None}))
    add("toy-data", cmd_toy_data, ("--out-train", req), ("--out-validation", req), ("--out-features", req), ("--out-figure", req))
    add("toy-summary", cmd_toy_summary, ("--runs", many), ("--methods", many), ("--ap", many), ("--out-md", req), ("--out-csv", req))
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
        args.func(args, _params(args))
    except InputError as e:
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
