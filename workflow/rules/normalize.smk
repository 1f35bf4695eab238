# Per-plate normalization of the cells: statistics fit on that plate only (normalize.samples: all of its
# cells, or those a query selects), streamed within normalize.memory_mb.


rule normalize:
    input:
        f"{R}/ingested/{{plate}}.parquet",
    output:
        f"{R}/normalized/{{plate}}.parquet",
    params:
        settings=settings(annotation=ANNOTATION, **config["normalize"]),
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
