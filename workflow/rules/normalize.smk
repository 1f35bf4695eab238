# Per-plate normalization (statistics fit on that plate only), then feature selection fit on the
# training plates only and applied to every plate downstream.


rule normalize:
    input:
        f"{R}/ingested/{{plate}}.parquet",
    output:
        f"{R}/normalized/{{plate}}.parquet",
    params:
        settings=settings(well_col=MD["well"], **config["normalize"]),
    log:
        f"{R}/logs/normalize/{{plate}}.log",
    benchmark:
        f"{R}/benchmarks/normalize/{{plate}}.tsv"
    threads: 2  # per-column statistics and the Parquet writer; Snakemake lowers it to --cores where fewer
    resources:
        mem_mb=config["normalize"]["memory_mb"] + 1000,  # streams in tiles within normalize.memory_mb
        runtime=runtime_from_input(floor=15, per_gb=10),
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        "python -m cytoagg normalize --src {input:q} --out {output:q} --threads {threads} --params {params.settings:q} 2> {log:q}"


rule select_features:
    input:
        expand(f"{R}/normalized/{{plate}}.parquet", plate=TRAIN_PLATES),
    output:
        f"{R}/features.txt",
    params:
        settings=settings(
            blocklist=config["dataset"]["blocklist"] or None, **config["feature_select"]
        ),
    log:
        f"{R}/logs/select_features.log",
    benchmark:
        f"{R}/benchmarks/select_features.tsv"
    threads: 1
    resources:
        mem_mb=lambda w: 2000 + config["feature_select"]["max_cells"] // 100,
        runtime=runtime_from_input(floor=15, per_gb=5),
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        "python -m cytoagg select-features --plates {input:q} --out {output:q} --params {params.settings:q} 2> {log:q}"
