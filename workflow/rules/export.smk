# Every profile of the run (each method, the model's and its controls' and the baselines', through each profile
# pipeline) also as one AnnData file with all plates, for scanpy / scverse users: obs = the Metadata_* columns,
# var = the feature names, X = the profiles (cytoagg.profiles.export). The Parquet profiles stay as they are.
# Each file is named like the profile's key in the tables and rules: {method}__{pipeline}.h5ad (profile_key).
# One job writes them all, in Snakemake's own process (a run directive): a Python start per file cost more than
# the export itself, and the file lists never go on a command line.

# key -> one source per plate: its profile file, or for a per-plate pipeline the plate's folder (which holds it)
ANNDATA_SOURCES = {
    key: [pipeline_folder(p) if pipeline in PLATE_PIPELINES else profile_file(method, pipeline, p) for p in PLATES]
    for key, (method, pipeline) in PROFILES.items()
}


rule export_anndata:
    input:
        list(dict.fromkeys(source for sources in ANNDATA_SOURCES.values() for source in sources)),
    output:
        **{key: f"{R}/anndata/{key}.h5ad" for key in PROFILES},
    params:
        settings=settings(annotation=ANNOTATION),
    log:
        f"{R}/logs/export_anndata.log",
    benchmark:
        f"{R}/benchmarks/export_anndata.tsv"
    threads: 1
    resources:
        mem_mb=1000,  # the metadata of every plate, the features of one plate at a time
        runtime=runtime_from_input(floor=10, per_gb=5),
    run:
        cytoagg.profiles.export.export_step(ANNDATA_SOURCES, dict(output.items()), params.settings, log[0])
