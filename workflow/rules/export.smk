# Every profile of the run (each method, the model's and its controls' and the baselines', through each profile
# pipeline) also as one AnnData file with all plates, for scanpy / scverse users: obs = the Metadata_* columns,
# var = the feature names, X = the profiles (cytoagg.profiles.export). The Parquet profiles stay as they are.
# The file is named like the profile's key in the tables and rules: {method}__{pipeline}.h5ad (profile_key).


rule export_anndata:
    input:
        # a per-plate pipeline's files are in each plate's folder (the step's output): the folders stand for them
        lambda w: [
            pipeline_folder(p) if w.pipeline in PLATE_PIPELINES else profile_file(w.method, w.pipeline, p) for p in PLATES
        ],
    output:
        f"{R}/anndata/{profile_key('{method}', '{pipeline}')}.h5ad",
    wildcard_constraints:
        method="|".join(METHODS),
        pipeline="|".join(PIPELINES),
    params:
        settings=settings(**ANNOTATION),
    log:
        f"{R}/logs/export_anndata/{profile_key('{method}', '{pipeline}')}.log",
    benchmark:
        f"{R}/benchmarks/export_anndata/{profile_key('{method}', '{pipeline}')}.tsv"
    threads: 1
    resources:
        mem_mb=1000,  # the metadata of every plate, the features of one plate at a time
        runtime=runtime_from_input(floor=10, per_gb=5),
    conda:
        f"{ENVS}/tables.yaml"
    # The file list goes through a pipe (printf is a shell builtin), not on a command line.
    shell:
        "printf '%s\\n' {input:q} | python -m cytoagg export-anndata --profile-list - --method {wildcards.method:q} "
        "--pipeline {wildcards.pipeline:q} --out {output:q} --params {params.settings:q} 2> {log:q}"
