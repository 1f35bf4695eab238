# Tables and figures; `snakemake --report report.html` collects the outputs marked with report().

AP_FILES = [f"{R}/ap/{m}/{p}.parquet" for m in METHODS for p in PLATES]
AP_METHODS = [m for m in METHODS for p in PLATES]
# Precision-recall curves and effective ranks look at held-out plates (the training plates if there are none).
DIAGNOSTIC_PLATES = VALIDATION_PLATES or TRAIN_PLATES
SPLIT_SETTINGS = dict(
    plate_split={**{p: "train" for p in TRAIN_PLATES}, **{p: "validation" for p in VALIDATION_PLATES}},
    **COMPOUND_SPLIT,
)


# What the evaluation adds to `rule all` (common.smk): per-compound table, PR curves, effective ranks, the sweep.
EVALUATION_OUTPUTS = [
    f"{R}/tables/ap_per_compound.csv",
    f"{R}/plots/pr_curves.png",
    f"{R}/plots/effective_rank.png",
]
if SWEEP_SIZES:
    EVALUATION_OUTPUTS += [f"{R}/tables/map_vs_cells.csv", f"{R}/tables/map_vs_cells.md", f"{R}/plots/map_vs_cells.png"]


rule summarize:
    input:
        AP_FILES,
    output:
        csv=report(f"{R}/tables/map_per_plate.csv", caption="../report/map_table.rst", category="Tables"),
        md=f"{R}/tables/map_per_plate.md",
        compounds=report(
            f"{R}/tables/ap_per_compound.csv", caption="../report/ap_per_compound.rst", category="Tables"
        ),
    params:
        methods=AP_METHODS,
        settings=settings(
            null_size=EVAL["null_size"],
            threshold=EVAL["significance_threshold"],
            seed=EVAL["seed"],
            **SPLIT_SETTINGS,
        ),
    log:
        f"{R}/logs/summarize.log",
    benchmark:
        f"{R}/benchmarks/summarize.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        "python -m cytoagg summarize --methods {params.methods:q} --ap {input:q} --out-csv {output.csv:q} "
        "--out-md {output.md:q} --out-compounds {output.compounds:q} --params {params.settings:q} 2> {log:q}"


rule plot_map:
    input:
        f"{R}/tables/map_per_plate.csv",
    output:
        report(f"{R}/plots/map_per_plate.png", caption="../report/map_per_plate.rst", category="Evaluation"),
    log:
        f"{R}/logs/plot_map.log",
    benchmark:
        f"{R}/benchmarks/plot_map.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        f"{ENVS}/plots.yaml"
    shell:
        "python -m cytoagg plot --kind map --inputs {input:q} --out {output:q} 2> {log:q}"


rule plot_pr_curves:
    input:
        expand(f"{R}/profiles/{{method}}/{DIAGNOSTIC_PLATES[0]}.parquet", method=METHODS),
    output:
        report(f"{R}/plots/pr_curves.png", caption="../report/pr_curves.rst", category="Evaluation"),
    params:
        methods=METHODS,
        settings=settings(
            plate=DIAGNOSTIC_PLATES[0],
            group_column=EVAL["pr_curve_column"],
            negcon_as_negatives=EVAL["negcon_as_negatives"],
            **COMPOUND_SPLIT,
            **ANNOTATION,
        ),
    log:
        f"{R}/logs/plot_pr_curves.log",
    benchmark:
        f"{R}/benchmarks/plot_pr_curves.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        f"{ENVS}/plots.yaml"
    shell:
        "python -m cytoagg plot --kind pr_curves --inputs {input:q} --methods {params.methods:q} --out {output:q} "
        "--params {params.settings:q} 2> {log:q}"


rule plot_training:
    input:
        f"{R}/model/training_log.csv",
    output:
        report(f"{R}/plots/training_curve.png", caption="../report/training_curve.rst", category="Training"),
    log:
        f"{R}/logs/plot_training.log",
    benchmark:
        f"{R}/benchmarks/plot_training.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        f"{ENVS}/plots.yaml"
    shell:
        "python -m cytoagg plot --kind training --inputs {input:q} --out {output:q} 2> {log:q}"


rule plot_cells_per_well:
    input:
        expand(f"{R}/profiles/mean/{{plate}}.parquet", plate=PLATES),
    output:
        report(f"{R}/plots/cells_per_well.png", caption="../report/cells_per_well.rst", category="Data"),
    log:
        f"{R}/logs/plot_cells_per_well.log",
    benchmark:
        f"{R}/benchmarks/plot_cells_per_well.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        f"{ENVS}/plots.yaml"
    shell:
        "python -m cytoagg plot --kind cells_per_well --inputs {input:q} --out {output:q} 2> {log:q}"


rule effective_rank:
    input:
        normalized=expand(f"{R}/normalized/{{plate}}.parquet", plate=DIAGNOSTIC_PLATES),
        model=model_path(),
        features=f"{R}/features.txt",
    output:
        summary=report(
            f"{R}/tables/effective_rank.csv", caption="../report/effective_rank_table.rst", category="Model"
        ),
        spectra=f"{R}/tables/effective_rank_spectra.csv",
    params:
        plates=DIAGNOSTIC_PLATES,
        settings=settings(device=TORCH_SIDE_DEVICE, **ANNOTATION),
    log:
        f"{R}/logs/effective_rank.log",
    benchmark:
        f"{R}/benchmarks/effective_rank.tsv"
    threads: 1
    resources:
        mem_mb=mem_from_input(factor=3, floor=1500),
        runtime=runtime_from_input(floor=10, per_gb=20),
    conda:
        f"{ENVS}/torch.yaml"
    shell:
        "python -m cytoagg effective-rank --plate-names {params.plates:q} --normalized {input.normalized:q} "
        "--checkpoint {input.model:q} --features {input.features:q} --out-summary {output.summary:q} "
        "--out-spectra {output.spectra:q} --threads {threads} --params {params.settings:q} 2> {log:q}"


rule plot_effective_rank:
    input:
        f"{R}/tables/effective_rank.csv",
        f"{R}/tables/effective_rank_spectra.csv",
    output:
        report(f"{R}/plots/effective_rank.png", caption="../report/effective_rank.rst", category="Model"),
    log:
        f"{R}/logs/plot_effective_rank.log",
    benchmark:
        f"{R}/benchmarks/plot_effective_rank.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        f"{ENVS}/plots.yaml"
    shell:
        "python -m cytoagg plot --kind effective_rank --inputs {input:q} --out {output:q} 2> {log:q}"


rule summarize_sampling:
    input:
        expand(f"{R}/sampling/{{plate}}.parquet", plate=PLATES),
    output:
        csv=report(f"{R}/tables/map_vs_cells.csv", caption="../report/map_vs_cells_table.rst", category="Sampling"),
        md=f"{R}/tables/map_vs_cells.md",
    params:
        settings=settings(**SPLIT_SETTINGS),
    log:
        f"{R}/logs/summarize_sampling.log",
    benchmark:
        f"{R}/benchmarks/summarize_sampling.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        "python -m cytoagg summarize-sampling --ap {input:q} --out-csv {output.csv:q} --out-md {output.md:q} "
        "--params {params.settings:q} 2> {log:q}"


rule plot_sampling:
    input:
        table=f"{R}/tables/map_vs_cells.csv",
        cells=expand(f"{R}/profiles/mean/{{plate}}.parquet", plate=PLATES),
    output:
        report(f"{R}/plots/map_vs_cells.png", caption="../report/map_vs_cells.rst", category="Sampling"),
    log:
        f"{R}/logs/plot_sampling.log",
    benchmark:
        f"{R}/benchmarks/plot_sampling.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        f"{ENVS}/plots.yaml"
    shell:
        "python -m cytoagg plot --kind sampling --inputs {input.table:q} {input.cells:q} --out {output:q} 2> {log:q}"
