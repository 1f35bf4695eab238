# Raw single-cell table (CellProfiler SQLite, per-site CSV folders, Parquet/CSV) + platemap
# -> one Parquet per plate: Metadata_* strings, float32 features, rows grouped by well.


rule ingest:
    input:
        raw=raw_plate,
        platemap=plate_platemap,
    output:
        f"{R}/ingested/{{plate}}.parquet",
    params:
        settings=lambda w, input: settings(
            format="sqlite" if SYNTHETIC else config["dataset"]["format"],
            platemap=input.platemap[0] if input.platemap else None,
            plate_col=MD["plate"],
            well_col=MD["well"],
            compartments=config["dataset"]["compartments"],
            features=config["dataset"]["features"],
            blocklist=config["dataset"]["blocklist"],
        ),
    log:
        f"{R}/logs/ingest/{{plate}}.log",
    benchmark:
        f"{R}/benchmarks/ingest/{{plate}}.tsv"
    threads: 1
    resources:
        mem_mb=1500,  # streams the source in chunks: bounded whatever the plate's size
        runtime=runtime_from_input(floor=15, per_gb=10),
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        "python -m cytoagg ingest --source {input.raw:q} --out {output:q} --plate {wildcards.plate:q} "
        "--params {params.settings:q} 2> {log:q}"
