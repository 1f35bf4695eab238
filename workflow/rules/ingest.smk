# Raw single-cell table (CellProfiler SQLite, per-site CSV folders, Parquet/CSV) + platemap
# -> one Parquet per plate: Metadata_* strings, float32 features, rows grouped by well.


rule ingest:
    input:
        raw=RAW_PLATE,
        platemap=PLATEMAP,
        features=[FEATURES_FILE] if FEATURES_FILE else [],
    output:
        f"{R}/ingested/{{plate}}.parquet",
    params:
        # a constant where every plate has the same settings, else a function of the wildcards alone
        # (Snakemake leaves params that take `input` out of its rerun trigger)
        settings=(
            ingest_settings(PLATEMAP)
            if isinstance(PLATEMAP, list) and not config["plates"]["without_negcon"]
            else plate_ingest_settings
        ),
    log:
        f"{R}/logs/ingest/{{plate}}.log",
    benchmark:
        f"{R}/benchmarks/ingest/{{plate}}.tsv"
    threads: 2  # SQLite: reader processes; Snakemake lowers it to --cores where fewer
    resources:
        mem_mb=1500,  # streams the source in chunks: bounded whatever the plate's size
        runtime=runtime_from_input(floor=15, per_gb=10),
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        "python -m cytoagg ingest --source {input.raw:q} --out {output:q} --plate {wildcards.plate:q} "
        "--threads {threads} --params {params.settings:q} 2> {log:q}"


# dataset.features as a list in the config: written to a file for ingest (settings on a command line stay short).
rule requested_features:
    output:
        f"{R}/requested_features.txt",
    params:
        features=FEATURES if isinstance(FEATURES, list) else [],  # a rerun trigger: a changed list rewrites it
    log:
        f"{R}/logs/requested_features.log",
    benchmark:
        f"{R}/benchmarks/requested_features.tsv"
    threads: 1
    resources:
        **SMALL,
    run:
        cytoagg.io.files.write_names(params.features, output[0], log[0], source="config key dataset.features")
