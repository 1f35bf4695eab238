# Tables and figures; `snakemake --report report.html` collects the outputs marked with report().

AP_FILES = [f"{R}/ap/{m}/{p}.parquet" for m in METHODS for p in PLATES]
AP_METHODS = [m for m in METHODS for p in PLATES]


rule summarize:
    input:
        AP_FILES,
    output:
        csv=report(f"{R}/tables/map_per_plate.csv", caption="../report/map_table.rst", category="Tables"),
        md=f"{R}/tables/map_per_plate.md",
    params:
        methods=AP_METHODS,
        settings=lambda w: settings(
            plate_split={**{p: "train" for p in TRAIN_PLATES}, **{p: "validation" for p in VALIDATION_PLATES}},
            validation_compounds=config["compounds"]["validation"],
            split_seed=config["compounds"]["seed"],
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
        "--out-md {output.md:q} --params {params.settings:q} 2> {log:q}"


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
